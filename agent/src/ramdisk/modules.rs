//! Kernel module coldplug for the ramdisk, which has no udev and no modprobe: every `modalias`
//! under `ROOT/sys/devices` is matched against `modules.alias` (fnmatch-style globs), each
//! matching module is loaded after its dependencies (`modules.dep`, or the modules' own
//! `depends=` when depmod never ran) and its soft dependencies (`modules.softdep` `pre:` before,
//! `post:` after), with finit_module through [`System`]. Passes repeat while they load something
//! new, since loaded drivers expose new devices (virtio_pci → virtio devices). Explicit extras
//! (`ipmi_devintf`, `ipmi_si` by default, plus `molar.modules=`) are always attempted. A failure
//! is recorded with its errno and never stops the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::Serialize;

use super::sys::System;

/// Modules loaded even without a matching device: the IPMI character device has no modalias
/// (it is only a soft dependency of ipmi_msghandler), and ipmi_si probes through SMBIOS.
pub const DEFAULT_EXTRAS: [&str; 2] = ["ipmi_devintf", "ipmi_si"];
/// Loaded as well on a UEFI boot: `/dev/efi_capsule_loader` for `uefi_capsule` updates.
pub const UEFI_EXTRAS: [&str; 1] = ["capsule_loader"];

/// Parallel loads for the ramdisk's coldplug. Measured in a 2-vCPU QEMU TCG guest (32
/// modules, 4 boots each): one thread 1.8-2.7 s, two threads 2.3-5.6 s, because every module
/// load rewrites guest code and TCG then stops all vCPUs to flush translations. So one, which
/// loads in plan order; on hardware whose drivers probe for seconds (SAS HBAs) more threads
/// let unrelated drivers load meanwhile.
pub const COLDPLUG_THREADS: usize = 1;

/// How many coldplug passes at most; each pass must load something new to be followed by another.
const MAX_PASSES: usize = 8;

/// What coldplug did, for status and inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModuleReport {
    /// Modules loaded (or found already loaded), in load order.
    pub loaded: Vec<String>,
    /// `(module, reason)` for every module that could not be loaded.
    pub failed: Vec<(String, String)>,
    /// Device modaliases that matched no module after the last pass.
    pub unmatched_aliases: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading the kernel release: {0}")]
    KernelRelease(#[source] Errno),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ModulesError {
    pub fn code(&self) -> &'static str {
        match self {
            ModulesError::KernelRelease(_) => "kernel_release_failed",
            ModulesError::Read { .. } => "modules_index_unreadable",
        }
    }
}

