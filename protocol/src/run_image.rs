//! Wire types of `standbye.run_image`: write the config drive, set up booting from the disk,
//! then kexec into the written image or reboot into it.
//!
//! The params deny unknown fields (they name the disk the machine will boot); the result
//! tolerates them, so a controller understands an agent one release newer.

use crate::bmc::BootDeviceResult;
use crate::configdrive::{ConfigDrive, ConfigDriveFormat, ConfigDriveOutcome};
use serde::{Deserialize, Serialize};

/// Params of `standbye.run_image` (without the engine's `task_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunImageParams {
    /// The image `standbye.prepare_image` wrote to `device`: the agent refuses a device that
    /// does not hold it.
    pub image_id: String,
    /// The disk holding the image (`/dev/nvme0n1`, `nvme0n1`, a `/dev/disk/by-id/` link).
    pub device: String,
    /// Written to a `config-2` partition at the end of the disk before booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<ConfigDrive>,
    /// Filesystem of the config drive; absent means vfat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive_format: Option<ConfigDriveFormat>,
    /// Appended to the command line the image's boot entry gives its kernel (kexec only: a
    /// reboot runs the image's own loader, which knows nothing of them). At most
    /// [`MAX_KERNEL_ARGS_BYTES`], no control characters.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "kernel_args"
    )]
    pub kernel_args: Option<String>,
    /// How to start the image; absent means `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootMode>,
}

/// The kernel's command line buffer on x86 (`COMMAND_LINE_SIZE` in Debian 12's 6.1 kernel,
/// `arch/x86/include/asm/setup.h`), its terminating NUL included: the whole line the agent
/// hands `kexec_file_load`, the image's own arguments and `kernel_args`, must fit.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// The longest `kernel_args`: more could never fit in [`COMMAND_LINE_SIZE`].
pub const MAX_KERNEL_ARGS_BYTES: usize = COMMAND_LINE_SIZE - 1;

/// Why `kernel_args` is refused, if it is: too long, or a control character (a NUL would cut
/// the line, a newline or escape is no kernel argument).
pub fn check_kernel_args(args: &str) -> Result<(), String> {
    if args.len() > MAX_KERNEL_ARGS_BYTES {
        return Err(format!(
            "kernel_args of {} bytes (at most {MAX_KERNEL_ARGS_BYTES})",
            args.len()
        ));
    }
    if let Some((at, c)) = args.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "kernel_args holds the control character {:?} at byte {at}",
            c
        ));
    }
    Ok(())
}

fn kernel_args<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let args: Option<String> = Option::deserialize(d)?;
    if let Some(a) = &args {
        check_kernel_args(a).map_err(serde::de::Error::custom)?;
    }
    Ok(args)
}

/// How `standbye.run_image` starts the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// kexec when the image's kernel is found and loads, else reboot (the reason reported).
    #[default]
    Auto,
    /// kexec or fail: the task errors when kexec is not viable, and the machine stays up.
    Kexec,
    /// Reboot through the firmware, whatever kexec could do.
    Reboot,
}

/// How the machine was started into the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMethod {
    Kexec,
    Reboot,
}

/// The `complete` result of `standbye.run_image`, sent (and acknowledged) before the jump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunImageResult {
    pub image_id: String,
    /// The device as the agent resolved it (`/dev/nvme0n1`).
    pub device: String,
    pub boot: BootMethod,
    /// Why not kexec, when rebooting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the kernel was found, as a path on the image (`/boot/vmlinuz-6.1.0-13-amd64`
    /// on partition 1); absent when none was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Vec<String>>,
    /// The command line the kernel is (or would be) started with, `kernel_args` included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Which entry gave the kernel: `bls`, `grub`, `symlinks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_source: Option<String>,
    /// The config drive written (absent when none was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<ConfigDriveOutcome>,
    /// The UEFI boot entry created or updated (absent on BIOS machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_entry: Option<BootEntryReport>,
    /// The next boot device set through the local BMC (absent without a BMC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_next_boot: Option<BootDeviceResult>,
    /// What went wrong on the way without stopping it (no BMC answer, a boot order left as
    /// it was...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The UEFI boot entry pointing at the image's loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEntryReport {
    /// `Boot0003`.
    pub name: String,
    pub description: String,
    /// The loader on the ESP, as firmware spells it (`\EFI\debian\shimx64.efi`).
    pub loader: String,
    /// The ESP's partition number.
    pub partition: u32,
    /// An entry for the same loader existed and was rewritten.
    pub updated: bool,
    /// BootOrder afterwards, entry first (`["0003", "0001"]`).
    pub boot_order: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_decode_with_defaults_and_refuse_unknown_fields() {
        let p: RunImageParams =
            serde_json::from_value(json!({"image_id": "debian-12", "device": "/dev/nvme0n1"}))
                .unwrap();
        assert_eq!(p.boot, None);
        assert_eq!(p.boot.unwrap_or_default(), BootMode::Auto);
        let p: RunImageParams = serde_json::from_value(json!({"image_id": "i",
            "device": "sda", "boot": "kexec", "kernel_args": "console=ttyS0"}))
        .unwrap();
        assert_eq!(p.boot, Some(BootMode::Kexec));
        let e = serde_json::from_value::<RunImageParams>(
            json!({"image_id": "i", "device": "sda", "devices": ["sdb"]}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `devices`"), "{e}");
        let e = serde_json::from_value::<RunImageParams>(json!({"image_id": "i", "device": "sda",
            "boot": "pxe"}))
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `pxe`"), "{e}");
    }

    #[test]
    fn kernel_args_are_bounded_and_free_of_control_characters() {
        let decode = |args: &str| {
            serde_json::from_value::<RunImageParams>(
                json!({"image_id": "i", "device": "sda", "kernel_args": args}),
            )
        };
        let longest = "a".repeat(MAX_KERNEL_ARGS_BYTES);
        assert_eq!(decode(&longest).unwrap().kernel_args.unwrap(), longest);
        let e = decode(&format!("{longest}b")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("kernel_args of 2048 bytes (at most 2047)"),
            "{e}"
        );
        for (args, want) in [
            ("console=ttyS0\0init=/bin/sh", "'\\0' at byte 13"),
            ("a\nb", "'\\n' at byte 1"),
            ("a\u{1b}[2J", "'\\u{1b}' at byte 1"),
        ] {
            let e = decode(args).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("kernel_args holds the control character {want}")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_result_round_trips() {
        let r = RunImageResult {
            image_id: "i".into(),
            device: "/dev/vda".into(),
            boot: BootMethod::Reboot,
            reason: Some("no kernel found".into()),
            kernel: None,
            initrd: None,
            cmdline: None,
            entry_source: None,
            config_drive: None,
            boot_entry: Some(BootEntryReport {
                name: "Boot0003".into(),
                description: "debian".into(),
                loader: "\\EFI\\debian\\shimx64.efi".into(),
                partition: 1,
                updated: false,
                boot_order: vec!["0003".into(), "0001".into()],
            }),
            bmc_next_boot: None,
            notes: vec![],
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["boot"], "reboot");
        assert_eq!(serde_json::from_value::<RunImageResult>(v).unwrap(), r);
    }
}
