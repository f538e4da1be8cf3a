//! The capsule file, checked before anything is staged (UEFI 2.10, 8.5.3 and 23.3):
//! `EFI_CAPSULE_HEADER` {CapsuleGuid, HeaderSize, Flags, CapsuleImageSize} whose image size
//! is the file's length and whose header lies inside it, the reset flags consistent, and —
//! for a component found in the ESRT — the capsule addressed to that entry's firmware class:
//! either directly (CapsuleGuid is the FwClass GUID) or as an FMP capsule
//! (CapsuleGuid is `EFI_FIRMWARE_MANAGEMENT_CAPSULE_ID_GUID`) one of whose payloads'
//! `UpdateImageTypeId` is the FwClass GUID (an FMP device's ESRT entry carries its image type
//! id as its FwClass, 23.4).

use crate::boot::table::guid_text;

/// `EFI_CAPSULE_HEADER`: GUID, three u32.
pub const HEADER_LEN: usize = 28;
/// `EFI_FIRMWARE_MANAGEMENT_CAPSULE_ID_GUID`.
pub const FMP_CAPSULE_GUID: &str = "6dcbd5ed-e82d-4c44-bda1-7194199ad92a";
/// The firmware keeps the capsule in memory across the reset (required for the other two).
pub const FLAG_PERSIST_ACROSS_RESET: u32 = 0x0001_0000;
pub const FLAG_POPULATE_SYSTEM_TABLE: u32 = 0x0002_0000;
pub const FLAG_INITIATE_RESET: u32 = 0x0004_0000;
/// Payload items of an FMP capsule read at most (the spec has no limit; a u16 count).
const MAX_FMP_ITEMS: usize = 256;
/// `EFI_FIRMWARE_MANAGEMENT_CAPSULE_HEADER` without its offset list: Version,
/// EmbeddedDriverCount, PayloadItemCount.
const FMP_HEADER_LEN: usize = 8;
/// `EFI_FIRMWARE_MANAGEMENT_CAPSULE_IMAGE_HEADER` up to UpdateImageTypeId (version 1 and on).
const FMP_IMAGE_HEADER_MIN: usize = 4 + 16;

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// CapsuleGuid, lowercase text.
    pub guid: String,
    pub header_size: u32,
    pub flags: u32,
    pub image_size: u32,
    /// For an FMP capsule, every payload's UpdateImageTypeId; empty otherwise.
    pub fmp_image_types: Vec<String>,
}

impl Capsule {
    pub fn is_fmp(&self) -> bool {
        self.guid == FMP_CAPSULE_GUID
    }

    /// Whether the capsule is for the firmware class `fw_class` (an ESRT entry's GUID).
    pub fn targets(&self, fw_class: &str) -> bool {
        let want = fw_class.trim().to_ascii_lowercase();
        if self.is_fmp() {
            self.fmp_image_types.contains(&want)
        } else {
            self.guid == want
        }
    }

    /// What it addresses, for errors: the capsule GUID or the FMP image type ids.
    pub fn addressed(&self) -> String {
        if self.is_fmp() {
            format!(
                "an FMP capsule for image type(s) {}",
                self.fmp_image_types.join(", ")
            )
        } else {
            format!("capsule GUID {}", self.guid)
        }
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn guid_at(b: &[u8], o: usize) -> String {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[o..o + 16]);
    guid_text(&g)
}

/// Parses and checks a whole capsule file; the error says what is wrong with it.
pub fn parse(file: &[u8]) -> Result<Capsule, String> {
    if file.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes is too short for a capsule (EFI_CAPSULE_HEADER is {HEADER_LEN})",
            file.len()
        ));
    }
    let c = Capsule {
        guid: guid_at(file, 0),
        header_size: u32_at(file, 16),
        flags: u32_at(file, 20),
        image_size: u32_at(file, 24),
        fmp_image_types: Vec::new(),
    };
    if c.image_size as u64 != file.len() as u64 {
        return Err(format!(
            "CapsuleImageSize is {} but the file has {} bytes",
            c.image_size,
            file.len()
        ));
    }
    if (c.header_size as usize) < HEADER_LEN || c.header_size > c.image_size {
        return Err(format!(
            "HeaderSize {} is not between {HEADER_LEN} and the image size {}",
            c.header_size, c.image_size
        ));
    }
    if c.flags & (FLAG_POPULATE_SYSTEM_TABLE | FLAG_INITIATE_RESET) != 0
        && c.flags & FLAG_PERSIST_ACROSS_RESET == 0
    {
        return Err(format!(
            "Flags {:#x} ask for POPULATE_SYSTEM_TABLE or INITIATE_RESET without \
             PERSIST_ACROSS_RESET",
            c.flags
        ));
    }
    if c.guid.chars().all(|ch| ch == '0' || ch == '-') {
        return Err("CapsuleGuid is all zeroes: not a capsule".into());
    }
    let fmp_image_types = if c.guid == FMP_CAPSULE_GUID {
        fmp_payloads(&file[c.header_size as usize..])?
    } else {
        Vec::new()
    };
    Ok(Capsule {
        fmp_image_types,
        ..c
    })
}

