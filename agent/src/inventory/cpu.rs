//! Processors and NUMA nodes: model and features from `/proc/cpuinfo`, the socket/core/thread
//! counts from the kernel's topology in `/sys/devices/system/cpu`, and NUMA nodes from
//! `/sys/devices/system/node`.
//!
//! The topology files are preferred over cpuinfo's "physical id"/"core id" because they
//! exist on every architecture; cpuinfo is the fallback when sysfs lacks them.

use std::collections::BTreeSet;

use molar_protocol::inventory::{Cpu, NumaNode};

use super::{Ctx, parse_cpu_list};

const CPUINFO: &str = "/proc/cpuinfo";
const CPU_DIR: &str = "/sys/devices/system/cpu";
const NODE_DIR: &str = "/sys/devices/system/node";

/// What /proc/cpuinfo says, summarised.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct CpuinfoSummary {
    pub cpu: Cpu,
    /// Distinct (physical id, core id) pairs, when x86 cpuinfo lists them.
    pub cores: BTreeSet<(u32, u32)>,
    pub packages: BTreeSet<u32>,
    pub processors: u32,
}

/// Parses /proc/cpuinfo. Model-level fields come from the first processor block; x86 and
/// arm64 spellings are both understood.
pub(crate) fn parse_cpuinfo(text: &str) -> CpuinfoSummary {
    let mut s = CpuinfoSummary::default();
    let mut physical_id: Option<u32> = None;
    let mut block = 0u32;
    let mut first = true;
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if block > 0 {
                first = false;
            }
            block = 0;
            physical_id = None;
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        block += 1;
        match key {
            "processor" => s.processors += 1,
            "physical id" => {
                physical_id = value.parse().ok();
                if let Some(p) = physical_id {
                    s.packages.insert(p);
                }
            }
            "core id" => {
                if let (Some(p), Ok(c)) = (physical_id, value.parse()) {
                    s.cores.insert((p, c));
                }
            }
            _ => {}
        }
        if !first || value.is_empty() {
            continue;
        }
        let c = &mut s.cpu;
        match key {
            "model name" | "Processor" | "cpu model" => c.model = Some(value.to_string()),
            "vendor_id" | "CPU implementer" => c.vendor = Some(value.to_string()),
            "cpu family" | "CPU architecture" => c.family = value.parse().ok(),
            "model" | "CPU part" => c.model_number = parse_int(value),
            "stepping" | "CPU revision" => c.stepping = parse_int(value),
            "microcode" => c.microcode = Some(value.to_string()),
            "cpu MHz" => c.frequency_mhz = value.parse().ok(),
            "flags" | "Features" => {
                c.flags = value.split_whitespace().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    s
}

/// Decimal or 0x-prefixed hexadecimal (arm64 prints "CPU part : 0xd0c").
fn parse_int(v: &str) -> Option<u32> {
    match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Socket, core and thread counts from sysfs topology: (sockets, cores, threads).
fn sysfs_topology(ctx: &mut Ctx) -> Option<(u32, u32, u32)> {
    let mut packages = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut threads = 0u32;
    for name in ctx.list_dir(CPU_DIR, true) {
        let Some(num) = name.strip_prefix("cpu") else {
            continue;
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let topo = format!("{CPU_DIR}/{name}/topology");
        // Offline processors have no topology directory: they are not counted.
        let Some(package) = ctx.parse_attr::<i64>(&format!("{topo}/physical_package_id")) else {
            continue;
        };
        let die = ctx
            .parse_attr::<i64>(&format!("{topo}/die_id"))
            .unwrap_or(0);
        // Without a core id every thread counts as its own core.
        let core = ctx
            .parse_attr::<i64>(&format!("{topo}/core_id"))
            .unwrap_or(-1 - i64::from(threads));
        packages.insert(package);
        cores.insert((package, die, core));
        threads += 1;
    }
    if threads == 0 {
        return None;
    }
    Some((packages.len() as u32, cores.len() as u32, threads))
}

fn numa_nodes(ctx: &mut Ctx) -> Vec<NumaNode> {
    let mut nodes = Vec::new();
    for name in ctx.list_dir(NODE_DIR, false) {
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = format!("{NODE_DIR}/{name}");
        let cpulist_path = format!("{dir}/cpulist");
        let cpus = match ctx.read_attr(&cpulist_path) {
            Some(text) => match parse_cpu_list(&text) {
                Some(cpus) => cpus,
                None => {
                    ctx.note(&cpulist_path, format!("unexpected cpu list {text:?}"));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let meminfo_path = format!("{dir}/meminfo");
        let memory_bytes = ctx.read_attr(&meminfo_path).and_then(|text| {
            text.lines()
                .find_map(|l| l.split_once("MemTotal:").map(|(_, v)| v.to_string()))
                .and_then(|v| parse_kib(&v))
        });
        nodes.push(NumaNode {
            id,
            cpus,
            memory_bytes,
        });
    }
    nodes
}

/// "16384 kB" → bytes.
pub(crate) fn parse_kib(v: &str) -> Option<u64> {
    let n: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
    n.checked_mul(1024)
}

pub(crate) fn collect(ctx: &mut Ctx) -> (Cpu, Vec<NumaNode>) {
    let summary = ctx
        .read_required(CPUINFO)
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or_default();
    let mut cpu = summary.cpu;
    match sysfs_topology(ctx) {
        Some((sockets, cores, threads)) => {
            cpu.sockets = Some(sockets);
            cpu.cores = Some(cores);
            cpu.threads = Some(threads);
        }
        None if summary.processors > 0 => {
            cpu.threads = Some(summary.processors);
            if !summary.packages.is_empty() {
                cpu.sockets = Some(summary.packages.len() as u32);
            }
            if !summary.cores.is_empty() {
                cpu.cores = Some(summary.cores.len() as u32);
            }
        }
        None => {}
    }
    cpu.max_frequency_mhz = ctx
        .parse_attr::<u64>(&format!("{CPU_DIR}/cpu0/cpufreq/cpuinfo_max_freq"))
        .map(|khz| khz as f64 / 1000.0);
    (cpu, numa_nodes(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn write(root: &Path, path: &str, content: &str) {
        let p = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        fs::write(p, content).expect("write");
    }

    /// Writes a sysfs topology: (cpu number, package, core) triples.
    fn topology(root: &Path, cpus: &[(u32, u32, u32)]) {
        for (n, package, core) in cpus {
            let t = format!("{CPU_DIR}/cpu{n}/topology");
            write(
                root,
                &format!("{t}/physical_package_id"),
                &format!("{package}\n"),
            );
            write(root, &format!("{t}/core_id"), &format!("{core}\n"));
            write(root, &format!("{t}/die_id"), "0\n");
        }
        write(root, &format!("{CPU_DIR}/online"), "0-63\n");
    }

    fn cpuinfo_block(n: u32, package: u32, core: u32) -> String {
        format!(
            "processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\n\
             model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\nstepping\t: 6\n\
             microcode\t: 0xd0003a5\ncpu MHz\t\t: 2000.000\nphysical id\t: {package}\n\
             core id\t\t: {core}\nflags\t\t: fpu vme de pse\n\n"
        )
    }

    #[test]
    fn one_socket_two_cores() {
        let dir = tempfile::tempdir().expect("tempdir");
        topology(dir.path(), &[(0, 0, 0), (1, 0, 1)]);
        write(
            dir.path(),
            CPUINFO,
            &(cpuinfo_block(0, 0, 0) + &cpuinfo_block(1, 0, 1)),
        );
        let mut ctx = Ctx::new(dir.path());
        let (cpu, nodes) = collect(&mut ctx);
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(1), Some(2), Some(2))
        );
        assert_eq!(
            cpu.model.as_deref(),
            Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz")
        );
        assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(
            (cpu.family, cpu.model_number, cpu.stepping),
            (Some(6), Some(106), Some(6))
        );
        assert_eq!(cpu.microcode.as_deref(), Some("0xd0003a5"));
        assert_eq!(cpu.frequency_mhz, Some(2000.0));
        assert_eq!(cpu.flags, vec!["fpu", "vme", "de", "pse"]);
        assert!(nodes.is_empty());
        assert!(ctx.notes.is_empty(), "{:?}", ctx.notes);
    }

    #[test]
    fn two_sockets_with_hyperthreading_and_numa() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 2 sockets x 4 cores x 2 threads; siblings numbered the Linux way (n, n+8).
        let mut cpus = Vec::new();
        for package in 0..2 {
            for core in 0..4 {
                let first = package * 4 + core;
                cpus.push((first, package, core));
                cpus.push((first + 8, package, core));
            }
        }
        topology(dir.path(), &cpus);
        let info: String = cpus
            .iter()
            .map(|(n, p, c)| cpuinfo_block(*n, *p, *c))
            .collect();
        write(dir.path(), CPUINFO, &info);
        write(
            dir.path(),
            &format!("{CPU_DIR}/cpu0/cpufreq/cpuinfo_max_freq"),
            "3200000\n",
        );
        write(
            dir.path(),
            &format!("{NODE_DIR}/node0/cpulist"),
            "0-3,8-11\n",
        );
        write(
            dir.path(),
            &format!("{NODE_DIR}/node0/meminfo"),
            "Node 0 MemTotal:  16384 kB\n",
        );
        write(
            dir.path(),
            &format!("{NODE_DIR}/node1/cpulist"),
            "4-7,12-15\n",
        );
        write(
            dir.path(),
            &format!("{NODE_DIR}/node1/meminfo"),
            "Node 1 MemTotal:  8192 kB\n",
        );
        write(dir.path(), &format!("{NODE_DIR}/online"), "0-1\n");
        let mut ctx = Ctx::new(dir.path());
        let (cpu, nodes) = collect(&mut ctx);
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(2), Some(8), Some(16))
        );
        assert_eq!(cpu.max_frequency_mhz, Some(3200.0));
        assert_eq!(
            nodes,
            vec![
                NumaNode {
                    id: 0,
                    cpus: vec![0, 1, 2, 3, 8, 9, 10, 11],
                    memory_bytes: Some(16 << 20)
                },
                NumaNode {
                    id: 1,
                    cpus: vec![4, 5, 6, 7, 12, 13, 14, 15],
                    memory_bytes: Some(8 << 20)
                },
            ]
        );
        assert!(ctx.notes.is_empty(), "{:?}", ctx.notes);
    }

    #[test]
    fn cpuinfo_fallback_without_sysfs_topology() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = cpuinfo_block(0, 0, 0)
            + &cpuinfo_block(1, 0, 0)
            + &cpuinfo_block(2, 1, 0)
            + &cpuinfo_block(3, 1, 0);
        write(dir.path(), CPUINFO, &info);
        let mut ctx = Ctx::new(dir.path());
        let (cpu, _) = collect(&mut ctx);
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(2), Some(2), Some(4))
        );
        assert_eq!(
            ctx.notes.len(),
            1,
            "missing cpu directory noted: {:?}",
            ctx.notes
        );
        assert_eq!(ctx.notes[0].path, CPU_DIR);
    }

    #[test]
    fn arm64_cpuinfo() {
        let text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\
                    CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\n\
                    CPU part\t: 0xd0c\nCPU revision\t: 1\n\n";
        let s = parse_cpuinfo(text);
        assert_eq!(s.processors, 1);
        assert_eq!(s.cpu.vendor.as_deref(), Some("0x41"));
        assert_eq!(s.cpu.model_number, Some(0xd0c));
        assert_eq!(s.cpu.flags, vec!["fp", "asimd", "evtstrm"]);
    }

    #[test]
    fn missing_everything_is_noted_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ctx = Ctx::new(dir.path());
        let (cpu, nodes) = collect(&mut ctx);
        assert_eq!(cpu, Cpu::default());
        assert!(nodes.is_empty());
        let paths: Vec<&str> = ctx.notes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, vec![CPUINFO, CPU_DIR]);
    }

    #[test]
    fn garbage_topology_value_is_noted() {
        let dir = tempfile::tempdir().expect("tempdir");
        topology(dir.path(), &[(0, 0, 0)]);
        write(
            dir.path(),
            &format!("{CPU_DIR}/cpu0/topology/core_id"),
            "bogus\n",
        );
        let mut ctx = Ctx::new(dir.path());
        let (cpu, _) = collect(&mut ctx);
        assert_eq!(cpu.threads, Some(1));
        assert!(
            ctx.notes
                .iter()
                .any(|n| n.path.ends_with("cpu0/topology/core_id"))
        );
    }
}
