//! Which devices are known to read zeros everywhere, in this boot: recorded by the erase
//! engine after an erase it verified, dropped as soon as anything writes to the device. The
//! image writer consults it to skip writing runs of zeros (a device not in here gets them
//! written). Kept in memory only: a restarted agent knows nothing, which is the safe side.

use std::collections::BTreeSet;
use std::sync::Mutex;

static ZEROED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn set() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    ZEROED.lock().unwrap_or_else(|p| p.into_inner())
}

/// `device` (a kernel name, `nvme0n1`) was erased and verified to read zeros.
pub fn record(device: &str) {
    set().insert(device.to_owned());
}

/// Something is about to write to `device`: it no longer reads zeros.
pub fn forget(device: &str) {
    set().remove(device);
}

/// Whether `device` was erased and verified in this boot and not written since.
pub fn reads_zeros(device: &str) -> bool {
    set().contains(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_until_written() {
        assert!(!reads_zeros("zeroed-test0"));
        record("zeroed-test0");
        assert!(reads_zeros("zeroed-test0"));
        assert!(!reads_zeros("zeroed-test1"));
        forget("zeroed-test0");
        assert!(!reads_zeros("zeroed-test0"));
    }
}
