//! The `molar-agent` command line. `main.rs` only calls [`main`]; every subcommand's logic
//! lives in the library so it is testable.

use crate::logfwd::{ForwardLayer, LogBuffer};
use crate::session::{Agent, AgentConfig, Methods};
use crate::tls::Trust;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use molar_protocol::Secret;
use molar_protocol::catalogue::{InventoryGet, Method};
use molar_protocol::inventory::Inventory;
use molar_protocol::methods::Empty;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;

#[derive(Parser, Debug)]
#[command(
    name = "molar-agent",
    version,
    about = "molar's in-band provisioning agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to a controller and serve it until stopped.
    Run(RunArgs),
    /// Be the ramdisk's /init: mount, load modules, DHCP, read molar.* settings from the
    /// kernel command line, then serve the controller forever. Refused unless PID 1.
    Init,
    /// Talk to this machine's BMC through /dev/ipmi0 (the same code the controller's
    /// `bmc.*` and `chassis.*` methods run).
    Bmc {
        #[command(subcommand)]
        action: BmcCommand,
        /// Root under which /dev/ipmi0 is found.
        #[arg(long, default_value = "/", global = true)]
        root: PathBuf,
        /// Allow `power` actions other than `status`, and `reset`, on this host.
        #[arg(long, global = true)]
        allow_host_power: bool,
    },
    /// Print this machine's hardware inventory as JSON (the `inventory` method's result).
    Inventory {
        /// Root under which /sys, /proc and /dev are read (a fixture tree in tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Print instead a `decom.qc` spec this machine passes, to edit and keep per model.
        #[arg(long)]
        spec_template: bool,
    },
    /// Check this machine against a spec file (what `decom.qc` does); exits non-zero when a
    /// check fails.
    Qc {
        /// The spec, as JSON (`molar-agent inventory --spec-template` writes one).
        #[arg(long)]
        spec: PathBuf,
        /// Burn-in settings, as JSON (the `burnin` of `decom.qc`): memory, cpu, disks, nics.
        #[arg(long)]
        burnin: Option<PathBuf>,
        /// Allow the disk burn-in to read this device on this host (read-only; outside the
        /// ramdisk no other disk is read). Repeatable.
        #[arg(long = "allow-host", value_name = "DEVICE")]
        allow_host: Vec<String>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Securely erase disks here, with a progress bar (the `decom.disk_erase` engine).
    Erase {
        /// Device to erase (/dev/sdX, nvme0n1, ...). Repeatable.
        #[arg(long = "device", required = true)]
        devices: Vec<String>,
        /// auto, nvme_sanitize, nvme_format, ata_secure_erase, discard, overwrite, metadata.
        #[arg(long, default_value = "auto")]
        method: String,
        /// For overwrite: passes (all but the last random, the last zeros).
        #[arg(long)]
        passes: Option<u32>,
        /// Skip reading back zeros afterwards.
        #[arg(long)]
        no_verify: bool,
        /// Allow the named devices to be erased on this host (outside the ramdisk).
        #[arg(long)]
        allow_host: bool,
        /// Confirm that everything on the devices is to be destroyed.
        #[arg(long)]
        yes: bool,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Write an OS image here, with a progress bar (the `standbye.prepare_image` pipeline).
    Image {
        #[command(subcommand)]
        action: ImageCommand,
    },
    /// Write a config drive here (what `standbye.run_image` does with its `config_drive`).
    Configdrive {
        #[command(subcommand)]
        action: ConfigdriveCommand,
    },
    /// Run any protocol method locally and print its JSON result.
    Call {
        method: String,
        /// Params as a JSON object.
        #[arg(default_value = "{}")]
        params: String,
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Allow reboot, poweroff, chassis power and BMC resets on this host (never needed
        /// for reads); erasing needs `molar-agent erase --allow-host`.
        #[arg(long)]
        allow_host_power: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BmcCommand {
    /// Device id, firmware, LAN channels and users (never passwords).
    Info,
    /// Create or update a BMC user; prints the credentials as JSON.
    SetCredentials {
        #[arg(long)]
        username: String,
        /// File holding the password; a strong one is generated when absent.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        user_id: Option<u32>,
        #[arg(long)]
        channel: Option<u32>,
        /// callback, user, operator, administrator or oem.
        #[arg(long, default_value = "administrator")]
        privilege: String,
    },
    /// Reset the BMC: cold or warm.
    Reset { kind: String },
    /// Set the next boot device: pxe, disk, bios, cdrom or none.
    BootDevice {
        device: String,
        #[arg(long)]
        persistent: bool,
        #[arg(long)]
        efi: bool,
    },
    /// Chassis power: status, on, off, soft, reset or cycle.
    Power { action: String },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Fetch, verify, decompress, convert and write an image to a disk in one pass.
    Write(ImageWriteArgs),
}

#[derive(Args, Debug)]
struct ImageWriteArgs {
    /// The image's URL (http or https). Repeatable: tried in order.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// sha256:HEX, sha512:HEX, or the URL of a SHA256SUMS-style file.
    #[arg(long, required_unless_present = "insecure_skip_checksum")]
    checksum: Option<String>,
    /// Write without checking the image's checksum.
    #[arg(long, conflicts_with = "checksum")]
    insecure_skip_checksum: bool,
    /// The disk to write (/dev/nvme0n1, sdb, ...).
    #[arg(long)]
    device: String,
    /// raw or qcow2 (detected when absent; a disagreement is refused).
    #[arg(long)]
    format: Option<String>,
    /// none, gzip, zstd or xz (detected when absent).
    #[arg(long)]
    compression: Option<String>,
    /// PEM file of a CA to trust for https, besides the public roots.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Allow writing the named device on this host (outside the ramdisk).
    #[arg(long)]
    allow_host: bool,
    /// Confirm that everything on the device is to be replaced.
    #[arg(long)]
    yes: bool,
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Subcommand, Debug)]
enum ConfigdriveCommand {
    /// Add (or rewrite) the config-2 partition at the end of a disk and print the outcome.
    Write(ConfigdriveWriteArgs),
}

#[derive(Args, Debug)]
struct ConfigdriveWriteArgs {
    /// The whole disk (/dev/sdX, nvme0n1, ...) holding the deployed image.
    #[arg(long)]
    device: String,
    /// JSON file with the `config_drive` value: {meta_data, network_data?, user_data?,
    /// vendor_data?}, a gzip+base64 string, or {url, checksum}.
    #[arg(long)]
    from: PathBuf,
    /// Filesystem built from documents: vfat or iso9660 (a ready image keeps its own).
    #[arg(long, default_value = "vfat")]
    format: String,
    /// Allow the named device to be edited on this host (outside the ramdisk).
    #[arg(long)]
    allow_host: bool,
    /// Confirm that the partition table of the device is to be changed.
    #[arg(long)]
    yes: bool,
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

/// `molar-agent configdrive write`: the run_image code, on the command line.
async fn configdrive_local(a: ConfigdriveWriteArgs) -> anyhow::Result<()> {
    use molar_protocol::configdrive::{ConfigDrive, ConfigDriveFormat, MAX_IMAGE_BASE64_BYTES};
    use std::io::Read as _;
    init_logging(tracing::Level::WARN);
    if !a.yes {
        bail!(
            "this adds or rewrites a partition on {}: add --yes to go ahead",
            a.device
        );
    }
    let format: ConfigDriveFormat = a.format.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Bounded like a param on the wire could never be, but no more than the largest value.
    let limit = MAX_IMAGE_BASE64_BYTES as u64 + (1 << 20);
    let mut text = Vec::new();
    std::fs::File::open(&a.from)
        .with_context(|| format!("opening {}", a.from.display()))?
        .take(limit + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {}", a.from.display()))?;
    if text.len() as u64 > limit {
        bail!("{}: more than {limit} bytes", a.from.display());
    }
    let spec: ConfigDrive = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a config_drive value", a.from.display()))?;
    let authority = crate::authority::Authority::host(
        &if a.allow_host {
            vec![a.device.clone()]
        } else {
            // Without --allow-host nothing may be edited from the command line, even in the
            // ramdisk's shell (run_image is the ramdisk's way).
            vec![]
        },
        false,
    );
    let outcome = tokio::task::spawn_blocking(move || {
        crate::configdrive::write(&a.root, &a.device, &spec, format, &authority)
            .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))
    })
    .await??;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The controller's agent listener, HOST:PORT.
    #[arg(long)]
    controller: String,
    /// PEM file with the controller's CA certificate.
    #[arg(long, conflicts_with_all = ["ca_fingerprint", "insecure"])]
    ca: Option<PathBuf>,
    /// Pin the controller's CA by fingerprint: sha256:HEX.
    #[arg(long, conflicts_with = "insecure")]
    ca_fingerprint: Option<String>,
    /// Connect without TLS (lab only; the controller must allow plaintext agents).
    #[arg(long)]
    insecure: bool,
    /// File holding the agent token (created with `molar token create`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Root under which /sys, /proc and /dev are read.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Log level forwarded and printed: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", env = "MOLAR_LOG")]
    log: tracing::Level,
    /// Outside the ramdisk, the only devices destructive methods may touch (tests use loop
    /// devices). Repeatable. Without it, a host agent refuses every destructive action.
    #[arg(long = "allow-host", value_name = "DEVICE")]
    allow_host: Vec<String>,
    /// Outside the ramdisk, let the controller reboot, power off or power-cycle this machine
    /// and reset its BMC (reboot, poweroff, chassis.power, bmc.reset). Refused without it.
    #[arg(long)]
    allow_host_power: bool,
}

/// Installs stderr logging plus forwarding to the controller; returns the forwarding buffer.
pub fn init_logging(level: tracing::Level) -> Arc<LogBuffer> {
    init_logging_to(level, true)
}

/// [`init_logging`], with or without ANSI colours (a serial console shows them as noise).
pub fn init_logging_to(level: tracing::Level, ansi: bool) -> Arc<LogBuffer> {
    let buffer = LogBuffer::new(crate::logfwd::DEFAULT_CAPACITY);
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_filter(filter),
        )
        .with(ForwardLayer::new(buffer.clone(), level))
        .try_init();
    buffer
}

fn read_token(path: Option<&PathBuf>) -> anyhow::Result<Secret> {
    let Some(path) = path else {
        return Ok(Secret::default());
    };
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(Secret::new(token))
}

/// The methods an agent on a host offers for the machine under `root`: only `allow_host`
/// devices may be erased; power actions only with `allow_power`.
pub fn host_methods(root: &std::path::Path, allow_host: &[String], allow_power: bool) -> Methods {
    let authority = crate::authority::Authority::host(allow_host, allow_power);
    crate::capabilities::methods(&crate::capabilities::Machine::new(
        root.to_owned(),
        authority,
    ))
}

struct EraseArgs {
    devices: Vec<String>,
    method: String,
    passes: Option<u32>,
    verify: bool,
    allow_host: bool,
    yes: bool,
    root: PathBuf,
}

/// `molar-agent erase`: the task's engine with a progress bar instead of `task_status`.
async fn erase_local(a: EraseArgs) -> anyhow::Result<()> {
    use crate::erase::{self, EraseEnv, EraseRequest};
    use crate::safety::Authority;
    use molar_protocol::erase::{DiskEraseParams, EraseMethod};
    init_logging(tracing::Level::WARN);
    if !a.yes {
        bail!(
            "this destroys every byte on {}: add --yes to go ahead",
            a.devices.join(", ")
        );
    }
    let method: EraseMethod = a.method.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let authority = if a.allow_host {
        Authority::Host {
            allowed: a.devices.clone(),
        }
    } else {
        // Outside --allow-host nothing may be erased from the command line, even in the
        // ramdisk's shell (the controller's decom.disk_erase is the ramdisk's way).
        Authority::Host { allowed: vec![] }
    };
    let params = DiskEraseParams {
        devices: Some(a.devices),
        expect: None,
        exclude: None,
        method: Some(method),
        verify: Some(a.verify),
        concurrency: None,
        passes: a.passes,
    };
    let req = EraseRequest::from_params(&params);
    let env = EraseEnv::new(a.root, authority);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            wait_for_signal().await;
            cancel.cancel();
        }
    });
    let report = tokio::task::spawn_blocking({
        let bar = bar.clone();
        move || {
            erase::run(
                &req,
                &env,
                &|p| {
                    bar.set_length(p.bytes_total);
                    bar.set_position(p.bytes_done);
                    bar.set_message(p.message());
                },
                &cancel,
            )
        }
    })
    .await??;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&report)?);
    match crate::capabilities::erase_outcome(&report) {
        Ok(_) => {
            eprintln!(
                "erased {} device(s), {} bytes in {:.1} s",
                report.erased, report.bytes, report.seconds
            );
            Ok(())
        }
        Err(f) => bail!("{} ({})", f.msg, f.code),
    }
}

