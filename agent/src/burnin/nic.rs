//! NIC burn-in: carrier and negotiated speed of each interface, read fresh from sysfs.

use molar_protocol::burnin::{NicBurnin, NicResult};
use molar_protocol::qc::Check;
use std::path::Path;

/// Carrier and speed of `name` from `/sys/class/net/NAME/` (a down link reads as no speed;
/// the kernel's `-1` for unknown speed too).
pub fn read(root: &Path, name: &str) -> NicResult {
    let dir = root.join("sys/class/net").join(name);
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let carrier = text("carrier").and_then(|s| match s.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    });
    let speed_mbps = text("speed")
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|s| *s > 0)
        .and_then(|s| u32::try_from(s).ok());
    NicResult {
        name: name.into(),
        carrier,
        speed_mbps,
    }
}

/// The check of one interface against the settings.
pub fn judge(n: &NicResult, want: &NicBurnin) -> Check {
    let mut expected = Vec::new();
    let mut pass = true;
    if want.require_carrier {
        expected.push("carrier".to_owned());
        pass &= n.carrier == Some(true);
    }
    if let Some(min) = want.min_speed_mbps {
        expected.push(format!("at least {min} Mbit/s"));
        pass &= n.speed_mbps.is_some_and(|s| s >= min);
    }
    let carrier = match n.carrier {
        Some(true) => "carrier",
        Some(false) => "no carrier",
        None => "carrier unknown",
    };
    let speed = n
        .speed_mbps
        .map_or("speed unknown".to_owned(), |s| format!("{s} Mbit/s"));
    Check {
        name: format!("burnin.nics[{}]", n.name),
        expected: expected.join(", "),
        actual: format!("{carrier}, {speed}"),
        pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrier_and_speed_come_from_sysfs_and_are_judged() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (name, carrier, speed) in [("eth0", "1", "1000"), ("eth1", "0", "-1")] {
            let d = root.join("sys/class/net").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("carrier"), format!("{carrier}\n")).unwrap();
            std::fs::write(d.join("speed"), format!("{speed}\n")).unwrap();
        }
        let up = read(root, "eth0");
        assert_eq!((up.carrier, up.speed_mbps), (Some(true), Some(1000)));
        let down = read(root, "eth1");
        assert_eq!((down.carrier, down.speed_mbps), (Some(false), None));
        let gone = read(root, "eth9");
        assert_eq!((gone.carrier, gone.speed_mbps), (None, None));
        let want = NicBurnin {
            require_carrier: true,
            min_speed_mbps: Some(1000),
            names: None,
        };
        let c = judge(&up, &want);
        assert!(c.pass);
        assert_eq!(c.name, "burnin.nics[eth0]");
        assert_eq!(c.expected, "carrier, at least 1000 Mbit/s");
        assert_eq!(c.actual, "carrier, 1000 Mbit/s");
        assert!(!judge(&down, &want).pass);
        assert_eq!(judge(&down, &want).actual, "no carrier, speed unknown");
        let faster = NicBurnin {
            min_speed_mbps: Some(10_000),
            ..want
        };
        assert!(!judge(&up, &faster).pass);
    }
}