/// `-` and `_` are the same in module names; the kernel and kmod use `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// fnmatch(3) without flags, as kmod matches aliases: `*`, `?`, `[...]` (ranges, `!`/`^`
/// negation, `]` first is literal) and `\` escapes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it covers up to).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match class_match(&p[pi..], t[ti]) {
                Some((true, len)) => Some(pi + len),
                Some((false, _)) => None,
                // An unterminated `[` is a literal.
                None => (t[ti] == b'[').then_some(pi + 1),
            },
            Some(b'\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(c) => (*c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class at the start of `p` (which begins with `[`): `(matched,
/// length of the class in bytes)`, or `None` when the class is not terminated.
fn class_match(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|hi| *hi != b']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// One alias line: the glob, its literal prefix (a cheap pre-filter), and the module.
#[derive(Debug, Clone)]
struct Alias {
    pattern: String,
    prefix_len: usize,
    module: String,
}

/// What the module directory says: files, dependencies, aliases, soft dependencies, built-ins.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// module name → (path relative to `dir`, direct dependencies by name)
    modules: HashMap<String, (String, Vec<String>)>,
    aliases: Vec<Alias>,
    /// module name → (pre, post), as names or aliases
    softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
    builtin: BTreeSet<String>,
}

fn module_name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

impl ModuleIndex {
    /// Reads `dir` (`ROOT/lib/modules/RELEASE`): `modules.dep`, `modules.alias`,
    /// `modules.softdep`, `modules.builtin`; without `modules.dep`, the modules' own modinfo.
    pub fn read(dir: &Path) -> Result<Self, ModulesError> {
        let read = |name: &str| -> Result<Option<String>, ModulesError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(ModulesError::Read { path, source }),
            }
        };
        let mut index = ModuleIndex {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        match read("modules.dep")? {
            Some(dep) => index.parse_dep(&dep),
            None => index.scan_modinfo(),
        }
        if let Some(alias) = read("modules.alias")? {
            index.parse_alias(&alias);
        }
        if let Some(softdep) = read("modules.softdep")? {
            index.parse_softdep(&softdep);
        }
        if let Some(builtin) = read("modules.builtin")? {
            index.builtin = builtin.lines().map(module_name_of).collect();
        }
        Ok(index)
    }

    fn parse_dep(&mut self, text: &str) {
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name_of).collect();
            self.modules
                .insert(module_name_of(path), (path.trim().to_string(), deps));
        }
    }

    fn parse_alias(&mut self, text: &str) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("alias") {
                continue;
            }
            let (Some(pattern), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            self.add_alias(pattern, module);
        }
    }

    fn add_alias(&mut self, pattern: &str, module: &str) {
        let prefix_len = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
        self.aliases.push(Alias {
            pattern: pattern.to_string(),
            prefix_len,
            module: normalize(module),
        });
    }

    fn parse_softdep(&mut self, text: &str) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let entry = self.softdeps.entry(normalize(module)).or_default();
            // Words before any `pre:`/`post:` are ignored, as kmod does.
            let mut mode = None;
            for word in words {
                match word {
                    "pre:" => mode = Some(true),
                    "post:" => mode = Some(false),
                    w => match mode {
                        Some(true) => entry.0.push(w.to_string()),
                        Some(false) => entry.1.push(w.to_string()),
                        None => {}
                    },
                }
            }
        }
    }

    /// Fallback without depmod: every `*.ko` under `dir`, with `depends=`, `alias=` and
    /// `softdep=` read from its `.modinfo` strings.
    fn scan_modinfo(&mut self) {
        let mut files = Vec::new();
        walk(&self.dir, 0, &mut |path| {
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".ko"))
            {
                files.push(path.to_path_buf());
            }
        });
        for file in files {
            let Ok(rel) = file.strip_prefix(&self.dir) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            let name = module_name_of(&rel);
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            let mut deps = Vec::new();
            for field in bytes.split(|b| *b == 0) {
                let Ok(field) = std::str::from_utf8(field) else {
                    continue;
                };
                if let Some(d) = field.strip_prefix("depends=") {
                    deps.extend(d.split(',').filter(|d| !d.is_empty()).map(normalize));
                } else if let Some(a) = field.strip_prefix("alias=") {
                    self.add_alias(a, &name);
                } else if let Some(s) = field.strip_prefix("softdep=") {
                    self.parse_softdep(&format!("softdep {name} {s}"));
                }
            }
            self.modules.insert(name, (rel, deps));
        }
    }

    /// The modules whose alias matches `modalias` (several may: modprobe loads them all).
    pub fn match_alias(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for alias in &self.aliases {
            if modalias
                .as_bytes()
                .starts_with(&alias.pattern.as_bytes()[..alias.prefix_len])
                && glob_match(&alias.pattern, modalias)
                && !out.contains(&alias.module)
            {
                out.push(alias.module.clone());
            }
        }
        out
    }

    /// A module name or an alias (`crct10dif`, `crypto-crc32c`) to module names.
    pub fn resolve(&self, name: &str) -> Vec<String> {
        let normalized = normalize(name);
        if self.modules.contains_key(&normalized) || self.builtin.contains(&normalized) {
            vec![normalized]
        } else {
            self.match_alias(name)
        }
    }
}

/// Calls `f` with every regular file under `dir`, not following symlinks (sysfs is full of
/// them, and of loops).
fn walk(dir: &Path, depth: usize, f: &mut dyn FnMut(&Path)) {
    if depth > 32 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&entry.path(), depth + 1, f);
        } else if kind.is_file() {
            f(&entry.path());
        }
    }
}

fn read_modalias(path: &Path, out: &mut BTreeSet<String>) {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if !s.is_empty() {
            out.insert(s.to_string());
        }
    }
}

/// Every distinct device `modalias` value, sorted. Instead of walking the whole
/// `ROOT/sys/devices` tree (0.7 s per pass under QEMU TCG), this reads the views that list
/// every device having one: bus devices (`sys/bus/*/devices/*`, whose bus uevent sets
/// MODALIAS), class devices (`sys/class/*/*`: input devices, DMI `id`), and the CPU subsystem
/// root (`sys/devices/system/cpu/modalias`, the CPU feature alias). All are links into
/// /sys/devices, one directory level each. Without `sys/bus` (a bare fixture) the whole
/// `sys/devices` tree is walked.
pub fn device_modaliases(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !root.join("sys/bus").is_dir() {
        walk(&root.join("sys/devices"), 0, &mut |path| {
            if path.file_name().is_some_and(|n| n == "modalias") {
                read_modalias(path, &mut out);
            }
        });
        return out;
    }
    for (view, sub) in [("sys/bus", "devices"), ("sys/class", "")] {
        let Ok(groups) = std::fs::read_dir(root.join(view)) else {
            continue;
        };
        for group in groups.flatten() {
            let Ok(devices) = std::fs::read_dir(group.path().join(sub)) else {
                continue;
            };
            for device in devices.flatten() {
                read_modalias(&device.path().join("modalias"), &mut out);
            }
        }
    }
    read_modalias(&root.join("sys/devices/system/cpu/modalias"), &mut out);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// In the batch being planned; its load has not run yet.
    Planned,
    Loaded,
    Builtin,
    Failed,
}

