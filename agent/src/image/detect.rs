//! What an image file is, from its first bytes: the compression around it (gzip, zstd, xz)
//! and, once decompressed, its format (qcow2 or raw). A declared compression or format that
//! disagrees with what the bytes say is refused: writing a qcow2 file to a disk as if it were
//! raw leaves an unbootable machine and a checksum that matched.

use molar_protocol::image::{Compression, DiskFormat};
use std::io::{self, Read};

/// Bytes of the file looked at to tell what it is.
pub const MAGIC_LEN: usize = 8;

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const QCOW2: &[u8] = b"QFI\xfb";
const BZIP2: &[u8] = b"BZh";

/// Why the bytes and the declaration disagree, or the file cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    #[error("declared {what} {declared} but the image's bytes say {detected}")]
    Mismatch {
        what: &'static str,
        declared: &'static str,
        detected: &'static str,
    },
    #[error("the image is {0}-compressed, which molar does not decompress (gzip, zstd, xz)")]
    Unsupported(&'static str),
}

/// The outer compression of a file starting with `head`.
pub fn compression(head: &[u8]) -> Result<Compression, DetectError> {
    if head.starts_with(GZIP) {
        Ok(Compression::Gzip)
    } else if head.starts_with(ZSTD) {
        Ok(Compression::Zstd)
    } else if head.starts_with(XZ) {
        Ok(Compression::Xz)
    } else if head.starts_with(BZIP2) && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
        Err(DetectError::Unsupported("bzip2"))
    } else {
        Ok(Compression::None)
    }
}

/// The format of a (decompressed) disk image starting with `head`.
pub fn format(head: &[u8]) -> DiskFormat {
    if head.starts_with(QCOW2) {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    }
}

/// `detected`, unless a declaration says otherwise.
pub fn agree<T: Copy + PartialEq>(
    what: &'static str,
    declared: Option<T>,
    detected: T,
    name: fn(T) -> &'static str,
) -> Result<T, DetectError> {
    match declared {
        Some(d) if d != detected => Err(DetectError::Mismatch {
            what,
            declared: name(d),
            detected: name(detected),
        }),
        _ => Ok(detected),
    }
}

/// Reads up to `n` bytes from `r` (fewer only at its end), to look at before the rest.
pub fn peek(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok(head)
}

/// A decompressing reader over `inner` (which still starts at the file's first byte).
/// Concatenated gzip members and xz streams are read as one, like `zcat`/`xzcat`.
pub fn decompressor<'a>(
    c: Compression,
    inner: Box<dyn Read + Send + 'a>,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match c {
        Compression::None => inner,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(inner)?;
            // Images made with `zstd --long` use up to 128 MiB windows; more is refused.
            d.window_log_max(27)?;
            Box::new(d)
        }
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(inner)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(compression(&[0x1f, 0x8b, 8, 0]).unwrap(), Compression::Gzip);
        assert_eq!(
            compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(compression(b"\xfd7zXZ\x00\x00").unwrap(), Compression::Xz);
        assert_eq!(
            compression(b"QFI\xfb\0\0\0\x03").unwrap(),
            Compression::None
        );
        assert_eq!(compression(b"").unwrap(), Compression::None);
        assert_eq!(compression(b"\x1f").unwrap(), Compression::None);
        assert!(compression(b"BZh91AY&").is_err());
        assert_eq!(format(b"QFI\xfb\0\0\0\x03"), DiskFormat::Qcow2);
        assert_eq!(format(b"\xeb\x63\x90"), DiskFormat::Raw);
        let e = agree(
            "format",
            Some(DiskFormat::Raw),
            DiskFormat::Qcow2,
            DiskFormat::as_str,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "declared format raw but the image's bytes say qcow2"
        );
        assert_eq!(
            agree("format", None, DiskFormat::Qcow2, DiskFormat::as_str).unwrap(),
            DiskFormat::Qcow2
        );
    }
}
