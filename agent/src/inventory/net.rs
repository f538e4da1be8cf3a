//! Network interfaces from `/sys/class/net`: MAC, driver, PCI address, link state, MTU and
//! whether the interface is backed by hardware. On the live machine also the firmware
//! version (ethtool ioctl, through `crate::hw::ethtool`) and IP addresses from `getifaddrs`;
//! on other roots addresses come from the procfs tables under the root
//! (`/proc/net/if_inet6`, and `/proc/net/fib_trie` with `/proc/net/route` for IPv4), which is
//! what fixture trees carry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path};

use molar_protocol::inventory::{IpAddress, Nic};

use super::{Ctx, io_reason};

const NET_DIR: &str = "/sys/class/net";
const IF_INET6: &str = "/proc/net/if_inet6";
const FIB_TRIE: &str = "/proc/net/fib_trie";
const ROUTE: &str = "/proc/net/route";
const ARPHRD_LOOPBACK: u32 = 772;

/// "0000:00:03.0": domain:bus:device.function in hex.
pub(crate) fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// The PCI function of a network device, from its sysfs path
/// (`../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0`). Only a function the interface
/// sits on directly (or through its virtio device) counts: a USB NIC's path also passes a
/// PCI function, the USB host controller's, which is not the NIC's.
pub(crate) fn pci_address_of(device_path: &Path) -> Option<String> {
    let parts: Vec<String> = device_path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let net = parts.iter().rposition(|p| p == "net")?;
    let mut i = net;
    while i > 0 {
        i -= 1;
        let p = &parts[i];
        if is_pci_address(p) {
            return Some(p.clone());
        }
        let virtio = p
            .strip_prefix("virtio")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !virtio || net - i > 1 {
            return None;
        }
    }
    None
}

fn format_mac(s: &str) -> Option<String> {
    let mac = s.trim().to_ascii_lowercase();
    if mac.is_empty() || mac.bytes().all(|b| b == b'0' || b == b':') {
        return None;
    }
    Some(mac)
}

pub(crate) fn collect(ctx: &mut Ctx) -> Vec<Nic> {
    let mut nics = Vec::new();
    for name in ctx.list_dir(NET_DIR, true) {
        let dir = format!("{NET_DIR}/{name}");
        let link = ctx.read_link(&dir);
        let kind = ctx.parse_attr::<u32>(&format!("{dir}/type"));
        let has_device = ctx.exists(&format!("{dir}/device"));
        let virtual_device = match &link {
            Some(target) => target.to_string_lossy().contains("devices/virtual/"),
            None => !has_device,
        } || kind == Some(ARPHRD_LOOPBACK);
        let carrier = ctx
            .parse_attr::<u8>(&format!("{dir}/carrier"))
            .map(|c| c == 1);
        nics.push(Nic {
            mac: ctx
                .read_attr(&format!("{dir}/address"))
                .and_then(|m| format_mac(&m)),
            driver: ctx.link_name(&format!("{dir}/device/driver")),
            firmware_version: None,
            pci_address: link.as_deref().and_then(pci_address_of),
            // -1 (unknown, e.g. virtio) and absent speeds are the same to us.
            speed_mbps: ctx
                .parse_attr::<i64>(&format!("{dir}/speed"))
                .and_then(|s| u32::try_from(s).ok()),
            carrier,
            mtu: ctx.parse_attr(&format!("{dir}/mtu")),
            operstate: ctx.read_attr(&format!("{dir}/operstate")),
            virtual_device,
            addresses: Vec::new(),
            name,
        });
    }
    if ctx.is_live() {
        firmware_versions(ctx, &mut nics);
    }
    let mut addresses = if ctx.is_live() {
        live_addresses(ctx)
    } else {
        let lo = nics.iter().find(|n| n.name == "lo").map(|n| n.name.clone());
        procfs_addresses(ctx, lo.as_deref())
    };
    for nic in &mut nics {
        if let Some(list) = addresses.remove(&nic.name) {
            nic.addresses = list;
        }
    }
    nics
}

/// Firmware versions from the ethtool ioctl. Interfaces without driver info (loopback,
/// most virtual devices) answer EOPNOTSUPP, which is not worth a note.
fn firmware_versions(ctx: &mut Ctx, nics: &mut [Nic]) {
    use crate::hw::ethtool::{self, EthtoolError};
    use std::os::fd::AsFd;

    let sock = match ethtool::control_socket() {
        Ok(s) => s,
        Err(e) => {
            ctx.note("ethtool", e.to_string());
            return;
        }
    };
    for nic in nics.iter_mut() {
        match ethtool::driver_info(sock.as_fd(), &nic.name) {
            Ok(info) => {
                nic.firmware_version = info.firmware_version;
                if nic.driver.is_none() && !nic.virtual_device {
                    nic.driver = info.driver;
                }
            }
            Err(EthtoolError::Ioctl {
                source: nix::Error::EOPNOTSUPP | nix::Error::ENODEV,
                ..
            }) => {}
            Err(e) => ctx.note(&format!("{NET_DIR}/{}", nic.name), e.to_string()),
        }
    }
}

