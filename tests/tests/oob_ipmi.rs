//! The controller's out-of-band client (RMCP+ over UDP, `controller/src/oob`) against a real
//! `ipmi_sim` on loopback: login with cipher suite fallback (ipmi_sim speaks suite 3, not
//! 17), wrong passwords and users refused without the password in the error, identity,
//! power status and control, boot device, identify and BMC reset (answered or refused with
//! the BMC's completion code), many commands in one session, an unreachable BMC; and
//! cross-checks with `ipmitool -I lanplus -C 3`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use molar_controller::oob::{
    BmcTarget, BootTarget, LanOptions, LanSession, OobAction, OobError, PowerChange, perform,
    verify,
};
use molar_protocol::Secret;
use molar_tests::lab::{
    BmcUser, Images, IpmiSim, IpmiSimConfig, Lab, free_udp_port, skip_or_fail, which,
};

fn sim(test: &str) -> Option<(Lab, IpmiSim)> {
    for tool in ["ipmi_sim", "ipmitool"] {
        if which(tool).is_none() {
            return skip_or_fail(test, &format!("{tool} is not in PATH"));
        }
    }
    // Only ipmi_sim runs here: no VM, so the lab's images are not needed.
    let lab = Lab::new(test, Images::in_dir(&Images::default_dir())).unwrap();
    let sim = lab.start_ipmi_sim(IpmiSimConfig::default()).unwrap();
    Some((lab, sim))
}

fn target(port: u16, user: &str, password: &str) -> BmcTarget {
    BmcTarget {
        host: "127.0.0.1".into(),
        port,
        username: user.into(),
        password: Secret::new(password),
        allow_ipmi15: false,
        protocol: Default::default(),
        trust: None,
    }
}

/// An ipmitool output line `Name : value`'s value.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name:?} in {out}"))
}

#[tokio::test]
async fn verify_falls_back_to_suite_3_and_reads_what_ipmitool_reads() {
    let Some((_lab, sim)) = sim("verify_falls_back_to_suite_3_and_reads_what_ipmitool_reads")
    else {
        return;
    };
    let t = target(sim.lan_port(), "ipmiusr", "test");
    let started = Instant::now();
    let id = verify(&t).await.unwrap();
    // ipmi_sim refuses suite 17 at Open Session: the fallback costs no timeout.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(id.cipher_suite, Some(3));

    let guid = sim.ipmitool_ok("ipmiusr", "test", &["mc", "guid"]).unwrap();
    assert_eq!(
        id.system_guid.as_deref(),
        Some(field(&guid, "System GUID").as_str())
    );
    assert_eq!(
        id.system_guid.as_deref(),
        Some("efcdab89-6745-23a1-efcd-ab89674523a1"),
        "lan.conf's guid a123456789abcdefa123456789abcdef, bytes reversed"
    );
    let info = sim.ipmitool_ok("ipmiusr", "test", &["mc", "info"]).unwrap();
    assert_eq!(
        id.firmware_version.as_deref(),
        Some(field(&info, "Firmware Revision").as_str())
    );
}

#[tokio::test]
async fn wrong_passwords_and_users_are_refused_without_showing_the_password() {
    let Some((_lab, sim)) =
        sim("wrong_passwords_and_users_are_refused_without_showing_the_password")
    else {
        return;
    };
    let secret = "Wr0ng-Pa55word";
    let e = verify(&target(sim.lan_port(), "ipmiusr", secret))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OobError::Auth { .. }), "{e:?}");
    assert!(msg.contains("wrong password"), "{msg}");
    assert!(msg.starts_with(&format!(
        "BMC 127.0.0.1:{}: login refused: ",
        sim.lan_port()
    )));
    assert!(
        !msg.contains(secret) && !format!("{e:?}").contains(secret),
        "{msg}"
    );

    let e = verify(&target(sim.lan_port(), "nosuchuser", secret))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OobError::Auth { .. }), "{e:?}");
    assert!(
        !msg.contains(secret) && !format!("{e:?}").contains(secret),
        "{msg}"
    );
    eprintln!("unknown user: {msg}");

    // The right password still works after many failed logins: they left no session
    // holding one of the BMC's few slots.
    for _ in 0..40 {
        verify(&target(sim.lan_port(), "ipmiusr", secret))
            .await
            .unwrap_err();
    }
    verify(&target(sim.lan_port(), "ipmiusr", "test"))
        .await
        .unwrap();
}

