//! Firmware boot mode: UEFI when the kernel exposes `/sys/firmware/efi`, BIOS otherwise; the
//! Secure Boot state from the `SecureBoot` EFI global variable.

use molar_protocol::inventory::{Boot, BootMode};

use super::Ctx;

const EFI_DIR: &str = "/sys/firmware/efi";
const SECURE_BOOT_VAR: &str =
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

pub(crate) fn collect(ctx: &mut Ctx) -> Boot {
    if !ctx.exists(EFI_DIR) {
        return Boot {
            mode: BootMode::Bios,
            secure_boot: None,
        };
    }
    // efivarfs files are a 4-byte attribute word followed by the variable's data: one byte,
    // 1 when Secure Boot is enforcing. A machine without the variable has no Secure Boot.
    let secure_boot = if !ctx.exists(SECURE_BOOT_VAR) {
        if !ctx.exists(&format!("{EFI_DIR}/efivars")) {
            ctx.note(
                &format!("{EFI_DIR}/efivars"),
                "efivarfs not mounted: secure boot state unknown",
            );
            None
        } else {
            Some(false)
        }
    } else {
        match ctx.read_bytes_required(SECURE_BOOT_VAR) {
            Some(bytes) if bytes.len() >= 5 => Some(bytes[4] == 1),
            Some(bytes) => {
                ctx.note(
                    SECURE_BOOT_VAR,
                    format!("{} bytes, expected attributes and a value", bytes.len()),
                );
                None
            }
            None => None,
        }
    };
    Boot {
        mode: BootMode::Uefi,
        secure_boot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn bios_without_efi_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ctx = Ctx::new(dir.path());
        assert_eq!(
            collect(&mut ctx),
            Boot {
                mode: BootMode::Bios,
                secure_boot: None
            }
        );
        assert!(ctx.notes.is_empty());
    }

    #[test]
    fn uefi_with_and_without_secure_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let var = dir.path().join(SECURE_BOOT_VAR.trim_start_matches('/'));
        fs::create_dir_all(var.parent().expect("parent")).expect("mkdir");
        let mut ctx = Ctx::new(dir.path());
        assert_eq!(
            collect(&mut ctx).secure_boot,
            Some(false),
            "no variable: off"
        );

        fs::write(&var, [6, 0, 0, 0, 1]).expect("write");
        assert_eq!(
            collect(&mut ctx),
            Boot {
                mode: BootMode::Uefi,
                secure_boot: Some(true)
            }
        );
        fs::write(&var, [6, 0, 0, 0, 0]).expect("write");
        assert_eq!(collect(&mut ctx).secure_boot, Some(false));
        assert!(ctx.notes.is_empty());

        fs::write(&var, [6, 0]).expect("write");
        assert_eq!(collect(&mut ctx).secure_boot, None);
        assert_eq!(ctx.notes.len(), 1);
    }

    #[test]
    fn uefi_without_efivarfs_is_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("sys/firmware/efi")).expect("mkdir");
        let mut ctx = Ctx::new(dir.path());
        let boot = collect(&mut ctx);
        assert_eq!(
            boot,
            Boot {
                mode: BootMode::Uefi,
                secure_boot: None
            }
        );
        assert_eq!(ctx.notes.len(), 1);
    }
}
