//! Boot Loader Specification type #1 entries (`loader/entries/*.conf`): parsing, and the
//! specification's order, whose first entry is the default: entries with a `sort-key`
//! before those without, by `sort-key`, then `machine-id` (both increasing), then `version`
//! (decreasing, by the UAPI version comparison); then by file name (decreasing version
//! order, `.conf` removed). Entries whose boot counter says no tries are left go last.

use std::cmp::Ordering;

/// One entry file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlsEntry {
    /// File name with `.conf` (and a boot counter `+N-M`) removed.
    pub id: String,
    pub title: Option<String>,
    pub version: Option<String>,
    pub machine_id: Option<String>,
    pub sort_key: Option<String>,
    pub linux: Option<String>,
    pub initrd: Vec<String>,
    /// Every `options` line, joined with spaces.
    pub options: String,
    /// A unified kernel image (`efi`): not something kexec loads here.
    pub efi: Option<String>,
    /// The boot counter said no tries are left.
    pub exhausted: bool,
}

/// Parses the file `file_name` with `text`.
pub fn parse(file_name: &str, text: &str) -> BlsEntry {
    let stem = file_name.strip_suffix(".conf").unwrap_or(file_name);
    // Boot counting: `name+LEFT-DONE.conf` or `name+LEFT.conf`.
    let (id, exhausted) = match stem.rsplit_once('+') {
        Some((base, counter))
            if !counter.is_empty()
                && counter
                    .split('-')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            let left = counter.split('-').next().unwrap_or("1");
            (base.to_owned(), left.parse::<u64>().is_ok_and(|n| n == 0))
        }
        _ => (stem.to_owned(), false),
    };
    let mut e = BlsEntry {
        id,
        exhausted,
        ..BlsEntry::default()
    };
    let mut options = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim().to_owned()),
            None => (line, String::new()),
        };
        match key {
            "title" => e.title = Some(value),
            "version" => e.version = Some(value),
            "machine-id" => e.machine_id = Some(value),
            "sort-key" => e.sort_key = Some(value),
            "linux" => e.linux = Some(value),
            "initrd" => e.initrd.extend(value.split_whitespace().map(str::to_owned)),
            "options" => options.push(value),
            "efi" => e.efi = Some(value),
            _ => {}
        }
    }
    e.options = options.join(" ");
    e
}

/// The specification's order: the default entry first.
pub fn order(a: &BlsEntry, b: &BlsEntry) -> Ordering {
    a.exhausted
        .cmp(&b.exhausted)
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(ka), Some(kb)) => ka
                .cmp(kb)
                .then_with(|| a.machine_id.cmp(&b.machine_id))
                .then_with(|| match (&a.version, &b.version) {
                    (Some(va), Some(vb)) => version_cmp(vb, va),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| version_cmp(&b.id, &a.id))
}

