//! Output of the client commands: lines written to stdout (a closed stdout ends the command
//! quietly), JSON, tables, times, and the escaping that makes what agents and BMCs report safe
//! to print on a terminal.

use super::{EXIT_OTHER, Failure};
use serde::Serialize;

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    emit(&json_for_terminal(&text))
}

/// Writes one line to stdout. A closed stdout (`molar ... | head`) is [`Failure::stdout_closed`]:
/// the command ends quietly instead of panicking like `println!`.
pub(crate) fn emit(line: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::stdout_closed()),
        Err(e) => Err(Failure::new(EXIT_OTHER, format!("writing to stdout: {e}"))),
    }
}

/// Whether a character can steer a terminal or reorder what is shown: C0 controls (CR, LF,
/// ESC, ...), DEL, C1 controls (U+0080..U+009F, CSI among them) and the Unicode bidi
/// embeddings, overrides and isolates.
pub(crate) fn is_unsafe_char(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A string that came from an agent or a BMC, made safe to print on the operator's terminal:
/// every [`is_unsafe_char`] becomes a visible escape (`\n`, `\r`, `\t`, `\x1b`,
/// `\u{202e}`), so a hostile hostname or log record can neither forge lines nor send escape
/// sequences.
pub fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON text made safe for a terminal and still the same JSON: serde_json escapes C0 controls
/// in strings (raw ones are only the pretty printer's newlines) but writes DEL, C1 controls and
/// bidi controls raw; those can only occur inside strings, so `\uXXXX` escapes them without
/// changing the value.
pub(crate) fn json_for_terminal(json: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_in_json = |c: char| is_unsafe_char(c) && c >= '\u{7f}';
    if !json.chars().any(unsafe_in_json) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if unsafe_in_json(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Most characters of a table cell; longer values end in `…` (`--json` has them whole).
pub const CELL_MAX: usize = 64;

/// A table cell: [`sanitize`]d, then cut to [`CELL_MAX`] characters.
pub(crate) fn cell(s: &str) -> String {
    let s = sanitize(s);
    if s.chars().count() <= CELL_MAX {
        return s.into_owned();
    }
    let mut cut: String = s.chars().take(CELL_MAX - 1).collect();
    cut.push('…');
    cut
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A table with a header, columns two spaces apart; every cell goes through [`cell`].
/// Padding is done by hand: a `{:w$}` width over `u16::MAX` panics ("Formatting argument out
/// of range").
pub(crate) fn render_table(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(
            rows.into_iter()
                .map(|r| r.iter().map(|c| cell(c)).collect()),
        )
        .collect();
    let mut widths: Vec<usize> = vec![0; header.len()];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    rows.into_iter()
        .map(|cells| {
            let mut s = String::new();
            let n = cells.len();
            for (i, c) in cells.into_iter().enumerate() {
                let pad = widths.get(i).copied().unwrap_or(0);
                let len = c.chars().count();
                s.push_str(&c);
                if i + 1 < n {
                    s.extend(std::iter::repeat_n(' ', pad.saturating_sub(len) + 2));
                }
            }
            s.trim_end().to_owned()
        })
        .collect()
}

pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Failure> {
    for line in render_table(header, rows) {
        emit(&line)?;
    }
    Ok(())
}

/// An optional agent-reported value for text output, [`sanitize`]d; `-` when absent.
pub(crate) fn opt(s: &Option<String>) -> String {
    s.as_deref()
        .map_or_else(|| "-".into(), |s| sanitize(s).into_owned())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::Value;

    pub(crate) const HOSTILE: &str = "evil\x1b]0;pwned\x07\r\nforged";

    pub(crate) fn assert_printable(text: &str) {
        assert!(
            !text.chars().any(is_unsafe_char),
            "raw control character in {text:?}"
        );
    }

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_763_751_600_000), "2025-11-21 19:00:00");
    }

    #[test]
    fn control_characters_are_escaped_visibly() {
        assert_eq!(sanitize("plain host-1"), "plain host-1");
        assert_eq!(sanitize(HOSTILE), r"evil\x1b]0;pwned\x07\r\nforged");
        assert_eq!(
            sanitize("a\tb\x7fc\u{85}d\u{202e}e\u{2069}f\0"),
            r"a\tb\x7fc\u{85}d\u{202e}e\u{2069}f\x00"
        );
        // Text beyond ASCII that steers nothing is left alone.
        assert_eq!(sanitize("höst-ü→"), "höst-ü→");
    }

    #[test]
    fn json_for_the_terminal_is_the_same_json() {
        let v = serde_json::json!({"h": "a\u{9b}b\u{202e}c\x7f\x1b\n"});
        let text = json_for_terminal(&serde_json::to_string_pretty(&v).unwrap()).into_owned();
        assert_printable(&text.replace('\n', ""));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }
}