/// `molar-agent image write`: `prepare_image`'s checks and pipeline with a progress bar.
async fn image_write(a: ImageWriteArgs) -> anyhow::Result<()> {
    use crate::capabilities::image::{ImageEnv, prepare, progress_message};
    use crate::safety::Authority;
    use molar_protocol::image::{ImageSource, ImageSpecWire, PrepareImageParams};
    use std::sync::atomic::Ordering;
    init_logging(tracing::Level::WARN);
    if !a.yes {
        bail!(
            "this replaces everything on {}: add --yes to go ahead",
            a.device
        );
    }
    // Like `molar-agent erase`: from the command line only a device named with --allow-host
    // may be written (the controller's prepare_image is the ramdisk's way).
    let allowed = if a.allow_host {
        vec![a.device.clone()]
    } else {
        vec![]
    };
    let word = |s: Option<String>| s.map(serde_json::Value::String);
    let ca_pem = match &a.ca {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let wire = ImageSpecWire {
        id: "local".into(),
        urls: Some(a.urls),
        checksum: a.checksum,
        insecure_skip_checksum: a.insecure_skip_checksum,
        format: word(a.format).map(serde_json::from_value).transpose()?,
        compression: word(a.compression)
            .map(serde_json::from_value)
            .transpose()?,
        ca_pem,
        ..ImageSpecWire::default()
    };
    let spec = molar_protocol::image::ImageSpec::try_from(wire)?;
    let params = PrepareImageParams {
        source: ImageSource::Spec(Box::new(spec)),
        device: a.device,
    };
    let env = ImageEnv::new(
        a.root,
        Authority::Host { allowed },
        crate::capabilities::HardwareReady::default(),
    );
    let progress = Arc::new(crate::image::Progress::default());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            wait_for_signal().await;
            cancel.cancel();
        }
    });
    let ticker = tokio::spawn({
        let (bar, progress) = (bar.clone(), progress.clone());
        async move {
            let t0 = std::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let fetched = progress.fetch.fetched.load(Ordering::Relaxed);
                let total = progress.fetch.total.load(Ordering::Relaxed);
                let written = progress.written.load(Ordering::Relaxed);
                bar.set_length(total);
                bar.set_position(fetched);
                let secs = t0.elapsed().as_secs_f64().max(0.001);
                bar.set_message(progress_message("image", fetched, total, written, secs));
            }
        }
    });
    let result =
        tokio::task::spawn_blocking(move || prepare(&env, &params, &progress, &cancel)).await?;
    ticker.abort();
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r)?);
            eprintln!(
                "wrote {} bytes to {} in {:.1} s ({:.0} MB/s), {}",
                r.disk_bytes,
                r.device,
                r.seconds,
                r.throughput / 1e6,
                r.checksum.as_deref().unwrap_or("checksum not checked")
            );
            Ok(())
        }
        Err(f) => bail!("{} ({})", f.msg, f.code),
    }
}

