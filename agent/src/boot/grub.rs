//! The default entry of a GRUB configuration (`grub.cfg`), without running GRUB's script:
//! a tokenizer for its quoting (`'...'`, `"..."`, `\`, `#` comments, `;`), the menu tree
//! (`menuentry`, `submenu`; `if`/`function` bodies read straight through), `set` and bare
//! `name=value` assignments, and `set default=` resolved as GRUB would in the usual
//! generated file.
//!
//! Conditions are not evaluated: every branch is read in order, and an assignment whose value
//! expands to nothing does not replace a value already set. That is what makes the generated
//! `if [ "${next_entry}" ]; then set default="${next_entry}"; else set default="0"; fi` give
//! "0", `menuentry_id_option` stay `--id`, and `set default="${saved_entry}"` take the saved
//! entry from `grubenv`. Variables nobody set (`$root`, `$vt_handoff` without a `set`) expand
//! to nothing; device prefixes of paths (`($root)/vmlinuz`, `(hd0,gpt2)/boot/vmlinuz`) are
//! dropped: the caller looks for the path on the image's filesystems.

use std::collections::HashMap;

/// A part of a word: literal text, or a variable to expand.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Vec<Part>),
    /// Newline or `;`.
    End,
    Open,
    Close,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word: Vec<Part> = Vec::new();
    let mut lit = String::new();
    let mut in_word = false;
    fn flush_lit(word: &mut Vec<Part>, lit: &mut String) {
        if !lit.is_empty() {
            word.push(Part::Lit(std::mem::take(lit)));
        }
    }
    let read_var = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> String {
        let mut name = String::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || (name.is_empty() && c == '?') {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
        }
        name
    };
    macro_rules! end_word {
        () => {
            if in_word {
                flush_lit(&mut word, &mut lit);
                out.push(Token::Word(std::mem::take(&mut word)));
                in_word = false;
            }
        };
    }
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                out.push(Token::End);
            }
            '\n' | ';' => {
                end_word!();
                out.push(Token::End);
            }
            c if c.is_whitespace() => end_word!(),
            '{' if !in_word => out.push(Token::Open),
            '}' if !in_word => out.push(Token::Close),
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => lit.push(c),
                }
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    lit.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                if !matches!(n, '"' | '\\' | '$' | '\n') {
                                    lit.push('\\');
                                }
                                if n != '\n' {
                                    lit.push(n);
                                }
                            }
                        }
                        '$' => {
                            flush_lit(&mut word, &mut lit);
                            word.push(Part::Var(read_var(&mut chars)));
                        }
                        c => lit.push(c),
                    }
                }
            }
            '$' => {
                in_word = true;
                flush_lit(&mut word, &mut lit);
                word.push(Part::Var(read_var(&mut chars)));
            }
            c => {
                in_word = true;
                lit.push(c);
            }
        }
    }
    if in_word {
        flush_lit(&mut word, &mut lit);
        out.push(Token::Word(word));
    }
    out
}

/// One command: its words, and a `{ ... }` body when it has one.
#[derive(Debug, Clone)]
struct Command {
    words: Vec<Vec<Part>>,
    body: Option<Vec<Command>>,
}

fn parse_commands(tokens: &[Token], pos: &mut usize) -> Vec<Command> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    while *pos < tokens.len() {
        let t = &tokens[*pos];
        *pos += 1;
        match t {
            Token::Word(w) => words.push(w.clone()),
            Token::End => {
                if !words.is_empty() {
                    out.push(Command {
                        words: std::mem::take(&mut words),
                        body: None,
                    });
                }
            }
            Token::Open => {
                let body = parse_commands(tokens, pos);
                out.push(Command {
                    words: std::mem::take(&mut words),
                    body: Some(body),
                });
            }
            Token::Close => break,
        }
    }
    if !words.is_empty() {
        out.push(Command { words, body: None });
    }
    out
}

fn expand(word: &[Part], vars: &HashMap<String, String>) -> String {
    word.iter()
        .map(|p| match p {
            Part::Lit(s) => s.clone(),
            Part::Var(v) => vars.get(v).cloned().unwrap_or_default(),
        })
        .collect()
}

/// A menu entry's kernel, as its `linux` and `initrd` lines give them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrubEntry {
    pub title: String,
    pub id: Option<String>,
    /// The kernel path, device prefix dropped (`/boot/vmlinuz-6.1.0-13-amd64`).
    pub linux: Option<String>,
    /// The rest of the `linux` line: the kernel's command line.
    pub args: String,
    pub initrd: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuItem {
    Entry(GrubEntry),
    Submenu {
        title: String,
        id: Option<String>,
        items: Vec<MenuItem>,
    },
}

/// A parsed configuration: its menu and what `default` was set to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrubMenu {
    pub items: Vec<MenuItem>,
    pub default: Option<String>,
}

fn strip_device(path: &str) -> String {
    match path.strip_prefix('(').and_then(|p| p.split_once(')')) {
        Some((_, "")) => "/".to_owned(),
        Some((_, rest)) => rest.to_owned(),
        None => path.to_owned(),
    }
}