#[tokio::test]
async fn power_status_and_power_control_are_answered() {
    let Some((_lab, sim)) = sim("power_status_and_power_control_are_answered") else {
        return;
    };
    let t = target(sim.lan_port(), "ipmiusr", "test");
    let status = perform(&t, &OobAction::PowerStatus).await.unwrap();
    let ipmitool = sim
        .ipmitool_ok("ipmiusr", "test", &["chassis", "power", "status"])
        .unwrap();
    // Without a VM ipmi_sim's chassis is off and stays off.
    assert_eq!(status.message, "server power state: off");
    assert_eq!(status.power_on, Some(false));
    assert_eq!(ipmitool.trim(), "Chassis Power is off");

    let on = perform(&t, &OobAction::Power(PowerChange::On))
        .await
        .unwrap();
    assert_eq!(on.message, "server power state set successful: on");
    // A cycle of a chassis that is off powers it on.
    let cycle = perform(&t, &OobAction::Power(PowerChange::Cycle))
        .await
        .unwrap();
    assert_eq!(
        cycle.message,
        "server power state set successful: on (the chassis was off, so the cycle powered it on)"
    );
    for (change, word) in [
        (PowerChange::Off, "off"),
        (PowerChange::Soft, "soft"),
        (PowerChange::Reset, "reset"),
    ] {
        match perform(&t, &OobAction::Power(change)).await {
            Ok(o) => assert_eq!(
                o.message,
                format!("server power state set successful: {word}")
            ),
            Err(OobError::Refused {
                command,
                completion,
                ..
            }) => {
                assert_eq!(command, "chassis control");
                assert!(
                    completion.ends_with(')') && completion.contains("(0x"),
                    "{completion}"
                );
            }
            Err(e) => panic!("{word}: {e}"),
        }
    }
}

/// ipmi_sim without a VM refuses Chassis Identify and the boot options (0xcc, as ipmitool
/// sees too) and Cold Reset (0xc1): each refusal names the command and the code.
#[tokio::test]
async fn boot_device_identify_and_reset_answer_or_name_the_completion_code() {
    let Some((_lab, sim)) =
        sim("boot_device_identify_and_reset_answer_or_name_the_completion_code")
    else {
        return;
    };
    let t = target(sim.lan_port(), "ipmiusr", "test");
    let addr = t.addr();
    let boot = perform(
        &t,
        &OobAction::BootDevice {
            device: BootTarget::Pxe,
            persistent: false,
            efi: true,
        },
    )
    .await;
    match boot {
        Ok(o) => assert_eq!(
            o.message,
            "next boot device set successful: pxe (one-time, efi)"
        ),
        Err(e) => assert_eq!(
            e.to_string(),
            format!(
                "BMC {addr}: set system boot options refused: invalid data field in request (0xcc)"
            )
        ),
    }
    let ipmitool = sim
        .ipmitool("ipmiusr", "test", &["chassis", "bootdev", "pxe"])
        .unwrap();
    eprintln!(
        "ipmitool bootdev: {}",
        String::from_utf8_lossy(&ipmitool.stderr).trim()
    );

    match perform(&t, &OobAction::Identify { seconds: Some(15) }).await {
        Ok(o) => assert_eq!(o.message, "chassis identify set successful: 15 s"),
        Err(e) => assert_eq!(
            e.to_string(),
            format!("BMC {addr}: chassis identify refused: invalid data field in request (0xcc)")
        ),
    }
    match perform(&t, &OobAction::BmcReset).await {
        Ok(o) => assert_eq!(o.message, "bmc reset successful"),
        Err(e) => assert_eq!(
            e.to_string(),
            format!(
                "BMC {addr}: cold reset refused: invalid command (not supported by this BMC) \
                 (0xc1)"
            )
        ),
    }
    // The BMC still answers after all the refusals.
    perform(&t, &OobAction::PowerStatus).await.unwrap();
}