/// One finit_module to run, with what must have finished first.
#[derive(Debug, Clone)]
struct Step {
    module: String,
    file: PathBuf,
    /// Dependencies in the same batch: if one fails, this module is not tried.
    hard: Vec<String>,
    /// Soft dependencies in the same batch: waited for, their failure does not matter.
    soft: Vec<String>,
}

/// Loads modules through [`System`], each once, dependencies first. Work is planned
/// sequentially (a depth-first walk that fixes a dependency order and breaks cycles), then
/// run by `threads` workers, each load starting as soon as what it needs has finished: module
/// init waits on hardware (AHCI port probing took 0.5 s under QEMU TCG) while unrelated
/// drivers, the NIC's among them, can load meanwhile. With one thread the loads run exactly in
/// plan order.
pub struct Loader<'a> {
    sys: &'a dyn System,
    index: &'a ModuleIndex,
    threads: usize,
    /// Module name → parameters for finit_module (from the kernel command line).
    params: BTreeMap<String, String>,
    done: BTreeMap<String, Outcome>,
    report: ModuleReport,
}

impl<'a> Loader<'a> {
    pub fn new(sys: &'a dyn System, index: &'a ModuleIndex, threads: usize) -> Self {
        Self {
            sys,
            index,
            threads: threads.max(1),
            params: BTreeMap::new(),
            done: BTreeMap::new(),
            report: ModuleReport::default(),
        }
    }

    /// Parameters to load modules with, by module name (see [`super::cmdline::module_params`]).
    pub fn with_params(mut self, params: BTreeMap<String, String>) -> Self {
        self.params = params;
        self
    }

    fn fail(&mut self, module: &str, reason: String) {
        self.done.insert(module.to_string(), Outcome::Failed);
        self.report.failed.push((module.to_string(), reason));
    }

    /// Plans `name` (a module or an alias) with everything it needs.
    fn plan_name(&mut self, name: &str, batch: &mut Vec<Step>) {
        let modules = self.index.resolve(name);
        if modules.is_empty() {
            let key = normalize(name);
            if !self.done.contains_key(&key) {
                self.fail(&key, "no such module".to_string());
            }
        }
        for module in modules {
            self.plan_module(&module, 0, batch);
        }
    }

    /// Appends `module` and what it needs to `batch`, dependencies first. False when it is
    /// known not to load (unknown, or a dependency known to have failed).
    fn plan_module(&mut self, module: &str, depth: usize, batch: &mut Vec<Step>) -> bool {
        if let Some(outcome) = self.done.get(module) {
            return *outcome != Outcome::Failed;
        }
        if depth > 64 {
            return false;
        }
        if self.index.builtin.contains(module) && !self.index.modules.contains_key(module) {
            self.done.insert(module.to_string(), Outcome::Builtin);
            return true;
        }
        let Some((path, deps)) = self.index.modules.get(module) else {
            self.fail(module, "not in modules.dep".to_string());
            return false;
        };
        // Marked before recursing, so a dependency cycle ends here.
        self.done.insert(module.to_string(), Outcome::Planned);
        let in_batch = |batch: &[Step], m: &str| batch.iter().any(|s| s.module == m);
        let (pre, post) = self.index.softdeps.get(module).cloned().unwrap_or_default();
        let mut soft = Vec::new();
        for name in pre {
            for m in self.index.resolve(&name) {
                self.plan_module(&m, depth + 1, batch);
                if in_batch(batch, &m) {
                    soft.push(m);
                }
            }
        }
        let mut hard = Vec::new();
        // modules.dep lists the deepest dependency last; load from the end.
        for dep in deps.iter().rev() {
            if !self.plan_module(dep, depth + 1, batch) {
                self.fail(module, format!("dependency {dep} failed"));
                return false;
            }
            if in_batch(batch, dep) {
                hard.push(dep.clone());
            }
        }
        batch.push(Step {
            module: module.to_string(),
            file: self.index.dir.join(path),
            hard,
            soft,
        });
        for name in post {
            for m in self.index.resolve(&name) {
                self.plan_module(&m, depth + 1, batch);
                // A post soft dependency loads after this module, unless it came first anyway.
                let mine = batch.iter().position(|s| s.module == module);
                if let (Some(mine), Some(theirs)) = (mine, batch.iter().position(|s| s.module == m))
                    && theirs > mine
                {
                    batch[theirs].soft.push(module.to_string());
                }
            }
        }
        true
    }