fn push_address(map: &mut BTreeMap<String, Vec<IpAddress>>, iface: &str, ip: IpAddr, prefix: u8) {
    let list = map.entry(iface.to_string()).or_default();
    let entry = IpAddress {
        address: ip.to_string(),
        prefix_len: prefix,
    };
    if !list.contains(&entry) {
        list.push(entry);
    }
}

fn live_addresses(ctx: &mut Ctx) -> BTreeMap<String, Vec<IpAddress>> {
    let mut map = BTreeMap::new();
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(a) => a,
        Err(e) => {
            ctx.note("getifaddrs", io_reason(&std::io::Error::from(e)));
            return map;
        }
    };
    for a in addrs {
        let (Some(addr), netmask) = (a.address, a.netmask) else {
            continue;
        };
        if let Some(v4) = addr.as_sockaddr_in() {
            let prefix = netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
            push_address(&mut map, &a.interface_name, IpAddr::V4(v4.ip()), prefix);
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let prefix = netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map_or(128, |m| u128::from(m.ip()).count_ones() as u8);
            push_address(&mut map, &a.interface_name, IpAddr::V6(v6.ip()), prefix);
        }
    }
    map
}

fn procfs_addresses(ctx: &mut Ctx, lo: Option<&str>) -> BTreeMap<String, Vec<IpAddress>> {
    let mut map = BTreeMap::new();
    if let Some(text) = ctx.read_attr(FIB_TRIE) {
        let routes = ctx
            .read_attr(ROUTE)
            .map(|t| parse_route(&t))
            .unwrap_or_default();
        for (iface, ip, prefix) in ipv4_from_fib_trie(&text, &routes, lo) {
            push_address(&mut map, &iface, IpAddr::V4(ip), prefix);
        }
    }
    if let Some(text) = ctx.read_attr(IF_INET6) {
        for (iface, ip, prefix) in parse_if_inet6(&text) {
            push_address(&mut map, &iface, IpAddr::V6(ip), prefix);
        }
    }
    map
}

/// /proc/net/if_inet6: "fe800000000000000000000000000001 02 40 20 80 eth0".
pub(crate) fn parse_if_inet6(text: &str) -> Vec<(String, Ipv6Addr, u8)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[0].len() != 32 {
                return None;
            }
            let bits = u128::from_str_radix(f[0], 16).ok()?;
            let prefix = u8::from_str_radix(f[2], 16).ok()?;
            Some((f[5].to_string(), Ipv6Addr::from(bits), prefix))
        })
        .collect()
}

/// /proc/net/route rows: (interface, destination, mask). The kernel prints addresses as
/// native-endian words; every architecture molar targets is little-endian.
pub(crate) fn parse_route(text: &str) -> Vec<(String, Ipv4Addr, Ipv4Addr)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let word = |s: &str| {
                u32::from_str_radix(s, 16)
                    .ok()
                    .map(|v| Ipv4Addr::from(v.to_le_bytes()))
            };
            Some((f.first()?.to_string(), word(f.get(1)?)?, word(f.get(7)?)?))
        })
        .collect()
}