#[test]
fn one_session_carries_many_commands_and_what_molar_sets_ipmitool_reads() {
    let Some((_lab, sim)) =
        sim("one_session_carries_many_commands_and_what_molar_sets_ipmitool_reads")
    else {
        return;
    };
    let t = target(sim.lan_port(), "ipmiusr", "test");
    let mut s = LanSession::open(&t, LanOptions::default()).unwrap();
    assert_eq!(s.cipher_suite(), 3);
    for _ in 0..70 {
        // More than the 6-bit rq_seq and the replay window: numbers wrap and stay valid.
        molar_ipmi::device::get_device_id(&mut s).unwrap();
    }
    molar_ipmi::user::set_user_name(&mut s, 3, "molarcheck").unwrap();
    assert_eq!(
        molar_ipmi::user::get_user_name(&mut s, 3).unwrap(),
        "molarcheck"
    );
    // Nothing but answers came in: no other payload is waiting.
    assert_eq!(s.recv_payload(Duration::from_millis(100)).unwrap(), None);
    let list = sim
        .ipmitool_ok("ipmiusr", "test", &["user", "list", "1"])
        .unwrap();
    assert!(list.contains("molarcheck"), "{list}");
    s.close().unwrap();
    let e = molar_ipmi::device::get_device_id(&mut s).unwrap_err();
    assert!(e.to_string().contains("the session is closed"), "{e}");
}

#[test]
fn an_unreachable_bmc_gives_up_after_its_attempts() {
    let port = free_udp_port().unwrap();
    let t = target(port, "ipmiusr", "test");
    let started = Instant::now();
    let e = LanSession::open(
        &t,
        LanOptions {
            timeout: Duration::from_millis(200),
            attempts: 3,
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("BMC 127.0.0.1:{port}: no answer after 3 attempts")
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(started.elapsed() < Duration::from_secs(3));
    let bad = BmcTarget {
        host: "no-such-host.invalid".into(),
        ..target(port, "u", "p")
    };
    let e = LanSession::open(&bad, LanOptions::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("BMC no-such-host.invalid:"),
        "{e}"
    );
}

/// A BMC user with operator privilege logs in and reads the power state. (ipmi_sim grants
/// administrator to it when asked, as `ipmitool -L ADMINISTRATOR` shows, so the fallback
/// to an operator session is not exercised here.)
#[tokio::test]
async fn an_operator_user_gets_an_operator_session() {
    let test = "an_operator_user_gets_an_operator_session";
    for tool in ["ipmi_sim", "ipmitool"] {
        if which(tool).is_none() {
            return skip_or_fail(test, &format!("{tool} is not in PATH")).unwrap_or(());
        }
    }
    let lab = Lab::new(test, Images::in_dir(&Images::default_dir())).unwrap();
    let mut cfg = IpmiSimConfig::default();
    cfg.users.push(BmcUser {
        id: 3,
        name: "oper".into(),
        password: "operpass".into(),
        privilege: "operator".into(),
    });
    let sim = lab.start_ipmi_sim(cfg).unwrap();
    let t = target(sim.lan_port(), "oper", "operpass");
    let status = perform(&t, &OobAction::PowerStatus).await.unwrap();
    assert_eq!(status.message, "server power state: off");
    let mut s = LanSession::open(&t, LanOptions::default()).unwrap();
    assert!(
        !molar_ipmi::chassis::get_chassis_status(&mut s)
            .unwrap()
            .power_on
    );
}

/// IPMI 1.5 with MD5, opened explicitly (ipmi_sim also speaks 2.0, so `open` would not pick
/// it): refused unless the target allows it; then commands work, SOL payloads are refused
/// and a wrong password is a login refusal without the password.
#[test]
fn an_ipmi15_session_only_where_allowed() {
    let Some((_lab, sim)) = sim("an_ipmi15_session_only_where_allowed") else {
        return;
    };
    let mut t = target(sim.lan_port(), "ipmiusr", "test");
    let e = LanSession::open_ipmi15(&t, LanOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "BMC 127.0.0.1:{}: login refused: IPMI 1.5 is not allowed for this BMC",
            sim.lan_port()
        )
    );
    t.allow_ipmi15 = true;
    let mut s = LanSession::open_ipmi15(&t, LanOptions::default()).unwrap();
    assert_eq!(s.cipher_suite(), 0);
    for _ in 0..40 {
        molar_ipmi::device::get_device_id(&mut s).unwrap();
    }
    assert!(
        !molar_ipmi::chassis::get_chassis_status(&mut s)
            .unwrap()
            .power_on
    );
    let e = s.send_payload(0x01, b"x").unwrap_err();
    assert!(
        e.to_string().contains("needs an IPMI 2.0 (RMCP+) session"),
        "{e}"
    );
    s.close().unwrap();

    let secret = "Wr0ng-Pa55";
    let bad = BmcTarget {
        password: Secret::new(secret),
        ..t.clone()
    };
    let e = LanSession::open_ipmi15(
        &bad,
        LanOptions {
            timeout: Duration::from_millis(300),
            attempts: 2,
        },
    )
    .unwrap_err();
    assert!(matches!(e, OobError::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains(secret) && !format!("{e:?}").contains(secret));
    eprintln!("ipmi 1.5 wrong password: {e}");
}

/// A loopback UDP relay to `port` that drops every `nth` datagram in each direction (or,
/// with `duplicate`, sends each of those twice); its thread ends when `stop` is set.
fn lossy_relay(
    port: u16,
    nth: usize,
    duplicate: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, std::thread::JoinHandle<usize>) {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::Ordering;
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(("127.0.0.1", port)).unwrap();
    front
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let relay_port = front.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut client: Option<SocketAddr> = None;
        let (mut up, mut down, mut dropped) = (0usize, 0usize, 0usize);
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = front.recv_from(&mut buf) {
                client = Some(from);
                up += 1;
                if up % nth != 0 {
                    let _ = back.send(&buf[..n]);
                } else {
                    dropped += 1;
                    if duplicate {
                        let _ = back.send(&buf[..n]);
                        let _ = back.send(&buf[..n]);
                    }
                }
            }
            if let (Ok(n), Some(c)) = (back.recv(&mut buf), client) {
                down += 1;
                if down % nth != 0 {
                    let _ = front.send_to(&buf[..n], c);
                } else {
                    dropped += 1;
                    if duplicate {
                        let _ = front.send_to(&buf[..n], c);
                        let _ = front.send_to(&buf[..n], c);
                    }
                }
            }
        }
        dropped
    });
    (relay_port, h)
}