/// Runs one method locally, as the controller would, and prints its result.
async fn call_local(
    root: PathBuf,
    method: &str,
    params: serde_json::Value,
    allow_power: bool,
) -> anyhow::Result<()> {
    init_logging(tracing::Level::WARN);
    let mut config = AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default());
    config.root = root.clone();
    // A host, like `molar-agent run`: power actions only with --allow-host-power, erasing
    // only through `molar-agent erase --allow-host`.
    let agent = Agent::new(
        config,
        host_methods(&root, &[], allow_power),
        LogBuffer::new(1),
    );
    match agent.dispatch(method.to_owned(), params).await {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Err(e) => bail!("{method}: {} ({})", e.msg, e.code),
    }
}

/// Largest spec file read: specs are a few kilobytes, and the bound keeps a wrong path
/// (a disk image, /dev/zero) from being read whole.
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// This machine's inventory, as the `inventory` method collects it.
async fn local_inventory(root: PathBuf) -> anyhow::Result<Inventory> {
    let mut config = AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default());
    config.root = root.clone();
    let agent = Agent::new(config, host_methods(&root, &[], false), LogBuffer::new(1));
    let v = agent
        .dispatch(InventoryGet::NAME.to_owned(), serde_json::json!({}))
        .await
        .map_err(|e| anyhow::anyhow!("inventory: {} ({})", e.msg, e.code))?;
    Ok(serde_json::from_value(v)?)
}

