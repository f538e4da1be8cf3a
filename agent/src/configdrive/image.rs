//! A ready config drive image (`ConfigDrive::Image`): base64, usually of gzip, decoded with a
//! bound on every stage so a hostile param cannot exhaust the ramdisk's memory (a gzip bomb
//! stops at [`MAX_CONFIG_DRIVE_BYTES`] + 1 bytes), then checked to be a vfat or ISO 9660
//! filesystem labelled `config-2` before anything is written.

use super::ConfigDriveError;
use base64::Engine as _;
use molar_protocol::configdrive::{ConfigDriveFormat, MAX_CONFIG_DRIVE_BYTES};
use std::io::Read;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn bad(reason: impl Into<String>) -> ConfigDriveError {
    ConfigDriveError::BadImage {
        reason: reason.into(),
    }
}

/// Decodes the image: base64 (whitespace, as `base64` wraps lines, is ignored), then
/// [`unpack`].
pub(super) fn decode(text: &str) -> Result<Vec<u8>, ConfigDriveError> {
    let compact: String;
    let text = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        &compact
    } else {
        text
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| bad(format!("not base64: {e}")))?;
    unpack(raw)
}

/// Gunzips the bytes when they are gzip (the reference family's form), else takes them as
/// they are; either way at most [`MAX_CONFIG_DRIVE_BYTES`].
pub(super) fn unpack(raw: Vec<u8>) -> Result<Vec<u8>, ConfigDriveError> {
    if raw.get(..2) != Some(&GZIP_MAGIC[..]) {
        if raw.len() as u64 > MAX_CONFIG_DRIVE_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_CONFIG_DRIVE_BYTES} allowed",
                raw.len()
            )));
        }
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .take(MAX_CONFIG_DRIVE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("gzip: {e}")))?;
    if out.len() as u64 > MAX_CONFIG_DRIVE_BYTES {
        return Err(bad(format!(
            "decompresses to more than the {MAX_CONFIG_DRIVE_BYTES} bytes allowed"
        )));
    }
    Ok(out)
}

/// The filesystem of a config drive image or partition: vfat or ISO 9660 labelled
/// `config-2` (either case: FAT tools upper-case labels), else `None`.
pub(super) fn config_drive_format<R: std::io::Read + std::io::Seek>(
    dev: &mut R,
    len: u64,
) -> std::io::Result<Option<ConfigDriveFormat>> {
    let sigs = crate::inventory::fssig::probe(dev, len)?;
    Ok(sigs.iter().find_map(|s| {
        let labelled = s
            .label
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case("config-2"));
        match s.kind {
            "vfat" if labelled => Some(ConfigDriveFormat::Vfat),
            "iso9660" if labelled => Some(ConfigDriveFormat::Iso9660),
            _ => None,
        }
    }))
}

/// Checks a ready image's bytes (decoded, unpacked); returns them with their filesystem.
pub(super) fn check(bytes: Vec<u8>) -> Result<(Vec<u8>, ConfigDriveFormat), ConfigDriveError> {
    let mut cur = std::io::Cursor::new(bytes.as_slice());
    match config_drive_format(&mut cur, bytes.len() as u64) {
        Ok(Some(format)) => Ok((bytes, format)),
        Ok(None) => Err(bad("not a vfat or iso9660 filesystem labelled config-2")),
        Err(e) => Err(bad(format!("reading it: {e}"))),
    }
}
