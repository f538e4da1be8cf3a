//! Tidy: a method name is written once, in `protocol`'s catalogue. The agent registers and
//! dispatches through the catalogue's types (`BmcInfoGet::NAME`), so a renamed method cannot
//! leave a stale string behind. Unit-test modules may spell names out (they test the wire).

#![allow(clippy::unwrap_used)]

use molar_protocol::catalogue::CATALOGUE;
use std::path::{Path, PathBuf};

/// Source trees whose product code must not spell a method name.
const TREES: &[&str] = &["agent/src", "controller/src"];

/// The same words where they are not method names: `(file, text of the line)`.
const NOT_METHODS: &[(&str, &str)] = &[
    // The API's `?inventory` query flag.
    ("controller/src/api/mod.rs", "k == \"inventory\""),
    // The server-sent event carrying a task's status.
    ("controller/src/api/mod.rs", ".event(\"status\")"),
    // The `set_power_state` parameter that reads the power state (seed 000's word).
    (
        "controller/src/requests.rs",
        "Some(\"status\") => OobAction::PowerStatus",
    ),
    ("controller/src/cli/mod.rs", "\"reset\", \"status\"]"),
    // A stored column's name in an error message.
    (
        "controller/src/store/servers.rs",
        "parse_json(\"inventory\"",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(line number, line)` of the product code of a file: everything before a `#[cfg(test)]`
/// line followed by `mod tests`, without comment lines.
fn product_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, *l))
        .collect()
}

/// Every `"name"` literal of a catalogue method in `text`'s product code.
fn method_literals(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (n, line) in product_lines(text) {
        for m in CATALOGUE {
            if line.contains(&format!("\"{}\"", m.name)) {
                found.push((n, m.name));
            }
        }
    }
    found
}

#[test]
fn no_method_name_is_a_string_literal_outside_protocol() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut offences = Vec::new();
    for tree in TREES {
        let mut files = Vec::new();
        rust_files(&workspace.join(tree), &mut files);
        assert!(!files.is_empty(), "no sources under {tree}");
        // A module's `tests.rs` (`#[cfg(test)] mod tests;` beside it) is test code whole.
        for file in files.into_iter().filter(|f| !f.ends_with("tests.rs")) {
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let relative = file.strip_prefix(&workspace).unwrap_or(&file).to_owned();
            for (line, name) in method_literals(&text) {
                let allowed = NOT_METHODS.iter().any(|(f, fragment)| {
                    relative == Path::new(f) && lines[line - 1].contains(fragment)
                });
                if allowed {
                    continue;
                }
                offences.push(format!("{}:{line}: \"{name}\"", file.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "method names spelled outside the catalogue (use molar_protocol::catalogue):\n{}",
        offences.join("\n")
    );
}

/// The check can fail: a literal in product code is found, one in a test module, in a
/// comment or inside a longer string is not.
#[test]
fn the_rule_finds_literals_in_product_code_only() {
    let text = "fn f() {\n    m.call(\"bmc.info\", g);\n    // \"reboot\" in a comment\n    \
                let p = \"proc/self/status\";\n}\n#[cfg(test)]\nmod tests {\n    \
                fn t() { d(\"poweroff\") }\n}\n";
    assert_eq!(method_literals(text), [(2, "bmc.info")]);
}