/// Title and `--id` of a `menuentry`/`submenu` command's words.
fn title_and_id(words: &[String]) -> (String, Option<String>) {
    let mut title = None;
    let mut id = None;
    let mut i = 1;
    while i < words.len() {
        let w = &words[i];
        if let Some(v) = w.strip_prefix("--id=") {
            id = Some(v.to_owned());
        } else if w == "--id" {
            id = words.get(i + 1).cloned();
            i += 1;
        } else if matches!(
            w.as_str(),
            "--class" | "--users" | "--hotkey" | "--source" | "--id-option"
        ) {
            i += 1;
        } else if w.starts_with("--") || w.is_empty() {
        } else if title.is_none() {
            title = Some(w.clone());
        }
        i += 1;
    }
    (title.unwrap_or_default(), id)
}

struct Reader {
    vars: HashMap<String, String>,
    default: Option<String>,
}

impl Reader {
    fn assign(&mut self, name: &str, value: String) {
        if value.is_empty() && self.vars.get(name).is_some_and(|v| !v.is_empty()) {
            return;
        }
        if name == "default" && !value.is_empty() {
            self.default = Some(value.clone());
        }
        self.vars.insert(name.to_owned(), value);
    }

    /// Reads `cmds` (the top level, an `if` or a `function` body), collecting menu items.
    fn read(&mut self, cmds: &[Command], items: &mut Vec<MenuItem>, entry: &mut Option<GrubEntry>) {
        for cmd in cmds {
            let mut words: Vec<String> = cmd.words.iter().map(|w| expand(w, &self.vars)).collect();
            // `then set x=1` on one line: the keyword starts the command the branch runs.
            while words
                .first()
                .is_some_and(|w| matches!(w.as_str(), "then" | "else" | "do"))
            {
                words.remove(0);
            }
            let Some(first) = words.first().map(String::as_str) else {
                if let Some(body) = &cmd.body {
                    self.read(body, items, entry);
                }
                continue;
            };
            match (first, &cmd.body) {
                ("menuentry", Some(body)) => {
                    let (title, id) = title_and_id(&words);
                    let mut e = Some(GrubEntry {
                        title,
                        id,
                        ..GrubEntry::default()
                    });
                    let mut nested = Vec::new();
                    self.read(body, &mut nested, &mut e);
                    items.extend(e.map(MenuItem::Entry));
                }
                ("submenu", Some(body)) => {
                    let (title, id) = title_and_id(&words);
                    let mut nested = Vec::new();
                    self.read(body, &mut nested, &mut None);
                    items.push(MenuItem::Submenu {
                        title,
                        id,
                        items: nested,
                    });
                }
                (_, Some(body)) => self.read(body, items, entry),
                ("set", None) => {
                    for w in &words[1..] {
                        if let Some((name, value)) = w.split_once('=') {
                            self.assign(name, value.to_owned());
                        }
                    }
                }
                ("linux" | "linuxefi" | "linux16", None) => {
                    if let Some(e) = entry.as_mut()
                        && let Some(path) = words.get(1)
                    {
                        e.linux = Some(strip_device(path));
                        e.args = words[2..]
                            .iter()
                            .filter(|w| !w.is_empty())
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" ");
                    }
                }
                ("initrd" | "initrdefi" | "initrd16", None) => {
                    if let Some(e) = entry.as_mut() {
                        e.initrd = words[1..]
                            .iter()
                            .filter(|w| !w.is_empty())
                            .map(|w| strip_device(w))
                            .collect();
                    }
                }
                (w, None) if w.contains('=') && !w.starts_with('=') && words.len() == 1 => {
                    if let Some((name, value)) = w.split_once('=')
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        self.assign(name, value.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
}

/// Parses `grub.cfg` text; `env` holds `grubenv`'s variables (`saved_entry`...).
pub fn parse(text: &str, env: &HashMap<String, String>) -> GrubMenu {
    let tokens = tokenize(text);
    let mut pos = 0;
    let cmds = parse_commands(&tokens, &mut pos);
    let mut vars = env.clone();
    // GRUB 2.00 and later: what the generated file tests `feature_menuentry_id` for.
    vars.insert("menuentry_id_option".into(), "--id".into());
    let mut reader = Reader {
        vars,
        default: None,
    };
    let mut items = Vec::new();
    reader.read(&cmds, &mut items, &mut None);
    GrubMenu {
        items,
        default: reader.default,
    }
}

/// Reads a `grubenv` block: `name=value` lines, `#` padding ignored.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn find<'a>(items: &'a [MenuItem], key: &str) -> Option<&'a MenuItem> {
    if let Ok(i) = key.trim().parse::<usize>() {
        return items.get(i);
    }
    items.iter().find(|it| match it {
        MenuItem::Entry(e) => e.title == key || e.id.as_deref() == Some(key),
        MenuItem::Submenu { title, id, .. } => title == key || id.as_deref() == Some(key),
    })
}

fn first_entry(item: &MenuItem) -> Option<&GrubEntry> {
    match item {
        MenuItem::Entry(e) => Some(e),
        MenuItem::Submenu { items, .. } => items.iter().find_map(first_entry),
    }
}

impl GrubMenu {
    /// The entry GRUB boots without a key press: `default` as an index, title or id, with
    /// `>` between submenu levels (`1>2`, `gnulinux-advanced-X>gnulinux-6.1.0-advanced-X`);
    /// the first entry when it is unset or names nothing.
    pub fn default_entry(&self) -> Option<&GrubEntry> {
        if let Some(default) = &self.default {
            let mut items = self.items.as_slice();
            let mut found = None;
            for key in default.split('>') {
                match find(items, key) {
                    Some(MenuItem::Submenu { items: sub, .. }) => {
                        found = None;
                        items = sub;
                        if let Some(e) = sub.iter().find_map(first_entry) {
                            found = Some(e);
                        }
                    }
                    Some(MenuItem::Entry(e)) => {
                        found = Some(e);
                        break;
                    }
                    None => {
                        found = None;
                        break;
                    }
                }
            }
            if found.is_some() {
                return found;
            }
        }
        self.items.iter().find_map(first_entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Debian 12's generated grub.cfg (10_linux with a submenu), trimmed.
    const DEBIAN: &str = include_str!("testdata/debian-grub.cfg");

    #[test]
    fn debian_default_is_the_first_entry() {
        let m = parse(DEBIAN, &HashMap::new());
        assert_eq!(m.default.as_deref(), Some("0"));
        assert_eq!(m.items.len(), 2);
        let e = m.default_entry().unwrap();
        assert_eq!(e.title, "Debian GNU/Linux");
        assert_eq!(e.id.as_deref(), Some("gnulinux-simple-2f1a"));
        assert_eq!(e.linux.as_deref(), Some("/boot/vmlinuz-6.1.0-13-amd64"));
        assert_eq!(e.args, "root=UUID=2f1a ro console=ttyS0 quiet");
        assert_eq!(e.initrd, ["/boot/initrd.img-6.1.0-13-amd64"]);
    }

    #[test]
    fn saved_and_submenu_defaults_resolve_by_index_title_or_id() {
        let saved = DEBIAN.replace(r#"set default="0""#, r#"set default="${saved_entry}""#);
        let env = parse_env(
            "# GRUB Environment Block\nsaved_entry=gnulinux-advanced-2f1a>gnulinux-6.1.0-9-amd64-advanced-2f1a\n#####",
        );
        let m = parse(&saved, &env);
        let e = m.default_entry().unwrap();
        assert_eq!(e.title, "Debian GNU/Linux, with Linux 6.1.0-9-amd64");
        assert_eq!(e.linux.as_deref(), Some("/boot/vmlinuz-6.1.0-9-amd64"));
        assert_eq!(
            e.initrd,
            ["/boot/intel-ucode.img", "/boot/initrd.img-6.1.0-9-amd64"]
        );

        for (default, title) in [
            ("1>1", "Debian GNU/Linux, with Linux 6.1.0-9-amd64"),
            ("1", "Debian GNU/Linux, with Linux 6.1.0-13-amd64"),
            ("Debian GNU/Linux", "Debian GNU/Linux"),
            ("7", "Debian GNU/Linux"),
            ("no such entry", "Debian GNU/Linux"),
        ] {
            let text = DEBIAN.replace(r#"set default="0""#, &format!("set default='{default}'"));
            let m = parse(&text, &HashMap::new());
            assert_eq!(m.default_entry().unwrap().title, title, "default={default}");
        }
    }

    #[test]
    fn quoting_variables_and_device_prefixes() {
        let text = "set kopts=\"quiet splash\"\nset vt_handoff=vt.handoff=7 # comment\n\
            menuentry \"Ubuntu\" --id=ubuntu {\n  linux ($root)/vmlinuz root=/dev/sda2 $kopts \
            $vt_handoff $unset 'a b'\\ c\n  initrdefi /initrd.img\n}\nmenuentry x { echo no kernel; }";
        let m = parse(text, &HashMap::new());
        assert_eq!(m.default, None);
        let e = m.default_entry().unwrap();
        assert_eq!(e.id.as_deref(), Some("ubuntu"));
        assert_eq!(e.linux.as_deref(), Some("/vmlinuz"));
        assert_eq!(e.args, "root=/dev/sda2 quiet splash vt.handoff=7 a b c");
        assert_eq!(e.initrd, ["/initrd.img"]);
        match &m.items[1] {
            MenuItem::Entry(e) => assert_eq!(e.linux, None),
            other => panic!("{other:?}"),
        }
        assert!(parse("", &HashMap::new()).default_entry().is_none());
        // Unbalanced braces and stray quotes do not panic.
        let _ = parse("menuentry 'a {\n}}}\"", &HashMap::new()).default_entry();
    }
}