/// Lost packets in both directions, on the way to ipmi_sim and back: the handshake and
/// the requests are retransmitted and the session carries on.
#[test]
fn lost_packets_are_retransmitted() {
    let Some((_lab, sim)) = sim("lost_packets_are_retransmitted") else {
        return;
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (port, relay) = lossy_relay(sim.lan_port(), 3, false, stop.clone());
    let t = target(port, "ipmiusr", "test");
    let opts = LanOptions {
        timeout: Duration::from_millis(200),
        attempts: 5,
    };
    let mut s = LanSession::open(&t, opts).unwrap();
    assert_eq!(s.cipher_suite(), 3);
    for _ in 0..12 {
        molar_ipmi::device::get_device_id(&mut s).unwrap();
    }
    let _ = s.close();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let dropped = relay.join().unwrap();
    assert!(dropped >= 6, "only {dropped} datagrams dropped");
}

/// Every other datagram duplicated in both directions: ipmi_sim answers repeated requests
/// twice, and the client takes each answer once (replay window, `rq_seq`).
#[test]
fn duplicated_packets_are_taken_once() {
    let Some((_lab, sim)) = sim("duplicated_packets_are_taken_once") else {
        return;
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (port, relay) = lossy_relay(sim.lan_port(), 2, true, stop.clone());
    let t = target(port, "ipmiusr", "test");
    let mut s = LanSession::open(&t, LanOptions::default()).unwrap();
    for i in 0..12u8 {
        let name = format!("dup{i}");
        molar_ipmi::user::set_user_name(&mut s, 3, &name).unwrap();
        assert_eq!(molar_ipmi::user::get_user_name(&mut s, 3).unwrap(), name);
    }
    assert_eq!(s.recv_payload(Duration::from_millis(50)).unwrap(), None);
    s.close().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(relay.join().unwrap() >= 10);
}
