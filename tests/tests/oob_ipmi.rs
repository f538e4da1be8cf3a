//! The controller's out-of-band client (RMCP+ over UDP, `controller/src/oob`) against a real
//! `ipmi_sim` on loopback: login with cipher suite fallback (ipmi_sim speaks suite 3, not
//! 17), a wrong password refused without the password in the error, identity, power status,
//! boot device, identify, BMC reset; cross-checked with `ipmitool -I lanplus -C 3`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::oob::{BmcTarget, LanOptions, LanSession};
use molar_protocol::Secret;
use molar_tests::lab::{Images, IpmiSim, IpmiSimConfig, Lab, skip_or_fail, which};

fn sim(test: &str) -> Option<(Lab, IpmiSim)> {
    for tool in ["ipmi_sim", "ipmitool"] {
        if which(tool).is_none() {
            return skip_or_fail(test, &format!("{tool} is not in PATH"));
        }
    }
    let lab = Lab::new(test, Images::in_dir(&Images::default_dir())).unwrap();
    let sim = lab.start_ipmi_sim(IpmiSimConfig::default()).unwrap();
    Some((lab, sim))
}

fn target(sim: &IpmiSim, password: &str) -> BmcTarget {
    BmcTarget {
        host: "127.0.0.1".into(),
        port: sim.lan_port(),
        username: "ipmiusr".into(),
        password: Secret::new(password),
        allow_ipmi15: false,
    }
}

#[test]
fn a_session_opens_with_suite_3_and_answers_get_device_id() {
    let Some((_lab, sim)) = sim("a_session_opens_with_suite_3_and_answers_get_device_id") else {
        return;
    };
    let mut s = LanSession::open(&target(&sim, "test"), LanOptions::default()).unwrap();
    assert_eq!(s.cipher_suite(), 3);
    let id = molar_ipmi::device::get_device_id(&mut s).unwrap();
    eprintln!("{id:?}");
    s.close().unwrap();
}