    /// Runs a planned batch on the worker threads and records the outcomes.
    fn run(&mut self, batch: Vec<Step>) {
        if batch.is_empty() {
            return;
        }
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Waiting,
            Running,
            Finished(bool),
        }
        struct Shared {
            states: Vec<State>,
            results: Vec<(String, Result<(), String>)>,
        }
        let position: HashMap<&str, usize> = batch
            .iter()
            .enumerate()
            .map(|(i, s)| (s.module.as_str(), i))
            .collect();
        let shared = std::sync::Mutex::new(Shared {
            states: vec![State::Waiting; batch.len()],
            results: Vec::new(),
        });
        let changed = std::sync::Condvar::new();
        let finished = |states: &[State], m: &str| {
            position
                .get(m)
                .is_none_or(|i| matches!(states[*i], State::Finished(_)))
        };
        let failed_dep = |states: &[State], step: &Step| {
            step.hard
                .iter()
                .find(|d| {
                    position
                        .get(d.as_str())
                        .is_some_and(|i| states[*i] == State::Finished(false))
                })
                .cloned()
        };
        let worker = || {
            let Ok(mut guard) = shared.lock() else { return };
            loop {
                let next = (0..batch.len()).find(|i| {
                    guard.states[*i] == State::Waiting
                        && batch[*i]
                            .hard
                            .iter()
                            .chain(&batch[*i].soft)
                            .all(|d| finished(&guard.states, d))
                });
                let Some(i) = next else {
                    if guard.states.iter().all(|s| *s != State::Waiting) {
                        changed.notify_all();
                        return;
                    }
                    guard = match changed.wait(guard) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                    continue;
                };
                guard.states[i] = State::Running;
                let step = &batch[i];
                let result = match failed_dep(&guard.states, step) {
                    Some(dep) => Err(format!("dependency {dep} failed")),
                    None => {
                        drop(guard);
                        let params = self.params.get(&step.module).map_or("", String::as_str);
                        let r = match self.sys.load_module(&step.file, params) {
                            Ok(()) | Err(Errno::EEXIST) => Ok(()),
                            Err(e) => Err(format!("{}: {}", step.file.display(), e.desc())),
                        };
                        guard = match shared.lock() {
                            Ok(g) => g,
                            Err(_) => return,
                        };
                        r
                    }
                };
                match &result {
                    Ok(()) => tracing::debug!(module = %step.module, "module loaded"),
                    Err(e) => {
                        tracing::warn!(module = %step.module, error = %e, "module not loaded")
                    }
                }
                guard.states[i] = State::Finished(result.is_ok());
                guard.results.push((step.module.clone(), result));
                changed.notify_all();
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..self.threads.min(batch.len()) {
                scope.spawn(worker);
            }
            worker();
        });
        let results = match shared.into_inner() {
            Ok(s) => s.results,
            Err(poisoned) => poisoned.into_inner().results,
        };
        for (module, result) in results {
            match result {
                Ok(()) => {
                    self.done.insert(module.clone(), Outcome::Loaded);
                    self.report.loaded.push(module);
                }
                Err(reason) => self.fail(&module, reason),
            }
        }
        // A step a panicking worker left unfinished must not stay "planned" forever.
        for step in batch {
            if self.done.get(&step.module) == Some(&Outcome::Planned) {
                self.fail(&step.module, "loader stopped".to_string());
            }
        }
    }

    /// Loads `name` (a module or an alias) with everything it needs. True when all of it loaded
    /// (or was built in).
    pub fn load(&mut self, name: &str) -> bool {
        let mut batch = Vec::new();
        self.plan_name(name, &mut batch);
        self.run(batch);
        let modules = self.index.resolve(name);
        !modules.is_empty()
            && modules
                .iter()
                .all(|m| matches!(self.done.get(m), Some(Outcome::Loaded | Outcome::Builtin)))
    }

    /// One coldplug pass: loads every module some device asks for, and `extras`. Returns how
    /// many modaliases matched nothing and whether anything new was attempted.
    pub fn coldplug_pass(
        &mut self,
        modaliases: &BTreeSet<String>,
        extras: &[String],
    ) -> (usize, bool) {
        let before = self.done.len();
        let mut unmatched = 0;
        let mut batch = Vec::new();
        for modalias in modaliases {
            let modules = self.index.match_alias(modalias);
            if modules.is_empty() {
                unmatched += 1;
            }
            for module in modules {
                self.plan_module(&module, 0, &mut batch);
            }
        }
        for extra in extras {
            self.plan_name(extra, &mut batch);
        }
        self.run(batch);
        (unmatched, self.done.len() > before)
    }

    pub fn into_report(self) -> ModuleReport {
        self.report
    }
}

