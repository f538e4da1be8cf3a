//! Finding, building and checking the agent binary that becomes the ramdisk's `/init`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::elf::{self, ElfError};

/// The Rust target the ramdisk's agent is built for: static, no loader needed.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// What failed while getting hold of the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("reading agent {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent {path} cannot be /init: {source}")]
    NotStatic { path: PathBuf, source: ElfError },
    #[error("running cargo to build the agent in {workspace}: {source}")]
    CargoSpawn {
        workspace: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "building the agent failed ({status}); run `cargo build --release --target {MUSL_TARGET} -p molar-agent` in {workspace} to see why"
    )]
    CargoFailed { workspace: PathBuf, status: String },
    #[error("cargo built the agent but {path} does not exist")]
    NotBuilt { path: PathBuf },
}

impl AgentError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::Read { .. } => "agent_read_failed",
            AgentError::NotStatic { .. } => "agent_not_static",
            AgentError::CargoSpawn { .. } | AgentError::CargoFailed { .. } => "agent_build_failed",
            AgentError::NotBuilt { .. } => "agent_not_built",
        }
    }
}

/// The workspace this builder was compiled from (the parent of its crate directory).
/// Where the `molar-imagebuilder` package installs the static agent.
pub const PACKAGED_AGENT: &str = "/usr/lib/molar/molar-agent";

pub fn default_workspace() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_path_buf()
}

/// The cargo target directory of `workspace`, honouring `CARGO_TARGET_DIR`.
pub fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    }
}

/// Where `cargo build --release --target x86_64-unknown-linux-musl` leaves the agent.
pub fn default_agent_path(workspace: &Path) -> PathBuf {
    target_dir(workspace)
        .join(MUSL_TARGET)
        .join("release")
        .join("molar-agent")
}

/// Builds the static agent in `workspace` with cargo and returns its path.
pub fn build_agent(workspace: &Path) -> Result<PathBuf, AgentError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            MUSL_TARGET,
            "-p",
            "molar-agent",
        ])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .status()
        .map_err(|source| AgentError::CargoSpawn {
            workspace: workspace.to_path_buf(),
            source,
        })?;
    if !status.success() {
        return Err(AgentError::CargoFailed {
            workspace: workspace.to_path_buf(),
            status: status.to_string(),
        });
    }
    let path = default_agent_path(workspace);
    if !path.exists() {
        return Err(AgentError::NotBuilt { path });
    }
    Ok(path)
}

/// Reads the agent and checks that it is a static x86_64 executable.
pub fn load_agent(path: &Path) -> Result<Vec<u8>, AgentError> {
    let bytes = std::fs::read(path).map_err(|source| AgentError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    elf::check_static_executable(&bytes).map_err(|source| AgentError::NotStatic {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes)
}

/// The agent's version as `AGENT --version` prints it (first line, program name dropped),
/// or `None` when it prints nothing within a few seconds. The binary is static and checked
/// before this runs; it is killed if it does not answer.
pub fn agent_version(path: &Path) -> Option<String> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    let version = line.rsplit(' ').next().unwrap_or(line).trim();
    (!version.is_empty()).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_agent_is_refused_with_its_path() {
        let exe = std::env::current_exe().unwrap();
        let e = load_agent(&exe).unwrap_err();
        assert_eq!(e.code(), "agent_not_static");
        assert!(e.to_string().contains(&exe.display().to_string()), "{e}");
        assert!(e.to_string().contains("interpreter"), "{e}");
    }

    #[test]
    fn a_static_agent_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent");
        std::fs::write(&p, crate::elf::synth::executable(false)).unwrap();
        assert!(load_agent(&p).is_ok());
        let e = load_agent(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.code(), "agent_read_failed");
    }

    #[test]
    fn reads_the_version_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fake-agent");
        std::fs::write(&p, "#!/bin/sh\necho molar-agent 1.2.3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread forking while the script was open for writing can make the
        // first exec fail with ETXTBSY: retry briefly.
        let version = (0..20).find_map(|_| {
            agent_version(&p).or_else(|| {
                std::thread::sleep(Duration::from_millis(50));
                None
            })
        });
        assert_eq!(version.as_deref(), Some("1.2.3"));
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(agent_version(&p), None);
    }
}
