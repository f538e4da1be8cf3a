//! The unified kernel image: systemd's EFI stub (`linuxx64.efi.stub`, Debian's
//! `systemd-boot-efi`) with the kernel, initramfs, command line, os-release and kernel
//! version appended as the PE sections the stub looks for, as `ukify` lays them out.
//! Firmware that starts it runs the stub, which boots `.linux` with `.initrd` and
//! `.cmdline`; nothing else is needed on the boot medium.

use crate::pe::{self, PeError};

/// Where Debian's `systemd-boot-efi` installs the x86-64 stub.
pub const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// What goes into a unified kernel image.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    /// The kernel command line (never the token: the kernel prints it).
    pub cmdline: &'a str,
    /// The kernel release (`uname -r`), for `.uname` and the os-release name.
    pub kernel_version: &'a str,
    /// The bzImage (`vmlinuz`).
    pub linux: &'a [u8],
    pub initrd: &'a [u8],
}

/// The `.osrel` text: what boot menus show for the image.
pub fn os_release(kernel_version: &str) -> String {
    format!(
        "ID=molar\nNAME=\"molar ramdisk\"\nVERSION_ID={}\nPRETTY_NAME=\"molar ramdisk {} ({kernel_version})\"\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_VERSION"),
    )
}

/// Appends the parts to `stub`, in ukify's order (the large `.linux` last but one).
pub fn build(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>, PeError> {
    let osrel = os_release(parts.kernel_version);
    pe::append_sections(
        stub,
        &[
            (".osrel", osrel.as_bytes()),
            (".cmdline", parts.cmdline.as_bytes()),
            (".uname", parts.kernel_version.as_bytes()),
            (".initrd", parts.initrd),
            (".linux", parts.linux),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pe::tests::synthetic;

    #[test]
    fn carries_every_part_as_its_section() {
        let stub = synthetic(0x400);
        let uki = build(
            &stub,
            &UkiParts {
                cmdline: "console=ttyS0 molar.controller=h:1",
                kernel_version: "6.1.0-test",
                linux: b"MZkernel",
                initrd: b"070701",
            },
        )
        .unwrap();
        let h = pe::parse(&uki).unwrap();
        let names: Vec<&str> = h.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
        let get = |n| pe::section_data(&uki, &h, n).unwrap();
        assert_eq!(get(".cmdline"), b"console=ttyS0 molar.controller=h:1");
        assert_eq!(get(".uname"), b"6.1.0-test");
        assert_eq!(get(".linux"), b"MZkernel");
        assert_eq!(get(".initrd"), b"070701");
        assert!(String::from_utf8_lossy(get(".osrel")).starts_with("ID=molar\n"));
    }
}
