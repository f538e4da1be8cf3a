//! Extracts the uncompressed `vmlinux` ELF from an x86 bzImage. QEMU boots that ELF through
//! its PVH entry point without running the in-kernel decompressor, which under TCG halves the
//! time from QEMU start to `/init` (measured: about 4 s instead of 9 s). Real servers keep
//! booting the bzImage.

use std::io::Read;

use thiserror::Error;

/// Why a kernel image could not be unpacked.
#[derive(Debug, Error)]
pub enum BzImageError {
    #[error("not an x86 bzImage: {0}")]
    NotBzImage(&'static str),
    #[error("unsupported bzImage payload compression (magic {0})")]
    UnsupportedPayload(String),
    #[error("decompressing the bzImage payload: {0}")]
    Decompress(std::io::Error),
    #[error("the bzImage payload is not an ELF vmlinux")]
    NotElf,
}

impl BzImageError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            BzImageError::NotBzImage(_) => "not_bzimage",
            BzImageError::UnsupportedPayload(_) => "bzimage_payload_unsupported",
            BzImageError::Decompress(_) => "bzimage_decompress_failed",
            BzImageError::NotElf => "bzimage_payload_not_elf",
        }
    }
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The payload (compressed vmlinux) of a bzImage, located through the boot protocol header
/// (`setup_sects`, `payload_offset`, `payload_length`; boot protocol ≥ 2.08).
pub fn payload(image: &[u8]) -> Result<&[u8], BzImageError> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(BzImageError::NotBzImage("no HdrS boot header"));
    }
    let version = image
        .get(0x206..0x208)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .unwrap_or(0);
    if version < 0x0208 {
        return Err(BzImageError::NotBzImage("boot protocol older than 2.08"));
    }
    let setup_sects = match image.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => return Err(BzImageError::NotBzImage("truncated header")),
    };
    let (Some(offset), Some(length)) = (le32(image, 0x248), le32(image, 0x24c)) else {
        return Err(BzImageError::NotBzImage("truncated header"));
    };
    let start = (setup_sects + 1) * 512 + offset as usize;
    image
        .get(start..start + length as usize)
        .ok_or(BzImageError::NotBzImage("payload outside the file"))
}

fn xz_single_stream(input: &[u8]) -> std::io::Result<Vec<u8>> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(std::io::Error::other)?;
    let mut out: Vec<u8> = Vec::with_capacity(input.len() * 4);
    loop {
        if out.capacity() - out.len() < (1 << 20) {
            out.reserve(out.capacity().max(1 << 20));
        }
        let consumed = stream.total_in() as usize;
        let rest = input.get(consumed..).unwrap_or_default();
        let action = if rest.is_empty() {
            Action::Finish
        } else {
            Action::Run
        };
        let before = (stream.total_in(), stream.total_out());
        match stream
            .process_vec(rest, &mut out, action)
            .map_err(std::io::Error::other)?
        {
            Status::StreamEnd => return Ok(out),
            Status::Ok | Status::GetCheck | Status::MemNeeded => {}
        }
        if (stream.total_in(), stream.total_out()) == before && out.len() < out.capacity() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "truncated xz stream",
            ));
        }
    }
}

/// The uncompressed `vmlinux` ELF inside `image`.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let p = payload(image)?;
    let mut out = Vec::new();
    if p.starts_with(b"\xfd7zXZ\x00") {
        // One xz stream followed by the 4-byte size the kernel build appends: decode up
        // to the stream's end and ignore the rest.
        out = xz_single_stream(p).map_err(BzImageError::Decompress)?;
    } else if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut d = zstd::stream::read::Decoder::new(p)
            .map_err(BzImageError::Decompress)?
            .single_frame();
        d.read_to_end(&mut out).map_err(BzImageError::Decompress)?;
    } else if p.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(p)
            .read_to_end(&mut out)
            .map_err(BzImageError::Decompress)?;
    } else {
        let magic: String = p.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(BzImageError::UnsupportedPayload(magic));
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(BzImageError::NotElf);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A bzImage-shaped file: boot header, one setup sector, an xz payload plus size trailer.
    pub fn fake_bzimage(vmlinux: &[u8]) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(vmlinux).unwrap();
        let mut payload = e.finish().unwrap();
        let compressed_len = payload.len();
        payload.extend_from_slice(&(vmlinux.len() as u32).to_le_bytes());
        let mut img = vec![0u8; 2 * 512 + 64];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&64u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(compressed_len as u32 + 4).to_le_bytes());
        img.extend_from_slice(&payload);
        img
    }

    #[test]
    fn extracts_the_elf_payload() {
        let elf = crate::elf::synth::executable(false);
        assert_eq!(extract_vmlinux(&fake_bzimage(&elf)).unwrap(), elf);
    }

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert_eq!(
            extract_vmlinux(b"bzImage").unwrap_err().code(),
            "not_bzimage"
        );
        let mut img = fake_bzimage(b"not an elf at all");
        assert_eq!(
            extract_vmlinux(&img).unwrap_err().code(),
            "bzimage_payload_not_elf"
        );
        let start = 2 * 512 + 64;
        img[start] = 0;
        assert_eq!(
            extract_vmlinux(&img).unwrap_err().code(),
            "bzimage_payload_unsupported"
        );
    }
}