/// The UpdateImageTypeIds of an FMP capsule's body (what follows the capsule header): the
/// item offsets are from the body's start, each item's header must fit in the body.
fn fmp_payloads(body: &[u8]) -> Result<Vec<String>, String> {
    let bad = |why: String| format!("FMP capsule: {why}");
    if body.len() < FMP_HEADER_LEN {
        return Err(bad(format!(
            "the body has {} bytes, less than its {FMP_HEADER_LEN}-byte header",
            body.len()
        )));
    }
    let version = u32_at(body, 0);
    if version != 1 {
        return Err(bad(format!("header version {version}, expected 1")));
    }
    let drivers = u16::from_le_bytes([body[4], body[5]]) as usize;
    let payloads = u16::from_le_bytes([body[6], body[7]]) as usize;
    if payloads == 0 {
        return Err(bad("no payload items".into()));
    }
    if drivers + payloads > MAX_FMP_ITEMS {
        return Err(bad(format!(
            "{drivers} drivers and {payloads} payloads, at most {MAX_FMP_ITEMS} items are read"
        )));
    }
    let list_end = FMP_HEADER_LEN + 8 * (drivers + payloads);
    if body.len() < list_end {
        return Err(bad(format!(
            "the item offset list ends at {list_end}, past the body's {} bytes",
            body.len()
        )));
    }
    let mut types = Vec::with_capacity(payloads);
    for i in drivers..drivers + payloads {
        let o = FMP_HEADER_LEN + 8 * i;
        let off = u64::from_le_bytes(body[o..o + 8].try_into().unwrap_or([0; 8]));
        let fits = off >= list_end as u64
            && off
                .checked_add(FMP_IMAGE_HEADER_MIN as u64)
                .is_some_and(|end| end <= body.len() as u64);
        if !fits {
            return Err(bad(format!(
                "payload {} at offset {off} is outside the body's {} bytes",
                i - drivers,
                body.len()
            )));
        }
        let off = off as usize;
        let v = u32_at(body, off);
        if !(1..=3).contains(&v) {
            return Err(bad(format!(
                "payload {} has image header version {v}, expected 1 to 3",
                i - drivers
            )));
        }
        types.push(guid_at(body, off + 4));
    }
    Ok(types)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::boot::table::tests::guid_bytes;

    /// A capsule of `total` bytes (at least the header) with the given GUID, header size
    /// and flags; the rest zeroes.
    pub(crate) fn capsule(guid: &str, header_size: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut c = vec![0u8; header_size.max(HEADER_LEN as u32) as usize];
        c[..16].copy_from_slice(&guid_bytes(guid));
        c[16..20].copy_from_slice(&header_size.to_le_bytes());
        c[20..24].copy_from_slice(&flags.to_le_bytes());
        c.extend_from_slice(body);
        let len = c.len() as u32;
        c[24..28].copy_from_slice(&len.to_le_bytes());
        c
    }

    /// An FMP capsule body with one payload of image type `image_type`.
    pub(crate) fn fmp_body(image_type: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&16u64.to_le_bytes());
        // EFI_FIRMWARE_MANAGEMENT_CAPSULE_IMAGE_HEADER version 2 with a 4-byte image.
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&guid_bytes(image_type));
        b.extend_from_slice(&[1, 0, 0, 0]);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(b"FWFW");
        b
    }

    const CLASS: &str = "aabbccdd-0000-1111-2222-333344445555";

    #[test]
    fn a_plain_capsule_is_read_and_addressed_by_its_guid() {
        let f = capsule(CLASS, 32, FLAG_PERSIST_ACROSS_RESET, b"image");
        let c = parse(&f).unwrap();
        assert_eq!(c.guid, CLASS);
        assert_eq!((c.header_size, c.flags, c.image_size), (32, 0x10000, 37));
        assert!(!c.is_fmp());
        assert!(c.targets("AABBCCDD-0000-1111-2222-333344445555"));
        assert!(!c.targets(FMP_CAPSULE_GUID));
    }

    #[test]
    fn an_fmp_capsule_is_addressed_by_its_payloads_image_type() {
        let f = capsule(FMP_CAPSULE_GUID, 32, 0x50000, &fmp_body(CLASS));
        let c = parse(&f).unwrap();
        assert!(c.is_fmp());
        assert_eq!(c.fmp_image_types, [CLASS]);
        assert!(c.targets(CLASS));
        assert!(!c.targets(FMP_CAPSULE_GUID), "the FMP GUID is no FwClass");
        assert!(c.addressed().contains(CLASS));
    }

    #[test]
    fn truncated_mis_sized_and_hostile_headers_are_refused() {
        let good = capsule(CLASS, 28, 0, b"xy");
        let e = parse(&good[..20]).unwrap_err();
        assert!(e.contains("too short"), "{e}");
        // One byte cut off the end: the size no longer matches.
        let e = parse(&good[..good.len() - 1]).unwrap_err();
        assert_eq!(e, "CapsuleImageSize is 30 but the file has 29 bytes");
        let mut longer = good.clone();
        longer.push(0);
        assert!(parse(&longer).unwrap_err().contains("CapsuleImageSize"));
        for hs in [0u32, 27, 31, u32::MAX] {
            let mut f = good.clone();
            f[16..20].copy_from_slice(&hs.to_le_bytes());
            let e = parse(&f).unwrap_err();
            assert!(e.starts_with(&format!("HeaderSize {hs} ")), "{e}");
        }
        let e = parse(&capsule(CLASS, 28, FLAG_INITIATE_RESET, b"")).unwrap_err();
        assert!(e.contains("without PERSIST_ACROSS_RESET"), "{e}");
        let e = parse(&capsule("00000000-0000-0000-0000-000000000000", 28, 0, b"")).unwrap_err();
        assert!(e.contains("all zeroes"), "{e}");
        assert!(parse(&[0xffu8; 4096]).is_err());
    }

    /// Arbitrary bytes, and valid headers over arbitrary FMP bodies, never panic.
    #[test]
    fn arbitrary_input_is_an_answer_not_a_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let len = (next() % 160) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 && body.len() >= 8 {
                // A plausible FMP header with random counts and offsets.
                body[..4].copy_from_slice(&1u32.to_le_bytes());
                body[4] = (next() % 3) as u8;
                body[5] = 0;
                body[6] = (next() % 4) as u8;
                body[7] = 0;
            }
            let f = capsule(FMP_CAPSULE_GUID, 28, 0, &body);
            if let Ok(c) = parse(&f) {
                assert!(!c.fmp_image_types.is_empty());
            }
            let _ = parse(&body);
        }
    }

    #[test]
    fn hostile_fmp_bodies_are_refused() {
        let body = fmp_body(CLASS);
        let refuse = |b: &[u8], want: &str| {
            let e = parse(&capsule(FMP_CAPSULE_GUID, 28, 0, b)).unwrap_err();
            assert!(e.starts_with("FMP capsule: ") && e.contains(want), "{e}");
        };
        refuse(&body[..6], "less than its 8-byte header");
        let mut v = body.clone();
        v[0] = 2;
        refuse(&v, "header version 2");
        let mut none = body.clone();
        none[6] = 0;
        refuse(&none, "no payload items");
        let mut many = body.clone();
        many[4..8].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        refuse(&many, "at most 256 items");
        let mut list = body[..8].to_vec();
        list[6] = 2;
        refuse(&list, "offset list ends at 24");
        for off in [0u64, 8, 1 << 40, u64::MAX, body.len() as u64 - 4] {
            let mut b = body.clone();
            b[8..16].copy_from_slice(&off.to_le_bytes());
            refuse(&b, "outside the body");
        }
        let mut iv = body.clone();
        iv[16] = 9;
        refuse(&iv, "image header version 9");
    }
}