/// Local IPv4 addresses from /proc/net/fib_trie: each "/32 host LOCAL" leaf is an address of
/// this host; its prefix is the longest "link UNICAST" network containing it, and the
/// interface is the one /proc/net/route gives that network. Loopback addresses (127/8) go to
/// `lo`.
pub(crate) fn ipv4_from_fib_trie(
    text: &str,
    routes: &[(String, Ipv4Addr, Ipv4Addr)],
    lo: Option<&str>,
) -> Vec<(String, Ipv4Addr, u8)> {
    let mut locals = BTreeSet::new();
    let mut networks = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(ip) = t.strip_prefix("|-- ") {
            leaf = ip.trim().parse().ok();
        } else if let (Some(rest), Some(ip)) = (t.strip_prefix('/'), leaf) {
            let mut f = rest.split_whitespace();
            let Some(prefix) = f.next().and_then(|p| p.parse::<u8>().ok()) else {
                continue;
            };
            let scope_type: Vec<&str> = f.collect();
            match scope_type.as_slice() {
                ["host", "LOCAL"] if prefix == 32 => {
                    locals.insert(ip);
                }
                ["link", "UNICAST"] if prefix <= 32 => {
                    networks.insert((ip, prefix));
                }
                _ => {}
            }
        }
    }
    let mask = |prefix: u8| -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    };
    let mut out = Vec::new();
    for ip in locals {
        if ip.is_loopback() {
            if let Some(lo) = lo {
                out.push((lo.to_string(), ip, 8));
            }
            continue;
        }
        let best = networks
            .iter()
            .filter(|(net, p)| u32::from(ip) & mask(*p) == u32::from(*net))
            .max_by_key(|(_, p)| *p);
        let Some((net, prefix)) = best else {
            continue;
        };
        let iface = routes
            .iter()
            .find(|(_, dest, m)| dest == net && u32::from(*m) == mask(*prefix));
        if let Some((iface, _, _)) = iface {
            out.push((iface.clone(), ip, *prefix));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const FIB_TRIE_TEXT: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
";
    const ROUTE_TEXT: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn pci_addresses_from_device_paths() {
        let p = |s: &str| pci_address_of(Path::new(s));
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0").as_deref(),
            Some("0000:00:03.0")
        );
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:1c.0/0000:3b:00.1/net/enp59s0f1").as_deref(),
            Some("0000:3b:00.1")
        );
        assert_eq!(p("../../devices/virtual/net/lo"), None);
        assert_eq!(
            p("../../devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/net/eth1"),
            None
        );
    }

    #[test]
    fn ipv4_from_trie_and_routes() {
        let routes = parse_route(ROUTE_TEXT);
        assert_eq!(
            routes[1],
            (
                "eth0".to_string(),
                Ipv4Addr::new(192, 0, 2, 0),
                Ipv4Addr::new(255, 255, 255, 0)
            )
        );
        let addrs = ipv4_from_fib_trie(FIB_TRIE_TEXT, &routes, Some("lo"));
        assert_eq!(
            addrs,
            vec![
                ("lo".to_string(), Ipv4Addr::new(127, 0, 0, 1), 8),
                ("eth0".to_string(), Ipv4Addr::new(192, 0, 2, 2), 24),
            ]
        );
    }

    #[test]
    fn ipv6_from_if_inet6() {
        let text = "00000000000000000000000000000001 01 80 10 80       lo\n\
                    fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                    short line\n";
        let v = parse_if_inet6(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], ("lo".to_string(), Ipv6Addr::LOCALHOST, 128));
        assert_eq!(v[1].1.to_string(), "fe80::fc:ff:fe00:1");
        assert_eq!(v[1].2, 64);
    }

    #[test]
    fn interfaces_from_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let w = |p: &str, v: &str| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, v).expect("write");
        };
        let eth = "sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0";
        w(&format!("{eth}/address"), "02:FC:00:00:00:01\n");
        w(&format!("{eth}/mtu"), "1400\n");
        w(&format!("{eth}/operstate"), "up\n");
        w(&format!("{eth}/carrier"), "1\n");
        w(&format!("{eth}/speed"), "-1\n");
        w(&format!("{eth}/type"), "1\n");
        fs::create_dir_all(root.join("sys/bus/virtio/drivers/virtio_net")).expect("mkdir");
        symlink("../../../virtio2", root.join(eth).join("device")).expect("symlink");
        symlink(
            "../../../../bus/virtio/drivers/virtio_net",
            root.join("sys/devices/pci0000:00/0000:00:03.0/virtio2/driver"),
        )
        .expect("symlink");
        let lo = "sys/devices/virtual/net/lo";
        w(&format!("{lo}/address"), "00:00:00:00:00:00\n");
        w(&format!("{lo}/type"), "772\n");
        w(&format!("{lo}/mtu"), "65536\n");
        // A link that is down answers EINVAL for carrier; a directory here makes the read
        // fail with EISDIR, which must be noted.
        fs::create_dir_all(root.join(lo).join("carrier")).expect("mkdir");
        fs::create_dir_all(root.join("sys/class/net")).expect("mkdir");
        symlink(format!("../../../{eth}"), root.join("sys/class/net/eth0")).expect("symlink");
        symlink(format!("../../../{lo}"), root.join("sys/class/net/lo")).expect("symlink");
        w("proc/net/fib_trie", FIB_TRIE_TEXT);
        w("proc/net/route", ROUTE_TEXT);

        let mut ctx = Ctx::new(root);
        let nics = collect(&mut ctx);
        assert_eq!(nics.len(), 2);
        let eth0 = &nics[0];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(eth0.mac.as_deref(), Some("02:fc:00:00:00:01"));
        assert_eq!(eth0.driver.as_deref(), Some("virtio_net"));
        assert_eq!(eth0.pci_address.as_deref(), Some("0000:00:03.0"));
        assert_eq!(eth0.speed_mbps, None);
        assert_eq!(eth0.carrier, Some(true));
        assert_eq!(eth0.mtu, Some(1400));
        assert_eq!(eth0.operstate.as_deref(), Some("up"));
        assert!(!eth0.virtual_device);
        assert_eq!(
            eth0.addresses,
            vec![IpAddress {
                address: "192.0.2.2".into(),
                prefix_len: 24
            }]
        );
        let lo = &nics[1];
        assert!(lo.virtual_device);
        assert_eq!(lo.mac, None);
        assert_eq!(lo.carrier, None);
        assert_eq!(lo.addresses.len(), 1);
        assert_eq!(ctx.notes.len(), 1, "{:?}", ctx.notes);
        assert!(ctx.notes[0].path.ends_with("lo/carrier"));
    }
}