/// `molar-agent inventory --spec-template`.
async fn spec_template(root: PathBuf) -> anyhow::Result<()> {
    init_logging(tracing::Level::WARN);
    let inv = local_inventory(root).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&molar_protocol::qc::template(&inv))?
    );
    Ok(())
}

/// Reads a settings file of at most [`MAX_SPEC_BYTES`]; `what` names it in errors.
fn read_bounded(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let mut text = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        bail!(
            "{what} {} is larger than {MAX_SPEC_BYTES} bytes",
            path.display()
        );
    }
    Ok(text)
}

/// Reads and checks a burn-in settings file, refusing what `decom.qc` would refuse.
pub fn read_burnin(path: &std::path::Path) -> anyhow::Result<molar_protocol::burnin::Burnin> {
    let text = read_bounded(path, "burn-in settings")?;
    let b: molar_protocol::burnin::Burnin = serde_json::from_slice(&text)
        .with_context(|| format!("burn-in settings {} are not valid", path.display()))?;
    b.validate()
        .with_context(|| format!("burn-in settings {}", path.display()))?;
    Ok(b)
}

/// Reads and decodes a spec file, refusing what `decom.qc` would refuse.
pub fn read_spec(path: &std::path::Path) -> anyhow::Result<molar_protocol::qc::Spec> {
    let text = read_bounded(path, "spec")?;
    let spec: molar_protocol::qc::Spec = serde_json::from_slice(&text)
        .with_context(|| format!("spec {} is not a valid spec", path.display()))?;
    if spec.is_empty() {
        bail!("spec {} checks nothing", path.display());
    }
    Ok(spec)
}

