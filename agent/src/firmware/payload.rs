//! Running a vendor update package: the archive (tar, or gzip-compressed tar) unpacked into
//! a private directory, its tool run there with the given arguments, a clean environment,
//! no stdin and its own process group, every stdout/stderr line handed to the caller (the
//! task log), the whole group killed at the timeout or on cancellation, the exit code
//! checked.

use super::UpdateError;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest output line passed on, in bytes (the rest is cut).
pub const MAX_LINE: usize = 4096;
/// Output lines passed on per run; later ones are counted, not logged.
pub const MAX_LINES: usize = 20_000;
/// Lines of output kept for an error message.
const TAIL: usize = 5;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub lines: usize,
    pub elapsed: Duration,
}

/// Unpacks `archive` into `dir` (which must be empty). Entries that would land outside it
/// (`..`, absolute paths) are refused by the `tar` crate's `unpack_in`.
pub fn unpack(archive: &Path, dir: &Path) -> Result<(), UpdateError> {
    let err =
        |e: std::io::Error| UpdateError::new("bad_package", format!("unpacking the package: {e}"));
    let mut f = std::fs::File::open(archive).map_err(err)?;
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = std::fs::File::open(archive).map_err(err)?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(false);
    let mut entries = 0usize;
    for entry in ar.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.display().to_string();
        if !entry.unpack_in(dir).map_err(err)? {
            return Err(UpdateError::new(
                "bad_package",
                format!("the package's entry {path:?} points outside its directory"),
            ));
        }
        entries += 1;
    }
    if entries == 0 {
        return Err(UpdateError::new(
            "bad_package",
            "the package is an empty archive",
        ));
    }
    Ok(())
}

