//! The four rtnetlink requests the ramdisk needs (link up, address add/delete, default route),
//! encoded by hand: each is one fixed header plus a few attributes, answered by one ACK. This
//! avoids an async netlink stack (rtnetlink, netlink-proto, netlink-packet-*) in the static
//! binary for what fits in a page. Only [`super::sys::LinuxSystem`] calls it; the encoders are
//! pure and unit-tested against the kernel's documented layouts.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = libc::AF_INET as u8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_DHCP: u8 = 16;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// Builds one netlink message: header, fixed body, then (type, payload) attributes.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    out.extend_from_slice(body);
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let total = out.len() as u32;
    out[0..4].copy_from_slice(&total.to_ne_bytes());
    out[4..6].copy_from_slice(&kind.to_ne_bytes());
    out[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid stays 0: the kernel fills in our port id.
    out
}

/// RTM_NEWLINK with IFF_UP set in both flags and change mask (struct ifinfomsg).
pub(crate) fn encode_link_up(ifindex: u32, seq: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&[0, 0]); // ifi_family AF_UNSPEC, pad
    body.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    body.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    message(RTM_NEWLINK, 0, seq, &body, &[])
}

/// RTM_NEWADDR / RTM_DELADDR (struct ifaddrmsg + IFA_LOCAL, IFA_ADDRESS, IFA_BROADCAST).
pub(crate) fn encode_addr(
    add: bool,
    ifindex: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
    seq: u32,
) -> Vec<u8> {
    let mut body = vec![AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    let octets = addr.octets();
    let host_mask = if prefix_len >= 32 {
        0
    } else {
        u32::MAX >> prefix_len
    };
    let broadcast = Ipv4Addr::from(u32::from(addr) | host_mask).octets();
    let attrs: [(u16, &[u8]); 3] = [
        (IFA_LOCAL, &octets),
        (IFA_ADDRESS, &octets),
        (IFA_BROADCAST, &broadcast),
    ];
    if add {
        message(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            seq,
            &body,
            &attrs,
        )
    } else {
        message(RTM_DELADDR, 0, seq, &body, &attrs[..2])
    }
}

/// RTM_NEWROUTE 0.0.0.0/0 via `gateway` dev `ifindex` in the main table (struct rtmsg).
pub(crate) fn encode_default_route(ifindex: u32, gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut body = vec![
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_DHCP,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    let oif = ifindex.to_ne_bytes();
    let gw = gateway.octets();
    message(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        &body,
        &[(RTA_GATEWAY, &gw), (RTA_OIF, &oif)],
    )
}

/// Reads the errno out of the kernel's answer to request `seq` (0 is success).
pub(crate) fn parse_ack(mut buf: &[u8], seq: u32) -> Option<Result<(), Errno>> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        if len < 16 || len > buf.len() {
            return None;
        }
        if kind == NLMSG_ERROR && msg_seq == seq && len >= 20 {
            let err = i32::from_ne_bytes(buf[16..20].try_into().ok()?);
            return Some(if err == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(-err))
            });
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    None
}

/// Sends one request on a fresh NETLINK_ROUTE socket and waits for its ACK.
fn request(build: impl FnOnce(u32) -> Vec<u8>) -> Result<(), Errno> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let seq = 1;
    let msg = build(seq);
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        if let Some(result) = parse_ack(&buf[..n], seq) {
            return result;
        }
    }
}

pub(crate) fn link_up(ifindex: u32) -> Result<(), Errno> {
    request(|seq| encode_link_up(ifindex, seq))
}

pub(crate) fn addr_change(
    add: bool,
    ifindex: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), Errno> {
    request(|seq| encode_addr(add, ifindex, addr, prefix_len, seq))
}

pub(crate) fn default_route_add(ifindex: u32, gateway: Ipv4Addr) -> Result<(), Errno> {
    request(|seq| encode_default_route(ifindex, gateway, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_up_is_ifinfomsg_with_up_flag_and_mask() {
        let m = encode_link_up(3, 7);
        assert_eq!(m.len(), 32);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWLINK);
        assert_eq!(
            u16::from_ne_bytes(m[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        assert_eq!(u32::from_ne_bytes(m[24..28].try_into().unwrap()), IFF_UP);
        assert_eq!(u32::from_ne_bytes(m[28..32].try_into().unwrap()), IFF_UP);
    }

    #[test]
    fn addr_add_carries_local_address_and_broadcast() {
        let m = encode_addr(true, 2, Ipv4Addr::new(10, 0, 2, 15), 24, 1);
        // header 16 + ifaddrmsg 8 + three 8-byte attributes
        assert_eq!(m.len(), 16 + 8 + 24);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 2);
        assert_eq!(&m[24..32], &[8, 0, IFA_LOCAL as u8, 0, 10, 0, 2, 15]);
        assert_eq!(&m[32..40], &[8, 0, IFA_ADDRESS as u8, 0, 10, 0, 2, 15]);
        assert_eq!(&m[40..48], &[8, 0, IFA_BROADCAST as u8, 0, 10, 0, 2, 255]);
        let del = encode_addr(false, 2, Ipv4Addr::new(10, 0, 2, 15), 24, 1);
        assert_eq!(
            u16::from_ne_bytes(del[4..6].try_into().unwrap()),
            RTM_DELADDR
        );
        assert_eq!(del.len(), 16 + 8 + 16);
    }

    #[test]
    fn default_route_has_gateway_and_oif() {
        let m = encode_default_route(2, Ipv4Addr::new(10, 0, 2, 2), 1);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(
            &m[16..24],
            &[AF_INET, 0, 0, 0, 254, RTPROT_DHCP, 0, RTN_UNICAST]
        );
        assert_eq!(&m[28..36], &[8, 0, RTA_GATEWAY as u8, 0, 10, 0, 2, 2]);
        assert_eq!(&m[36..40], &[8, 0, RTA_OIF as u8, 0]);
    }

    #[test]
    fn ack_parsing_finds_errno_of_our_sequence() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&5u32.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(parse_ack(&ack, 5), Some(Err(Errno::EEXIST)));
        assert_eq!(parse_ack(&ack, 6), None);
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse_ack(&ack, 5), Some(Ok(())));
        assert_eq!(parse_ack(&ack[..10], 5), None);
    }
}