/// The report as a table, one check a line; control characters from the hardware's strings
/// are escaped so they cannot drive the terminal.
pub fn qc_table(report: &molar_protocol::qc::QcReport) -> String {
    let clean = |s: &str| -> String { s.chars().flat_map(char::escape_debug).collect() };
    let rows: Vec<[String; 4]> = report
        .checks
        .iter()
        .map(|c| {
            [
                if c.pass { "ok" } else { "FAIL" }.to_owned(),
                clean(&c.name),
                clean(&c.expected),
                clean(&c.actual),
            ]
        })
        .collect();
    let head = ["", "CHECK", "EXPECTED", "ACTUAL"].map(str::to_owned);
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&head))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for r in std::iter::once(&head).chain(rows.iter()) {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            r[0], r[1], r[2], r[3]
        ));
    }
    let failed = report.checks.iter().filter(|c| !c.pass).count();
    out.push_str(&if report.passed {
        format!("passed: {} checks\n", report.checks.len())
    } else {
        format!("FAILED: {failed} of {} checks\n", report.checks.len())
    });
    out
}

/// `molar-agent qc`: the `decom.qc` check (and burn-in) here, without a controller.
async fn qc_local(
    spec: &std::path::Path,
    burnin: Option<&std::path::Path>,
    allow_host: &[String],
    json: bool,
    root: PathBuf,
) -> anyhow::Result<()> {
    init_logging(tracing::Level::WARN);
    let spec = read_spec(spec)?;
    let burnin = burnin.map(read_burnin).transpose()?;
    let inv = local_inventory(root.clone()).await?;
    let mut report = molar_protocol::qc::check(&spec, &inv);
    if let Some(b) = burnin {
        let authority = crate::authority::Authority::host(allow_host, false);
        let (checks, numbers) = tokio::task::spawn_blocking(move || {
            let last = std::sync::Mutex::new(String::new());
            let progress = |f: f64, eta: Option<u64>, what: &str| {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if *last != what {
                    eprintln!(
                        "{what} ({:.0}%, about {} s left)",
                        f * 100.0,
                        eta.unwrap_or(0)
                    );
                    what.clone_into(&mut last);
                }
            };
            let env = crate::burnin::Env {
                root: &root,
                authority: &authority,
                inv: &inv,
            };
            crate::burnin::run(
                &env,
                &b,
                &tokio_util::sync::CancellationToken::new(),
                &progress,
            )
        })
        .await??;
        report.add_burnin(checks, numbers);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", qc_table(&report));
        for note in report.burnin.iter().flat_map(|b| &b.notes) {
            println!("note: {}", note.escape_debug());
        }
    }
    match crate::capabilities::qc::qc_outcome(&report) {
        Ok(_) => Ok(()),
        Err(f) => bail!("{} ({})", f.msg, f.code),
    }
}

/// The local call of catalogue method `M` with typed `params`.
fn local_call<M: Method>(params: &M::Params) -> anyhow::Result<(&'static str, serde_json::Value)> {
    Ok((M::NAME, serde_json::to_value(params)?))
}