/// Runs `dir/command args...` in `dir`, calling `line` for every output line; fails on a
/// timeout, a cancellation, a signal or a non-zero exit, with the last lines of output.
pub fn run(
    dir: &Path,
    command: &str,
    args: &[String],
    timeout: Duration,
    cancel: &CancellationToken,
    mut line: impl FnMut(Stream, &str),
) -> Result<Finished, UpdateError> {
    let program = dir.join(command);
    if !program.is_file() {
        return Err(UpdateError::new(
            "bad_package",
            format!("the package has no file {command:?}"),
        ));
    }
    let started = Instant::now();
    let mut child = Command::new(&program)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| UpdateError::new("spawn_failed", format!("starting {command}: {e}")))?;
    let pgid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<(Stream, String)>();
    let mut readers = Vec::new();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(pipe.take(u64::MAX));
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            buf.pop();
                        }
                        buf.truncate(MAX_LINE);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if tx.send((stream, text)).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut lines = 0usize;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut seen = |s: Stream, l: String, lines: &mut usize| {
        *lines += 1;
        if *lines <= MAX_LINES {
            line(s, &l);
        }
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(l);
    };
    let kill = || {
        // The whole group: a tool's children must not outlive it.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    let stopped: Option<&'static str> = loop {
        while let Ok((s, l)) = rx.try_recv() {
            seen(s, l, &mut lines);
        }
        match child.try_wait() {
            Ok(Some(_)) => break None,
            Ok(None) => {}
            Err(_) => break None,
        }
        if cancel.is_cancelled() {
            kill();
            break Some("cancelled");
        }
        if started.elapsed() >= timeout {
            kill();
            break Some("timeout");
        }
        if let Ok((s, l)) = rx.recv_timeout(Duration::from_millis(50)) {
            seen(s, l, &mut lines);
        }
    };
    let status = child.wait();
    // A grandchild that kept the pipes open is in the group too: make sure it is gone so
    // the readers see the end.
    kill();
    for r in readers {
        let _ = r.join();
    }
    while let Ok((s, l)) = rx.try_recv() {
        seen(s, l, &mut lines);
    }
    let elapsed = started.elapsed();
    let last = || {
        if tail.is_empty() {
            "no output".to_owned()
        } else {
            format!("last output: {}", Vec::from(tail.clone()).join(" | "))
        }
    };
    match stopped {
        Some("timeout") => {
            return Err(UpdateError::new(
                "timeout",
                format!(
                    "{command} killed after {} s ({})",
                    timeout.as_secs(),
                    last()
                ),
            ));
        }
        Some(_) => {
            return Err(UpdateError::new(
                "cancelled",
                format!("{command} cancelled"),
            ));
        }
        None => {}
    }
    let status = status
        .map_err(|e| UpdateError::new("spawn_failed", format!("waiting for {command}: {e}")))?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "an unknown status".to_owned(),
        };
        return Err(UpdateError::new(
            "payload_failed",
            format!("{command} ended with {how} ({})", last()),
        ));
    }
    Ok(Finished { lines, elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn collect(
        dir: &Path,
        cmd: &str,
        args: &[&str],
        timeout: Duration,
    ) -> (Result<Finished, UpdateError>, Vec<(Stream, String)>) {
        let mut out = Vec::new();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let r = run(
            dir,
            cmd,
            &args,
            timeout,
            &CancellationToken::new(),
            |s, l| out.push((s, l.to_owned())),
        );
        (r, out)
    }

    #[test]
    fn output_lines_and_arguments_reach_the_caller() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "u.sh",
            "echo \"args: $1 $2\"; echo oops >&2; pwd; echo \"path=$PATH token=${MOLAR_TOKEN:-unset}\"",
        );
        let (r, out) = collect(
            d.path(),
            "u.sh",
            &["--flash", "all"],
            Duration::from_secs(10),
        );
        let f = r.unwrap();
        assert_eq!(f.lines, 4);
        assert!(out.contains(&(Stream::Stdout, "args: --flash all".into())));
        assert!(out.contains(&(Stream::Stderr, "oops".into())));
        let cwd = std::fs::canonicalize(d.path()).unwrap();
        assert!(out.contains(&(Stream::Stdout, cwd.display().to_string())));
        // A clean environment: nothing of the agent's leaks in.
        assert!(out.iter().any(|(_, l)| l.ends_with("token=unset")));
    }

    #[test]
    fn a_non_zero_exit_fails_with_the_code_and_last_output() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "u.sh",
            "echo flashing; echo 'bad image' >&2; exit 3",
        );
        let e = collect(d.path(), "u.sh", &[], Duration::from_secs(10))
            .0
            .unwrap_err();
        assert_eq!(e.code, "payload_failed");
        assert!(e.msg.contains("exit code 3"), "{}", e.msg);
        assert!(e.msg.contains("bad image"), "{}", e.msg);
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let d = tempfile::tempdir().unwrap();
        // The tool forks a child that would outlive it and keep the pipe open.
        script(
            d.path(),
            "u.sh",
            "echo started; (sleep 60; echo late) & sleep 60",
        );
        let t = Instant::now();
        let (r, out) = collect(d.path(), "u.sh", &[], Duration::from_millis(500));
        let e = r.unwrap_err();
        assert_eq!(e.code, "timeout");
        assert!(e.msg.contains("started"), "{}", e.msg);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(!out.iter().any(|(_, l)| l == "late"));
    }

    #[test]
    fn cancellation_stops_the_tool() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "u.sh", "sleep 60");
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c.cancel();
        });
        let e = run(
            d.path(),
            "u.sh",
            &[],
            Duration::from_secs(60),
            &cancel,
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!(e.code, "cancelled");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = collect(d.path(), "flash", &[], Duration::from_secs(1))
            .0
            .unwrap_err();
        assert_eq!(e.code, "bad_package");
        assert!(e.msg.contains("\"flash\""));
    }

    fn tar_gz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn archives_unpack_with_modes_and_refuse_escapes() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("p.tar.gz");
        std::fs::write(&a, tar_gz(&[("bin/u.sh", b"#!/bin/sh\necho hi\n", 0o755)])).unwrap();
        let out = d.path().join("x");
        std::fs::create_dir(&out).unwrap();
        unpack(&a, &out).unwrap();
        let (r, lines) = collect(&out, "bin/u.sh", &[], Duration::from_secs(10));
        r.unwrap();
        assert_eq!(lines, [(Stream::Stdout, "hi".to_owned())]);

        // Not an archive at all.
        std::fs::write(&a, b"garbage that is no tar").unwrap();
        let out2 = d.path().join("y");
        std::fs::create_dir(&out2).unwrap();
        assert_eq!(unpack(&a, &out2).unwrap_err().code, "bad_package");
    }
}
