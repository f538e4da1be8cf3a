//! The manual pages and shell completions under `packaging/` are generated from the clap
//! definitions the binaries parse with (`clap_mangen`, `clap_complete`), so they cannot
//! describe a flag that does not exist. This test regenerates them and fails when the
//! checked-in files differ; `MOLAR_BLESS=1 cargo test -p molar-tests --test manuals`
//! rewrites them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap_complete::Shell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// Every generated file, by its path under `packaging/`.
fn generated() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for cmd in [
        molar_controller::cli::command(),
        molar_agent::cli::command(),
        molar_imagebuilder::cli::command(),
    ] {
        let name = cmd.get_name().to_owned();
        man_pages(&cmd, &name, &mut out);
        for (shell, file) in [
            (Shell::Bash, format!("completions/{name}.bash")),
            (Shell::Zsh, format!("completions/_{name}")),
            (Shell::Fish, format!("completions/{name}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut buf);
            out.insert(file, buf);
        }
    }
    out
}

/// A page for the command and one for each visible subcommand, named as `man` looks them
/// up (`molar-server-add.1` for `molar server add`).
fn man_pages(cmd: &clap::Command, page: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    // clap names are `&'static str`; a test leaks its few page names.
    let mut cmd = cmd
        .clone()
        .name(&*Box::leak(page.to_owned().into_boxed_str()));
    cmd.build();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf).unwrap();
    out.insert(format!("man/{page}.1"), buf);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, &format!("{page}-{}", sub.get_name()), out);
    }
}

/// The files under `packaging/DIR/` for each generated directory.
fn checked_in(dirs: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(packaging().join(dir)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

#[test]
fn manual_pages_and_completions_are_current() {
    let want = generated();
    assert!(want.contains_key("man/molar.1") && want.contains_key("man/molar-serve.1"));
    assert!(
        want.contains_key("man/molar-agent.1")
            && want.contains_key("man/molar-imagebuilder-build.1")
    );
    if std::env::var("MOLAR_BLESS").as_deref() == Ok("1") {
        for dir in ["man", "completions"] {
            let _ = std::fs::remove_dir_all(packaging().join(dir));
            std::fs::create_dir_all(packaging().join(dir)).unwrap();
        }
        for (name, body) in &want {
            std::fs::write(packaging().join(name), body).unwrap();
        }
        return;
    }
    let have = checked_in(&["man", "completions"]);
    let stale: Vec<&String> = want
        .keys()
        .chain(have.keys())
        .filter(|k| want.get(*k) != have.get(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "packaging/ is not what the clap definitions generate: {stale:?}; \
         run `MOLAR_BLESS=1 cargo test -p molar-tests --test manuals` and commit the result"
    );
    // The page says what the flags are: one the config file also names is on it.
    let serve = String::from_utf8_lossy(&want["man/molar-serve.1"]).into_owned();
    assert!(serve.contains("retain\\-logs\\-days"), "{serve}");
}