fn bmc_call(action: BmcCommand) -> anyhow::Result<(&'static str, serde_json::Value)> {
    use molar_protocol::bmc::{
        BmcResetParams, BootDeviceParams, ChassisPowerParams, SetCredentialsParams,
    };
    use molar_protocol::catalogue::{
        BmcInfoGet, BmcReset, BmcSetCredentials, ChassisBootDevice, ChassisPower,
    };
    fn word<T: std::str::FromStr>(s: &str) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        s.parse().map_err(|e| anyhow::anyhow!("{e}"))
    }
    match action {
        BmcCommand::Info => local_call::<BmcInfoGet>(&Empty {}),
        BmcCommand::SetCredentials {
            username,
            password_file,
            user_id,
            channel,
            privilege,
        } => {
            let password = match password_file {
                Some(f) => {
                    let pw = std::fs::read_to_string(&f)
                        .with_context(|| format!("reading password file {}", f.display()))?;
                    Some(Secret::new(pw.trim_end_matches(['\n', '\r'])))
                }
                None => None,
            };
            local_call::<BmcSetCredentials>(&SetCredentialsParams {
                username,
                password,
                user_id,
                channel,
                privilege: word(&privilege)?,
            })
        }
        BmcCommand::Reset { kind } => {
            local_call::<BmcReset>(&BmcResetParams { kind: word(&kind)? })
        }
        BmcCommand::BootDevice {
            device,
            persistent,
            efi,
        } => local_call::<ChassisBootDevice>(&BootDeviceParams {
            device: word(&device)?,
            persistent,
            efi,
        }),
        BmcCommand::Power { action } => local_call::<ChassisPower>(&ChassisPowerParams {
            action: word(&action)?,
        }),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let logs = init_logging(args.log);
    let trust = match (&args.ca, &args.ca_fingerprint, args.insecure) {
        (Some(ca), _, _) => Trust::CaFile(ca.clone()),
        (None, Some(fp), _) => Trust::parse_fingerprint(fp)?,
        (None, None, true) => Trust::Insecure,
        (None, None, false) => {
            bail!(
                "no way to trust the controller: give --ca FILE, --ca-fingerprint sha256:HEX or --insecure"
            )
        }
    };
    crate::tls::split_addr(&args.controller)?;
    // Fail early on an unreadable CA file rather than in the reconnect loop.
    crate::tls::client_config(&trust)?;
    let mut config = AgentConfig::new(
        args.controller,
        trust,
        read_token(args.token_file.as_ref())?,
    );
    config.root = args.root;
    let methods = host_methods(&config.root, &args.allow_host, args.allow_host_power);
    let agent = Agent::new(config, methods, logs);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("stopping on signal");
            shutdown.cancel();
        }
    });
    agent.run(shutdown).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The ramdisk's session: one agent for the life of PID 1 (its tasks survive reconnects and
/// session restarts), configured from the kernel command line.
/// `logs` is the slot `init_main`'s logging setup fills before the first session starts.
type LogSlot = Arc<std::sync::Mutex<Option<Arc<LogBuffer>>>>;

fn ramdisk_session(
    logs: LogSlot,
) -> impl FnMut(crate::ramdisk::Boot) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    use futures::FutureExt;
    let agent: Arc<std::sync::Mutex<Option<Arc<Agent>>>> = Arc::default();
    move |boot: crate::ramdisk::Boot| {
        let logs = logs.clone();
        let agent = agent.clone();
        async move {
            let existing = agent.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let a = match existing {
                Some(a) => a,
                None => {
                    let s = &boot.settings;
                    let trust = match (s.ca_sha256, s.insecure) {
                        (Some(fp), _) => Trust::Fingerprint(fp),
                        (None, true) => Trust::Insecure,
                        (None, false) => bail!(
                            "no way to trust the controller: put molar.ca=sha256:HEX (from `molar serve`) \
                             or, in a lab only, molar.insecure=1 on the kernel command line"
                        ),
                    };
                    let mut config =
                        AgentConfig::new(s.controller.to_string(), trust, s.token.clone());
                    config.ramdisk = true;
                    // The session starts while drivers still load: hardware methods wait for
                    // coldplug through this gate, `status` shows the report once it exists.
                    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
                    let mut machine = crate::capabilities::Machine::ramdisk(config.root.clone());
                    machine.ready = crate::capabilities::HardwareReady::new(ready_rx);
                    let methods = crate::capabilities::methods(&machine);
                    let logs = logs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .unwrap_or_else(|| LogBuffer::new(crate::logfwd::DEFAULT_CAPACITY));
                    let a = Agent::new(config, methods, logs);
                    let mut modules = boot.modules.clone();
                    let report_to = a.clone();
                    tokio::spawn(async move {
                        if let Ok(r) = modules.wait_for(Option::is_some).await
                            && let Some(r) = r.as_ref()
                        {
                            report_to.set_modules(molar_protocol::methods::ModuleReport {
                                loaded: r.loaded.clone(),
                                failed: r.failed.clone(),
                                unmatched_aliases: r.unmatched_aliases,
                            });
                        }
                        let _ = ready_tx.send(true);
                    });
                    *agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(a.clone());
                    a
                }
            };
            a.run(CancellationToken::new()).await;
            Ok(())
        }
        .boxed()
    }
}