fn is_valid(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// The UAPI version format comparison (systemd's `strverscmp_improved`): `~` sorts before
/// anything (pre-releases), the end of a string before more parts, `-`, `^` and `.` before
/// other characters at that place, digit runs numerically, letter runs alphabetically,
/// numbers after letters.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        while let Some(&c) = a.first()
            && !is_valid(c)
        {
            a = &a[1..];
        }
        while let Some(&c) = b.first()
            && !is_valid(c)
        {
            b = &b[1..];
        }
        let (ca, cb) = (a.first().copied(), b.first().copied());
        // '~' is lower than anything, even the end.
        if ca == Some(b'~') || cb == Some(b'~') {
            let r = (ca != Some(b'~')).cmp(&(cb != Some(b'~')));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        let (Some(ca), Some(cb)) = (ca, cb) else {
            return ca.is_some().cmp(&cb.is_some());
        };
        let mut separator = false;
        for sep in [b'-', b'^', b'.'] {
            if ca == sep || cb == sep {
                let r = (ca != sep).cmp(&(cb != sep));
                if r != Ordering::Equal {
                    return r;
                }
                a = &a[1..];
                b = &b[1..];
                separator = true;
                break;
            }
        }
        if separator {
            continue;
        }
        let run = |s: &[u8], digits: bool| {
            s.iter()
                .take_while(|c| {
                    if digits {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        if ca.is_ascii_digit() || cb.is_ascii_digit() {
            let r = ca.is_ascii_digit().cmp(&cb.is_ascii_digit());
            if r != Ordering::Equal {
                return r;
            }
            let (na, nb) = (run(a, true), run(b, true));
            let (da, db) = (&a[..na], &b[..nb]);
            let strip = |d: &[u8]| -> usize { d.iter().take_while(|c| **c == b'0').count() };
            let (za, zb) = (&da[strip(da)..], &db[strip(db)..]);
            let r = za.len().cmp(&zb.len()).then_with(|| za.cmp(zb));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[na..];
            b = &b[nb..];
        } else {
            let (na, nb) = (run(a, false), run(b, false));
            let r = a[..na].cmp(&b[..nb]);
            if r != Ordering::Equal {
                return r;
            }
            a = &a[na..];
            b = &b[nb..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_the_uapi_format_says() {
        use Ordering::*;
        for (a, b, want) in [
            ("6.1.0", "6.1.0", Equal),
            ("6.10.0", "6.9.0", Greater),
            ("5.14.0-70.el9", "5.14.0-162.el9", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0.1", Less),
            ("1.0a", "1.0", Greater),
            ("010", "10", Equal),
            ("123-9", "123.1-1", Less),
            ("a", "1", Less),
            ("6.1.0-13-amd64", "6.1.0-9-amd64", Greater),
        ] {
            assert_eq!(version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn an_entry_file_is_parsed_with_its_boot_counter() {
        let e = parse(
            "6a9857a393724b7a981ebb5b8495b9ea-6.5.6-300.fc39.x86_64+0-3.conf",
            "# comment\ntitle Fedora Linux 39\nversion 6.5.6-300.fc39.x86_64\n\
             linux /vmlinuz-6.5.6-300.fc39.x86_64\ninitrd /initramfs-6.5.6.img\n\
             options root=UUID=abc ro\noptions rhgb quiet\nunknown-key x\n",
        );
        assert_eq!(
            e.id,
            "6a9857a393724b7a981ebb5b8495b9ea-6.5.6-300.fc39.x86_64"
        );
        assert!(e.exhausted);
        assert_eq!(e.linux.as_deref(), Some("/vmlinuz-6.5.6-300.fc39.x86_64"));
        assert_eq!(e.initrd, ["/initramfs-6.5.6.img"]);
        assert_eq!(e.options, "root=UUID=abc ro rhgb quiet");
        assert!(!parse("a+3.conf", "").exhausted);
        assert_eq!(parse("a+b.conf", "").id, "a+b");
    }

    /// The order of systemd's own test (test-bootspec.c): sort-keys first (kkkk before
    /// xxxx), within one key the newer version first, then entries without a key by file
    /// name, newest first.
    #[test]
    fn entries_sort_in_the_specification_order() {
        let entries = [
            ("a-10.conf", "version 10\nmachine-id dd"),
            ("a-5.conf", "version 5\nmachine-id dd"),
            ("b.conf", "version 3\nmachine-id b7"),
            ("c.conf", "sort-key xxxx\nversion 5\nmachine-id 30"),
            ("cx.conf", "sort-key xxxx\nversion 10\nmachine-id 30"),
            ("d.conf", "sort-key kkkk\nversion 100\nmachine-id 81"),
        ];
        let mut parsed: Vec<BlsEntry> = entries.iter().map(|(f, t)| parse(f, t)).collect();
        parsed.sort_by(order);
        let ids: Vec<&str> = parsed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["d", "cx", "c", "b", "a-10", "a-5"]);
    }
}