/// Whether a device modalias is a network controller: a PCI function of class 02, or a
/// virtio network device. Their drivers load in coldplug's first phase.
pub fn is_network_modalias(modalias: &str) -> bool {
    (modalias.starts_with("pci:") && modalias.contains("bc02sc"))
        || modalias.starts_with("virtio:d00000001v")
}

/// Coldplug under `root` for the running kernel: passes until nothing new loads; the explicit
/// `extras` (module names or aliases) load with the first pass. `threads` loads run at once
/// (see [`COLDPLUG_THREADS`]).
pub fn coldplug(
    sys: &dyn System,
    root: &Path,
    extras: &[String],
    threads: usize,
) -> Result<ModuleReport, ModulesError> {
    coldplug_network_first(sys, root, extras, threads, || {})
}

/// [`coldplug`] in two phases: first only the drivers of network controllers (and what they
/// need, and the devices they expose: virtio_pci, then virtio_net), then `network_ready` is
/// called, so DHCP can start while storage and the rest load (AHCI alone probed for 0.45 s in
/// QEMU; SAS HBAs take seconds). `network_ready` is not called when the module index cannot
/// be read.
pub fn coldplug_network_first(
    sys: &dyn System,
    root: &Path,
    extras: &[String],
    threads: usize,
    network_ready: impl FnOnce(),
) -> Result<ModuleReport, ModulesError> {
    let release = sys.kernel_release().map_err(ModulesError::KernelRelease)?;
    let index = ModuleIndex::read(&root.join("lib/modules").join(release))?;
    let cmdline = std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    let mut loader =
        Loader::new(sys, &index, threads).with_params(super::cmdline::module_params(&cmdline));
    for pass in 1..=MAX_PASSES {
        let mut aliases = device_modaliases(root);
        aliases.retain(|a| is_network_modalias(a));
        let (_, progressed) = loader.coldplug_pass(&aliases, &[]);
        tracing::debug!(pass, devices = aliases.len(), "network coldplug pass");
        if !progressed {
            break;
        }
    }
    network_ready();
    let mut unmatched = 0;
    for pass in 1..=MAX_PASSES {
        let aliases = device_modaliases(root);
        let (u, progressed) = loader.coldplug_pass(&aliases, if pass == 1 { extras } else { &[] });
        unmatched = u;
        tracing::debug!(pass, devices = aliases.len(), unmatched, "coldplug pass");
        if !progressed {
            break;
        }
    }
    let mut report = loader.into_report();
    report.unmatched_aliases = unmatched;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramdisk::sys::{Call, RecordingSystem};

    #[test]
    fn glob_matches_real_alias_lines() {
        let cases = [
            // (pattern from Debian 6.1 modules.alias, device modalias, expected)
            (
                "pci:v00001AF4d00001041sv*sd*bc*sc*i*",
                "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
                true,
            ),
            (
                "pci:v00001AF4d*sv*sd*bc*sc*i*",
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                true,
            ),
            (
                "pci:v*d*sv*sd*bc01sc08i02*",
                "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
                true,
            ),
            (
                "pci:v*d*sv*sd*bc01sc08i02*",
                "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc06i01",
                false,
            ),
            ("virtio:d00000001v*", "virtio:d00000001v00001AF4", true),
            ("virtio:d00000002v*", "virtio:d00000001v00001AF4", false),
            ("acpi*:IPI0001:*", "acpi:IPI0001:", true),
            (
                "cpu:type:x86,ven*fam*mod*:feature:*0081*",
                "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0081,0089",
                true,
            ),
            (
                "dmi*:svn*Dell*:pn*Vostro*",
                "dmi:bvnSeaBIOS:svnQEMU:pnStandardPC",
                false,
            ),
            (
                "usb:v*p*d*dc*dsc*dp*ic09isc*ip*in*",
                "usb:v1D6Bp0002d0601dc09dsc00dp01ic09isc00ip00in00",
                true,
            ),
            ("of:N*T*Cfoo[0-9]", "of:NxTyCfoo7", true),
            ("of:N*T*Cfoo[!0-9]", "of:NxTyCfoo7", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[]]x", "]x", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("[abc", "[abc", true),
            ("*", "", true),
            ("", "x", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern} vs {text}");
        }
    }

    /// Lists the device directory `dev` under `sys/bus/BUS/devices/` as sysfs does.
    fn bus_link(root: &Path, bus: &str, dev: &Path) {
        let b = root.join("sys/bus").join(bus).join("devices");
        std::fs::create_dir_all(&b).unwrap();
        std::os::unix::fs::symlink(dev, b.join(dev.file_name().unwrap())).unwrap();
    }

    /// A module tree and sysfs as a q35 VM with virtio-net, NVMe and IPMI KCS presents them.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("modules.dep"),
            "kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
             kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
             kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/crypto/crct10dif_common.ko:\n\
             kernel/crypto/crct10dif_generic.ko: kernel/crypto/crct10dif_common.ko\n\
             kernel/lib/crc-t10dif.ko:\n\
             kernel/drivers/nvme/host/nvme-core.ko:\n\
             kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko kernel/lib/crc-t10dif.ko\n\
             kernel/drivers/char/ipmi/ipmi_msghandler.ko:\n\
             kernel/drivers/char/ipmi/ipmi_devintf.ko: kernel/drivers/char/ipmi/ipmi_msghandler.ko\n\
             kernel/drivers/char/ipmi/ipmi_si.ko: kernel/drivers/char/ipmi/ipmi_msghandler.ko\n\
             kernel/drivers/block/broken.ko:\n\
             kernel/drivers/block/needs_broken.ko: kernel/drivers/block/broken.ko\n",
        )
        .unwrap();
        std::fs::write(
            m.join("modules.alias"),
            "# Aliases extracted from modules themselves.\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias virtio:d00000001v* virtio_net\n\
             alias pci:v*d*sv*sd*bc01sc08i02* nvme\n\
             alias crct10dif crct10dif_generic\n\
             alias crypto-crct10dif crct10dif_generic\n\
             alias acpi*:IPI0001:* ipmi_si\n\
             alias pci:v0000DEADd*sv*sd*bc*sc*i* needs_broken\n",
        )
        .unwrap();
        std::fs::write(
            m.join("modules.softdep"),
            "# Soft dependencies extracted from modules themselves.\n\
             softdep crc_t10dif pre: crct10dif\n\
             softdep ipmi_msghandler post: ipmi_devintf\n\
             softdep cifs gcm\n",
        )
        .unwrap();
        std::fs::write(
            m.join("modules.builtin"),
            "kernel/drivers/tty/serial/8250/8250.ko\n",
        )
        .unwrap();
        let dev = |rel: &str, alias: &str| {
            let d = dir.path().join("sys/devices").join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("modalias"), format!("{alias}\n")).unwrap();
            bus_link(dir.path(), alias.split(':').next().unwrap(), &d);
        };
        dev(
            "pci0000:00/0000:00:01.0",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
        );
        dev(
            "pci0000:00/0000:00:02.0",
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
        );
        dev(
            "pci0000:00/0000:00:03.0",
            "pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00",
        );
        dev(
            "pci0000:00/0000:00:04.0",
            "pci:v0000DEADd00000001sv00000000sd00000000bc00sc00i00",
        );
        dev("platform/IPI0001:00", "acpi:IPI0001:");
        dir
    }

    #[test]
    fn coldplug_loads_in_dependency_order_with_softdeps_and_second_pass() {
        let root = fixture();
        let sys = RecordingSystem {
            module_errors: vec![("broken.ko".into(), Errno::ENODEV)],
            ..Default::default()
        };
        // The virtio device under the virtio PCI function appears only once virtio_pci loaded;
        // the fake cannot do that, so the second pass is exercised by adding it between passes.
        let index = ModuleIndex::read(&root.path().join("lib/modules/6.1.0-test")).unwrap();
        let mut loader = Loader::new(&sys, &index, 1);
        let (unmatched, progressed) = loader.coldplug_pass(&device_modaliases(root.path()), &[]);
        assert_eq!((unmatched, progressed), (1, true));
        let d = root
            .path()
            .join("sys/devices/pci0000:00/0000:00:01.0/virtio0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        bus_link(root.path(), "virtio", &d);
        // Devices no bus or class lists are not read; class devices and the CPU root are.
        let d = root.path().join("sys/devices/virtual/dmi/id");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), "dmi:bvnSeaBIOS:svnQEMU:\n").unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/dmi")).unwrap();
        std::os::unix::fs::symlink(&d, root.path().join("sys/class/dmi/id")).unwrap();
        let d = root.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("modalias"),
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0081\n",
        )
        .unwrap();
        let d = root.path().join("sys/devices/virtual/misc/x");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), "never:read\n").unwrap();
        assert_eq!(device_modaliases(root.path()).len(), 8);
        let (_, progressed) = loader.coldplug_pass(&device_modaliases(root.path()), &[]);
        assert!(progressed);
        let (_, progressed) = loader.coldplug_pass(&device_modaliases(root.path()), &[]);
        assert!(!progressed, "a pass that loads nothing new ends coldplug");
        for extra in DEFAULT_EXTRAS {
            assert!(loader.load(extra));
        }
        assert!(!loader.load("no-such-thing"));
        let report = loader.into_report();
        assert_eq!(
            sys.loaded_modules(),
            vec![
                // modaliases in sorted order; acpi:IPI0001: ipmi_msghandler, its post softdep
                // ipmi_devintf, then ipmi_si
                "ipmi_msghandler.ko",
                "ipmi_devintf.ko",
                "ipmi_si.ko",
                // pci:v00001AF4: virtio_pci after its dependencies, deepest first
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_pci_modern_dev.ko",
                "virtio_pci_legacy_dev.ko",
                "virtio_pci.ko",
                // nvme: softdep pre crct10dif (an alias) of crc-t10dif, then nvme-core, nvme
                "crct10dif_common.ko",
                "crct10dif_generic.ko",
                "crc-t10dif.ko",
                "nvme-core.ko",
                "nvme.ko",
                // the DEAD device: its dependency fails, so it is never tried
                "broken.ko",
                // second pass: virtio_net and its not yet loaded dependencies
                "failover.ko",
                "net_failover.ko",
                "virtio_net.ko",
            ]
        );
        assert_eq!(
            report.failed,
            vec![
                (
                    "broken".to_string(),
                    format!(
                        "{}: No such device",
                        root.path()
                            .join("lib/modules/6.1.0-test/kernel/drivers/block/broken.ko")
                            .display()
                    )
                ),
                (
                    "needs_broken".to_string(),
                    "dependency broken failed".to_string()
                ),
                ("no_such_thing".to_string(), "no such module".to_string()),
            ]
        );
        assert_eq!(report.loaded.len(), 16);
        assert!(report.loaded.contains(&"nvme_core".to_string()));
    }

    #[test]
    fn coldplug_end_to_end_with_already_loaded_modules() {
        let root = fixture();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cmdline"),
            "console=ttyS0 ipmi_si.type=kcs ipmi_si.ports=0xca2 nvme-core.multipath=N\n",
        )
        .unwrap();
        let sys = RecordingSystem {
            module_errors: vec![("virtio.ko".into(), Errno::EEXIST)],
            ..Default::default()
        };
        let report = coldplug(
            &sys,
            root.path(),
            &["loop".to_string(), "8250".to_string()],
            2,
        )
        .unwrap();
        assert!(
            report.loaded.contains(&"virtio".to_string()),
            "EEXIST counts as loaded"
        );
        assert!(report.loaded.contains(&"virtio_pci".to_string()));
        assert_eq!(report.unmatched_aliases, 1);
        assert!(report.loaded.contains(&"needs_broken".to_string()));
        // loop is absent from this tree; 8250 is built in and not an error.
        assert_eq!(
            report.failed,
            vec![("loop".to_string(), "no such module".to_string())]
        );
        // Command-line module parameters reach finit_module; other modules get none.
        let params_of = |file: &str| {
            sys.calls().into_iter().find_map(|c| match c {
                Call::LoadModule { path, params } if path.ends_with(file) => Some(params),
                _ => None,
            })
        };
        assert_eq!(
            params_of("ipmi_si.ko").as_deref(),
            Some("type=kcs ports=0xca2")
        );
        assert_eq!(params_of("nvme-core.ko").as_deref(), Some("multipath=N"));
        assert_eq!(params_of("nvme.ko").as_deref(), Some(""));
    }

    #[test]
    fn parallel_loads_keep_dependency_order_and_overlap_slow_probes() {
        let root = fixture();
        let d = root
            .path()
            .join("sys/devices/pci0000:00/0000:00:01.0/virtio0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        bus_link(root.path(), "virtio", &d);
        let index = ModuleIndex::read(&root.path().join("lib/modules/6.1.0-test")).unwrap();
        for _ in 0..20 {
            let sys = RecordingSystem {
                module_errors: vec![("broken.ko".into(), Errno::ENODEV)],
                module_delays: vec![("nvme.ko".into(), std::time::Duration::from_millis(30))],
                ..Default::default()
            };
            let mut loader = Loader::new(&sys, &index, 4);
            let extras = ["ipmi_si".to_string()];
            loader.coldplug_pass(&device_modaliases(root.path()), &extras);
            let order = sys.loaded_modules();
            let at = |m: &str| {
                order
                    .iter()
                    .position(|o| o == m)
                    .unwrap_or_else(|| panic!("{m} not loaded: {order:?}"))
            };
            assert_eq!(order.len(), 17, "{order:?}");
            let file_of = |m: &str| index.modules[m].0.rsplit('/').next().unwrap().to_string();
            for (module, (_, deps)) in &index.modules {
                if module == "needs_broken" {
                    assert!(!order.contains(&file_of(module)));
                    continue;
                }
                for dep in deps {
                    assert!(
                        at(&file_of(dep)) < at(&file_of(module)),
                        "{dep} before {module}: {order:?}"
                    );
                }
            }
            assert!(
                at("crct10dif_generic.ko") < at("crc-t10dif.ko"),
                "pre softdep: {order:?}"
            );
            assert!(
                at("ipmi_msghandler.ko") < at("ipmi_devintf.ko"),
                "post softdep: {order:?}"
            );
            // nvme probes slowly; the NIC driver is not held up behind it.
            assert!(at("virtio_net.ko") < at("nvme.ko"), "{order:?}");
            let report = loader.into_report();
            assert_eq!(report.loaded.len(), 16);
            assert_eq!(
                report
                    .failed
                    .iter()
                    .map(|f| f.0.as_str())
                    .collect::<Vec<_>>(),
                vec!["broken", "needs_broken"]
            );
        }
    }

    #[test]
    fn network_drivers_load_first() {
        let root = fixture();
        let d = root
            .path()
            .join("sys/devices/pci0000:00/0000:00:01.0/virtio0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        bus_link(root.path(), "virtio", &d);
        let sys = RecordingSystem::default();
        let mut at_ready = None;
        let report = coldplug_network_first(&sys, root.path(), &["ipmi_si".to_string()], 1, || {
            at_ready = Some(sys.loaded_modules())
        })
        .unwrap();
        assert_eq!(
            at_ready.unwrap(),
            vec![
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_pci_modern_dev.ko",
                "virtio_pci_legacy_dev.ko",
                "virtio_pci.ko",
                "failover.ko",
                "net_failover.ko",
                "virtio_net.ko",
            ]
        );
        assert_eq!(report.loaded.len(), 18);
        assert_eq!(report.unmatched_aliases, 1);
        assert!(is_network_modalias(
            "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"
        ));
        assert!(!is_network_modalias(
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"
        ));
        assert!(!is_network_modalias("virtio:d00000002v00001AF4"));
    }

    #[test]
    fn missing_module_tree_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::default();
        let report = coldplug(&sys, dir.path(), &["ipmi_si".to_string()], 1).unwrap();
        assert!(report.loaded.is_empty());
        assert_eq!(
            report.failed,
            vec![("ipmi_si".to_string(), "no such module".to_string())]
        );
    }

    #[test]
    fn modinfo_fallback_without_depmod() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("lib/modules/6.1.0-test/kernel");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("a.ko"),
            b"\x7fELF junk\0alias=pci:v0000ABCDd*\0depends=b-dep\0vermagic=6.1\0",
        )
        .unwrap();
        std::fs::write(m.join("b-dep.ko"), b"\x7fELF\0depends=\0softdep=post: c\0").unwrap();
        std::fs::write(m.join("c.ko"), b"\x7fELF\0depends=\0").unwrap();
        let d = dir.path().join("sys/devices/pci0000:00/0000:00:05.0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), "pci:v0000ABCDd00000001\n").unwrap();
        let sys = RecordingSystem::default();
        let report = coldplug(&sys, dir.path(), &[], 1).unwrap();
        assert_eq!(sys.loaded_modules(), vec!["b-dep.ko", "c.ko", "a.ko"]);
        assert_eq!(report.loaded, vec!["b_dep", "c", "a"]);
    }
}