/// `/init` of the ramdisk (also `molar-agent init`): never returns when PID 1.
fn init() -> ExitCode {
    let logs: LogSlot = Arc::default();
    let install = {
        let logs = logs.clone();
        move |level: Option<&str>| {
            let level = level
                .and_then(|l| l.parse().ok())
                .unwrap_or(tracing::Level::INFO);
            *logs.lock().unwrap_or_else(|p| p.into_inner()) = Some(init_logging_to(level, false));
        }
    };
    let refused = crate::ramdisk::init_main(install, ramdisk_session(logs));
    eprintln!("molar-agent init: {refused}");
    ExitCode::FAILURE
}

/// Entry point of the `molar-agent` binary.
pub fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let first = args.next();
    if crate::ramdisk::is_init_invocation(&argv0)
        || first.as_deref() == Some(std::ffi::OsStr::new("init"))
    {
        return init();
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("molar-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Init => unreachable!("handled before argument parsing"),
            Command::Bmc {
                action,
                root,
                allow_host_power,
            } => match bmc_call(action) {
                Ok((method, params)) => call_local(root, method, params, allow_host_power).await,
                Err(e) => Err(e),
            },
            Command::Erase {
                devices,
                method,
                passes,
                no_verify,
                allow_host,
                yes,
                root,
            } => {
                erase_local(EraseArgs {
                    devices,
                    method,
                    passes,
                    verify: !no_verify,
                    allow_host,
                    yes,
                    root,
                })
                .await
            }
            Command::Image {
                action: ImageCommand::Write(args),
            } => image_write(args).await,
            Command::Configdrive {
                action: ConfigdriveCommand::Write(args),
            } => configdrive_local(args).await,
            Command::Inventory {
                root,
                spec_template: true,
            } => spec_template(root).await,
            Command::Inventory { root, .. } => match local_call::<InventoryGet>(&Empty {}) {
                Ok((method, params)) => call_local(root, method, params, false).await,
                Err(e) => Err(e),
            },
            Command::Qc {
                spec,
                burnin,
                allow_host,
                json,
                root,
            } => qc_local(&spec, burnin.as_deref(), &allow_host, json, root).await,
            Command::Call {
                method,
                params,
                root,
                allow_host_power,
            } => match serde_json::from_str(&params) {
                Ok(p) => call_local(root, &method, p, allow_host_power).await,
                Err(e) => Err(anyhow::anyhow!("params are not JSON: {e}")),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("molar-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line's definition, for its manual page and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local calls are a host like `run`: power only when the operator says so on the
    /// command line (a test that ran the real command would reboot the machine it runs on).
    #[test]
    fn local_power_needs_allow_host_power() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;
        assert!(matches!(
            parse(&["molar-agent", "call", "reboot"]),
            Command::Call {
                allow_host_power: false,
                ..
            }
        ));
        assert!(matches!(
            parse(&["molar-agent", "call", "reboot", "--allow-host-power"]),
            Command::Call {
                allow_host_power: true,
                ..
            }
        ));
        assert!(matches!(
            parse(&["molar-agent", "bmc", "power", "off"]),
            Command::Bmc {
                allow_host_power: false,
                ..
            }
        ));
        assert!(matches!(
            parse(&["molar-agent", "bmc", "--allow-host-power", "power", "off"]),
            Command::Bmc {
                allow_host_power: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn configdrive_write_needs_yes_and_a_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cd.json");
        let args = |from: &std::path::Path, yes: bool| {
            let mut v = vec!["molar-agent", "configdrive", "write", "--device", "loop9"];
            v.extend(["--from", from.to_str().unwrap(), "--root"]);
            v.push(dir.path().to_str().unwrap());
            if yes {
                v.push("--yes");
            }
            match Cli::try_parse_from(v).unwrap().command {
                Command::Configdrive {
                    action: ConfigdriveCommand::Write(a),
                } => a,
                other => panic!("{other:?}"),
            }
        };
        let e = configdrive_local(args(&file, false)).await.unwrap_err();
        assert!(e.to_string().contains("add --yes"), "{e}");
        std::fs::write(&file, "{\"meta_data\": ").unwrap();
        let e = configdrive_local(args(&file, true)).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("not a config_drive value"),
            "{e:#}"
        );
        std::fs::write(&file, r#"{"meta_data": {}, "userdata": "x"}"#).unwrap();
        let e = configdrive_local(args(&file, true)).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown field `userdata`"),
            "{e:#}"
        );
        // Valid, but the device was not named with --allow-host.
        std::fs::write(&file, r#"{"meta_data": {"uuid": "u"}}"#).unwrap();
        std::fs::create_dir_all(dir.path().join("sys/block")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::write(dir.path().join("proc/self/mountinfo"), "").unwrap();
        let e = configdrive_local(args(&file, true)).await.unwrap_err();
        assert!(e.to_string().contains("(not_found)"), "{e}");
    }

    #[tokio::test]
    async fn a_local_reboot_without_the_flag_is_refused_before_anything_happens() {
        let root = tempfile::tempdir().unwrap();
        let err = call_local(
            root.path().to_owned(),
            "reboot",
            serde_json::json!({}),
            false,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("reboot refused"), "{err}");
        let err = call_local(
            root.path().to_owned(),
            "chassis.power",
            serde_json::json!({"action": "off"}),
            false,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("chassis.power off refused"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn qc_of_the_fixture_machine_against_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/inventory/qemu-q35");
        let inv = local_inventory(root).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spec.json");
        let template = molar_protocol::qc::template(&inv);
        std::fs::write(&file, serde_json::to_vec(&template).unwrap()).unwrap();
        let spec = read_spec(&file).unwrap();
        let report = molar_protocol::qc::check(&spec, &inv);
        assert!(report.passed, "{:?}", report.failures);
        assert!(qc_table(&report).ends_with(&format!("passed: {} checks\n", report.checks.len())));

        std::fs::write(
            &file,
            br#"{"cpu": {"model": "Evil*"}, "bmc": {"present": true}}"#,
        )
        .unwrap();
        let mut report = molar_protocol::qc::check(&read_spec(&file).unwrap(), &inv);
        report.checks[0].actual = "\u{1b}[2J".into();
        let table = qc_table(&report);
        assert!(table.contains("FAIL  bmc.present"), "{table}");
        assert!(
            table.contains("\\u{1b}[2J") && !table.contains('\u{1b}'),
            "{table}"
        );
        assert!(table.ends_with("FAILED: 2 of 2 checks\n"), "{table}");

        for (text, want) in [
            (&br#"{"cpus": {}}"#[..], "not a valid spec"),
            (br#"{}"#, "checks nothing"),
            (br#"not json"#, "not a valid spec"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = format!("{:#}", read_spec(&file).unwrap_err());
            assert!(e.contains(want), "{e}");
        }
        std::fs::write(&file, vec![b' '; (MAX_SPEC_BYTES + 1) as usize]).unwrap();
        assert!(format!("{}", read_spec(&file).unwrap_err()).contains("larger than"));
        assert!(read_spec(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn burnin_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("burnin.json");
        std::fs::write(&file, br#"{"cpu": {"seconds": 2}}"#).unwrap();
        assert_eq!(read_burnin(&file).unwrap().cpu.unwrap().seconds, 2);
        for (text, want) in [
            (&br#"{"cpu": {"secs": 2}}"#[..], "unknown field `secs`"),
            (
                br#"{"cpu": {"seconds": 0}}"#,
                "burnin.cpu.seconds: 0 is outside",
            ),
            (br#"{}"#, "exercises nothing"),
            (br#"[1]"#, "are not valid"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = format!("{:#}", read_burnin(&file).unwrap_err());
            assert!(e.contains(want), "{e}");
        }
        std::fs::write(&file, vec![b' '; (MAX_SPEC_BYTES + 1) as usize]).unwrap();
        let e = read_burnin(&file).unwrap_err().to_string();
        assert!(
            e.contains("burn-in settings") && e.contains("larger than"),
            "{e}"
        );
    }
}
