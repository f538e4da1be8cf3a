//! Ramdisk networking: bring every Ethernet link up, wait for carrier, run DHCPv4 on each link
//! with carrier until one gets a lease, configure the address (and default route when the lease
//! has a router) through [`System`], then keep the lease: renew at T1 (unicast REQUEST to the
//! server), rebind at T2 (broadcast), start over when it expires or is NAKed, and reconfigure
//! when the address changes. The DHCP client is a sans-IO state machine ([`DhcpClient`]) driven
//! by packets and deadlines, so it is tested on encoded packets; messages are encoded with
//! `dhcproto`. The socket is UDP on 0.0.0.0:68 with SO_BINDTODEVICE and SO_BROADCAST, and every
//! request sets the BROADCAST flag, so replies reach a link that has no address yet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use futures::FutureExt;
use nix::errno::Errno;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::sys::System;

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
/// After this long without any link with carrier, say so on the console.
const CARRIER_WAIT: Duration = Duration::from_secs(5);
/// How often links and their carrier are looked at while no lease is held.
const CARRIER_POLL: Duration = Duration::from_millis(50);
/// How long one round of DHCP on all links may take before the links are scanned again.
const ACQUIRE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening the dhcp socket on {link}: {source}")]
    Socket {
        link: String,
        #[source]
        source: Errno,
    },
    #[error("dhcp on {link}: {source}")]
    Io {
        link: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    pub fn code(&self) -> &'static str {
        match self {
            NetError::Socket { .. } => "dhcp_socket_failed",
            NetError::Io { .. } => "dhcp_io_failed",
        }
    }
}

/// An Ethernet link as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

impl Link {
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// The Ethernet links (ARPHRD_ETHER, non-zero MAC) under `ROOT/sys/class/net`, by ifindex.
pub fn list_links(root: &Path) -> Vec<Link> {
    let dir = root.join("sys/class/net");
    let mut links = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return links;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let read = |f: &str| std::fs::read_to_string(dir.join(&name).join(f)).ok();
        if read("type").as_deref().map(str::trim) != Some("1") {
            continue;
        }
        let Some(ifindex) = read("ifindex").and_then(|s| s.trim().parse().ok()) else {
            continue;
        };
        let Some(mac) = read("address").and_then(|s| parse_mac(&s)) else {
            continue;
        };
        if mac == [0; 6] {
            continue;
        }
        links.push(Link { name, ifindex, mac });
    }
    links.sort_by_key(|l| l.ifindex);
    links
}

/// `ROOT/sys/class/net/NAME/carrier` is `1` (reading it fails while the link is down).
pub fn has_carrier(root: &Path, name: &str) -> bool {
    std::fs::read_to_string(root.join("sys/class/net").join(name).join("carrier"))
        .is_ok_and(|s| s.trim() == "1")
}

/// `molar-` and the first link's MAC without separators (`molar-525400123456`), or `molar`.
pub fn derive_hostname(links: &[Link]) -> String {
    match links.first() {
        Some(l) => format!(
            "molar-{}",
            l.mac.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        None => "molar".to_string(),
    }
}

/// A DHCP lease; times are offsets on the caller's monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// DHCP option 15, the DNS search domain.
    pub domain: Option<String>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    #[serde(skip)]
    pub acquired: Duration,
    #[serde(skip)]
    pub t1: Duration,
    #[serde(skip)]
    pub t2: Duration,
    #[serde(skip)]
    pub expiry: Duration,
}

impl Lease {
    /// Same address and routing (a renewal that changes nothing needs no reconfiguration).
    pub fn same_config(&self, other: &Lease) -> bool {
        self.address == other.address
            && self.prefix_len == other.prefix_len
            && self.router == other.router
    }
}

/// A datagram the client wants sent to `to`:67.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub bytes: Vec<u8>,
    pub to: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new lease (after DISCOVER or after the old one was lost).
    Bound(Lease),
    /// The lease was extended (possibly with new parameters).
    Renewed(Lease),
    /// The lease expired or was NAKed: the address must go.
    Lost(Lease),
}

/// What the driver must do now: send, report, and call [`DhcpClient::on_timeout`] at `deadline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub transmit: Option<Transmit>,
    pub event: Option<Event>,
    pub deadline: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Offer {
    address: Ipv4Addr,
    server: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Init,
    Selecting { tries: u32 },
    Requesting { offer: Offer, tries: u32 },
    Bound(Lease),
    Renewing(Lease),
    Rebinding(Lease),
}

/// The DHCPv4 client state machine of RFC 2131 (INIT, SELECTING, REQUESTING, BOUND, RENEWING,
/// REBINDING) for one link. It does no I/O and reads no clock: `now` is passed in.
#[derive(Debug)]
pub struct DhcpClient {
    mac: [u8; 6],
    hostname: Option<String>,
    xid: u32,
    rng: u32,
    started: Duration,
    state: State,
}

/// Retransmission delay for attempt `tries` (0-based): 2, 4, 8, 16, 32, 64, 64... seconds.
fn backoff(tries: u32) -> Duration {
    Duration::from_secs(2u64 << tries.min(5))
}

impl DhcpClient {
    pub fn new(mac: [u8; 6], hostname: Option<String>, seed: u32) -> Self {
        let mut client = Self {
            mac,
            hostname,
            xid: 0,
            rng: seed | 1,
            started: Duration::ZERO,
            state: State::Init,
        };
        client.new_xid();
        client
    }

    fn new_xid(&mut self) {
        // xorshift32: transaction ids only need to differ between transactions.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        self.xid = self.rng;
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Init => "init",
            State::Selecting { .. } => "selecting",
            State::Requesting { .. } => "requesting",
            State::Bound(_) => "bound",
            State::Renewing(_) => "renewing",
            State::Rebinding(_) => "rebinding",
        }
    }

    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(l) | State::Renewing(l) | State::Rebinding(l) => Some(l),
            _ => None,
        }
    }

    fn message(&self, kind: MessageType, ciaddr: Ipv4Addr, now: Duration) -> v4::Message {
        let mut msg = v4::Message::new_with_id(
            self.xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        msg.set_flags(v4::Flags::default().set_broadcast());
        msg.set_secs(
            now.saturating_sub(self.started)
                .as_secs()
                .min(u16::MAX as u64) as u16,
        );
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut client_id = vec![1];
        client_id.extend_from_slice(&self.mac);
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        opts.insert(DhcpOption::MaxMessageSize(1500));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
            OptionCode::ServerIdentifier,
        ]));
        if let Some(h) = &self.hostname {
            opts.insert(DhcpOption::Hostname(h.clone()));
        }
        msg
    }

    fn encode(msg: &v4::Message) -> Vec<u8> {
        let mut buf = Vec::with_capacity(300);
        // Encoding into a Vec only fails for option values too long for their length byte,
        // which our fixed options are not; an empty datagram is then simply not sent.
        if msg.encode(&mut Encoder::new(&mut buf)).is_err() {
            buf.clear();
        }
        buf
    }

    fn discover(&mut self, now: Duration, tries: u32) -> Step {
        let msg = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, now);
        self.state = State::Selecting { tries };
        Step {
            transmit: Some(Transmit {
                bytes: Self::encode(&msg),
                to: Ipv4Addr::BROADCAST,
            }),
            event: None,
            deadline: now + backoff(tries),
        }
    }

    fn restart(&mut self, now: Duration, event: Option<Event>) -> Step {
        self.new_xid();
        self.started = now;
        let mut step = self.discover(now, 0);
        step.event = event;
        step
    }

    fn request_selected(&mut self, offer: Offer, tries: u32, now: Duration) -> Step {
        let mut msg = self.message(MessageType::Request, Ipv4Addr::UNSPECIFIED, now);
        msg.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.address));
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(offer.server));
        self.state = State::Requesting { offer, tries };
        Step {
            transmit: Some(Transmit {
                bytes: Self::encode(&msg),
                to: Ipv4Addr::BROADCAST,
            }),
            event: None,
            deadline: now + backoff(tries),
        }
    }

    /// RENEWING (unicast to the server) or REBINDING (broadcast): REQUEST with ciaddr set.
    fn request_extend(&mut self, lease: Lease, rebinding: bool, now: Duration) -> Step {
        let msg = self.message(MessageType::Request, lease.address, now);
        let (to, limit) = if rebinding {
            (Ipv4Addr::BROADCAST, lease.expiry)
        } else {
            (lease.server, lease.t2)
        };
        // RFC 2131 4.4.5: wait half the time left, at least 60 s, never past the next limit.
        let left = limit.saturating_sub(now);
        let deadline = now + (left / 2).max(Duration::from_secs(60)).min(left);
        self.state = if rebinding {
            State::Rebinding(lease)
        } else {
            State::Renewing(lease)
        };
        Step {
            transmit: Some(Transmit {
                bytes: Self::encode(&msg),
                to,
            }),
            event: None,
            deadline,
        }
    }

    /// Starts a transaction: DISCOVER.
    pub fn start(&mut self, now: Duration) -> Step {
        self.restart(now, None)
    }

    /// The deadline of the last step passed.
    pub fn on_timeout(&mut self, now: Duration) -> Step {
        match self.state.clone() {
            State::Init => self.restart(now, None),
            State::Selecting { tries } => self.discover(now, tries + 1),
            State::Requesting { offer, tries } if tries < 3 => {
                self.request_selected(offer, tries + 1, now)
            }
            State::Requesting { .. } => self.restart(now, None),
            State::Bound(lease) => {
                if now >= lease.t1 {
                    self.new_xid();
                    self.request_extend(lease, false, now)
                } else {
                    Step {
                        transmit: None,
                        event: None,
                        deadline: lease.t1,
                    }
                }
            }
            State::Renewing(lease) => self.request_extend(lease.clone(), now >= lease.t2, now),
            State::Rebinding(lease) => {
                if now >= lease.expiry {
                    self.restart(now, Some(Event::Lost(lease)))
                } else {
                    self.request_extend(lease, true, now)
                }
            }
        }
    }

    /// A datagram arrived on port 68. `None` when it is not for this transaction (wrong xid,
    /// MAC, opcode, type for the state, or undecodable): the previous deadline stands.
    pub fn on_packet(&mut self, bytes: &[u8], now: Duration) -> Option<Step> {
        let msg = v4::Message::decode(&mut Decoder::new(bytes)).ok()?;
        if msg.opcode() != v4::Opcode::BootReply
            || msg.xid() != self.xid
            || msg.chaddr().get(..6) != Some(&self.mac[..])
        {
            return None;
        }
        let kind = msg.opts().msg_type()?;
        let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        match (self.state.clone(), kind) {
            (State::Selecting { .. }, MessageType::Offer) => {
                let address = msg.yiaddr();
                if address.is_unspecified() || address.is_broadcast() {
                    return None;
                }
                let server = server_id.unwrap_or(msg.siaddr());
                Some(self.request_selected(Offer { address, server }, 0, now))
            }
            (State::Requesting { offer, .. }, MessageType::Ack) => {
                let lease = lease_from(&msg, server_id.unwrap_or(offer.server), now)?;
                self.state = State::Bound(lease.clone());
                Some(Step {
                    transmit: None,
                    deadline: lease.t1,
                    event: Some(Event::Bound(lease)),
                })
            }
            (State::Requesting { .. }, MessageType::Nak) => Some(self.restart(now, None)),
            (State::Renewing(old) | State::Rebinding(old), MessageType::Ack) => {
                let lease = lease_from(&msg, server_id.unwrap_or(old.server), now)?;
                self.state = State::Bound(lease.clone());
                Some(Step {
                    transmit: None,
                    deadline: lease.t1,
                    event: Some(Event::Renewed(lease)),
                })
            }
            (State::Renewing(old) | State::Rebinding(old), MessageType::Nak) => {
                Some(self.restart(now, Some(Event::Lost(old))))
            }
            _ => None,
        }
    }
}

fn lease_from(msg: &v4::Message, server: Ipv4Addr, now: Duration) -> Option<Lease> {
    let address = msg.yiaddr();
    if address.is_unspecified() {
        return None;
    }
    let opts = msg.opts();
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).leading_ones() as u8,
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied().filter(|r| !r.is_unspecified()),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) if valid_search_domain(d) => Some(d.clone()),
        _ => None,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    // An infinite lease (0xffffffff) is renewed yearly, which is never in a ramdisk.
    let lease = Duration::from_secs(u64::from(lease_secs.min(365 * 86400)));
    let t1 = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) => Duration::from_secs(u64::from(*t)).min(lease),
        _ => lease / 2,
    };
    let t2 = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) => Duration::from_secs(u64::from(*t)).min(lease).max(t1),
        _ => (lease * 7 / 8).max(t1),
    };
    Some(Lease {
        address,
        prefix_len: prefix_len.min(32),
        router,
        dns,
        domain,
        server,
        lease_secs,
        acquired: now,
        t1: now + t1,
        t2: now + t2,
        expiry: now + lease,
    })
}

/// The network as configured, for status and inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetState {
    pub link: Link,
    pub lease: Lease,
}

/// Configures `new` on `ifindex`, removing the previous lease's address if it differs.
pub fn apply_lease(
    sys: &dyn System,
    ifindex: u32,
    old: Option<&Lease>,
    new: &Lease,
) -> Result<(), Errno> {
    if let Some(old) = old
        && (old.address != new.address || old.prefix_len != new.prefix_len)
    {
        let _ = sys.addr_del(ifindex, old.address, old.prefix_len);
    }
    sys.addr_add(ifindex, new.address, new.prefix_len)?;
    if let Some(router) = new.router {
        sys.default_route_add(ifindex, router)?;
    }
    Ok(())
}

/// A domain from a DHCP server that may go into resolv.conf: letters, digits, `-`, `.`.
fn valid_search_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// `/etc/resolv.conf` for a lease: its DNS servers and search domain (so a
/// `molar.controller=` host name resolves; musl reads this file). `None` when the lease
/// names no DNS server.
pub fn resolv_conf(link: &Link, lease: &Lease) -> Option<String> {
    if lease.dns.is_empty() {
        return None;
    }
    let mut out = format!("# from the dhcp lease on {}\n", link.name);
    if let Some(domain) = &lease.domain {
        out.push_str(&format!("search {domain}\n"));
    }
    for server in lease.dns.iter().take(3) {
        out.push_str(&format!("nameserver {server}\n"));
    }
    Some(out)
}

/// Keeps the chosen link's configuration in step with its DHCP client's events.
#[derive(Debug)]
struct LeaseKeeper {
    root: PathBuf,
    link: Link,
    current: Option<Lease>,
}

impl LeaseKeeper {
    /// Applies `event` and returns the state to publish.
    fn handle(&mut self, sys: &dyn System, event: Event) -> Option<NetState> {
        let link = &self.link;
        match event {
            Event::Bound(lease) | Event::Renewed(lease) => {
                if self.current.as_ref().is_some_and(|c| c.same_config(&lease)) {
                    tracing::debug!(link = %link.name, "dhcp lease renewed");
                } else {
                    match apply_lease(sys, link.ifindex, self.current.as_ref(), &lease) {
                        Ok(()) => tracing::info!(
                            link = %link.name, address = %lease.address, prefix = lease.prefix_len,
                            router = ?lease.router, server = %lease.server, lease_secs = lease.lease_secs,
                            "network configured"
                        ),
                        Err(e) => tracing::error!(
                            link = %link.name, error = %e, "configuring the lease failed"
                        ),
                    }
                }
                let dns_changed = self
                    .current
                    .as_ref()
                    .is_none_or(|c| c.dns != lease.dns || c.domain != lease.domain);
                if dns_changed && let Some(conf) = resolv_conf(link, &lease) {
                    let etc = self.root.join("etc");
                    if let Err(e) = std::fs::create_dir_all(&etc)
                        .and_then(|()| std::fs::write(etc.join("resolv.conf"), conf))
                    {
                        tracing::error!(error = %e, "writing /etc/resolv.conf failed");
                    }
                }
                self.current = Some(lease.clone());
                Some(NetState {
                    link: link.clone(),
                    lease,
                })
            }
            Event::Lost(old) => {
                tracing::warn!(link = %link.name, address = %old.address, "dhcp lease lost");
                let _ = sys.addr_del(link.ifindex, old.address, old.prefix_len);
                self.current = None;
                None
            }
        }
    }
}

fn dhcp_socket(link: &Link) -> Result<tokio::net::UdpSocket, NetError> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let err = |source| NetError::Socket {
        link: link.name.clone(),
        source,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(err)?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(&link.name),
    )
    .map_err(err)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)),
    )
    .map_err(err)?;
    let std_socket = std::net::UdpSocket::from(fd);
    tokio::net::UdpSocket::from_std(std_socket).map_err(|source| NetError::Io {
        link: link.name.clone(),
        source,
    })
}

/// Runs the DHCP client on one link until `cancel`, reporting events as `(ifindex, event)`.
async fn run_link(
    link: Link,
    hostname: Option<String>,
    epoch: tokio::time::Instant,
    events: mpsc::Sender<(u32, Event)>,
    cancel: CancellationToken,
) -> Result<(), NetError> {
    let socket = dhcp_socket(&link)?;
    let seed = u32::from_be_bytes([link.mac[2], link.mac[3], link.mac[4], link.mac[5]])
        ^ epoch.elapsed().subsec_nanos()
        ^ std::process::id();
    let mut client = DhcpClient::new(link.mac, hostname, seed);
    let now = || epoch.elapsed();
    let mut step = client.start(now());
    let mut buf = vec![0u8; 1500];
    loop {
        if let Some(tx) = step.transmit.take()
            && !tx.bytes.is_empty()
            && let Err(e) = socket
                .send_to(&tx.bytes, SocketAddrV4::new(tx.to, SERVER_PORT))
                .await
        {
            tracing::warn!(link = %link.name, error = %e, "sending a dhcp message failed");
        }
        if let Some(event) = step.event.take()
            && events.send((link.ifindex, event)).await.is_err()
        {
            return Ok(());
        }
        let deadline = epoch + step.deadline;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(deadline) => step = client.on_timeout(now()),
            received = socket.recv_from(&mut buf) => {
                let (n, _) = received.map_err(|source| NetError::Io { link: link.name.clone(), source })?;
                if let Some(next) = client.on_packet(&buf[..n], now()) {
                    step = next;
                }
            }
        }
    }
}

/// Sets links not set up before (`upped`) up, and returns the links that have carrier now.
fn scan_links(sys: &dyn System, root: &Path, upped: &mut BTreeSet<u32>) -> Vec<Link> {
    let links = list_links(root);
    for link in &links {
        if upped.insert(link.ifindex)
            && let Err(e) = sys.link_up(link.ifindex)
        {
            tracing::warn!(link = %link.name, error = %e, "setting link up failed");
        }
    }
    links
        .into_iter()
        .filter(|l| has_carrier(root, &l.name))
        .collect()
}

/// Starts networking in the background and returns the configured state as it changes
/// (`None` until a lease is configured, and after one is lost). Runs until `cancel`.
pub fn start(
    sys: Arc<dyn System>,
    root: PathBuf,
    hostname: Option<String>,
    cancel: CancellationToken,
) -> watch::Receiver<Option<NetState>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        // A panic in the network task must not leave PID 1 without a network for good.
        while !cancel.is_cancelled() {
            let run = manage(
                sys.clone(),
                root.clone(),
                hostname.clone(),
                &tx,
                cancel.clone(),
            );
            if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
                let msg = super::panic_message(panic.as_ref());
                tracing::error!(panic = %msg, "network task panicked; restarting");
                tx.send_replace(None);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    rx
}

async fn manage(
    sys: Arc<dyn System>,
    root: PathBuf,
    hostname: Option<String>,
    state: &watch::Sender<Option<NetState>>,
    cancel: CancellationToken,
) {
    let epoch = tokio::time::Instant::now();
    let mut upped = BTreeSet::new();
    while !cancel.is_cancelled() {
        // One round: DHCP starts on each link the moment it has carrier (links and carrier
        // are polled, so NICs that come late or are unplugged cost nothing), and the first
        // link to be bound wins.
        let round = cancel.child_token();
        let (events_tx, mut events) = mpsc::channel(8);
        let mut per_link: BTreeMap<u32, (Link, CancellationToken)> = BTreeMap::new();
        let started = tokio::time::Instant::now();
        let mut warned = false;
        let mut poll = tokio::time::interval(CARRIER_POLL);
        let first = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(started + ACQUIRE_WAIT) => break None,
                e = events.recv() => {
                    if let Some((ifindex, Event::Bound(lease))) = e {
                        break Some((ifindex, lease));
                    }
                }
                _ = poll.tick() => {
                    for link in scan_links(sys.as_ref(), &root, &mut upped) {
                        if per_link.contains_key(&link.ifindex) {
                            continue;
                        }
                        tracing::info!(link = %link.name, mac = %link.mac_string(), "dhcp started");
                        let token = round.child_token();
                        per_link.insert(link.ifindex, (link.clone(), token.clone()));
                        let (hostname, events_tx) = (hostname.clone(), events_tx.clone());
                        tokio::spawn(async move {
                            let name = link.name.clone();
                            if let Err(e) = run_link(link, hostname, epoch, events_tx, token).await {
                                tracing::warn!(link = %name, error = %e, "dhcp stopped");
                            }
                        });
                    }
                    if per_link.is_empty() && !warned && started.elapsed() >= CARRIER_WAIT {
                        tracing::warn!(links = upped.len(), "no network link has carrier yet");
                        warned = true;
                    }
                }
            }
        };
        // From here on only the link tasks hold senders, so a closed channel means the
        // winner's task ended.
        drop(events_tx);
        let Some((ifindex, lease)) = first else {
            tracing::warn!(
                links = upped.len(),
                with_carrier = per_link.len(),
                "no dhcp lease on any link; starting over"
            );
            round.cancel();
            continue;
        };
        let Some(link) = per_link.get(&ifindex).map(|(l, _)| l.clone()) else {
            round.cancel();
            continue;
        };
        for (other, (_, token)) in &per_link {
            if *other != ifindex {
                token.cancel();
            }
        }
        let mut keeper = LeaseKeeper {
            root: root.clone(),
            link,
            current: None,
        };
        state.send_replace(keeper.handle(sys.as_ref(), Event::Bound(lease)));
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Some((i, event)) if i == ifindex => {
                    state.send_replace(keeper.handle(sys.as_ref(), event));
                }
                Some(_) => {}
                None => {
                    tracing::warn!(link = %keeper.link.name, "dhcp client stopped; starting over");
                    if let Some(lease) = keeper.current.clone() {
                        keeper.handle(sys.as_ref(), Event::Lost(lease));
                    }
                    state.send_replace(None);
                    break;
                }
            }
        }
        round.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramdisk::sys::{Call, RecordingSystem};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const YIADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn decode(bytes: &[u8]) -> v4::Message {
        v4::Message::decode(&mut Decoder::new(bytes)).unwrap()
    }

    /// A server reply as slirp sends it.
    fn reply(xid: u32, kind: MessageType, extra: &[DhcpOption]) -> Vec<u8> {
        let mut msg = v4::Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            YIADDR,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        msg.set_opcode(v4::Opcode::BootReply);
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        msg.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        msg.opts_mut().insert(DhcpOption::AddressLeaseTime(86400));
        for o in extra {
            msg.opts_mut().insert(o.clone());
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn bound_client() -> (DhcpClient, Lease) {
        let mut c = DhcpClient::new(MAC, Some("molar-525400123456".into()), 42);
        c.start(secs(0));
        let xid = c.xid();
        c.on_packet(&reply(xid, MessageType::Offer, &[]), secs(0))
            .unwrap();
        let step = c
            .on_packet(&reply(xid, MessageType::Ack, &[]), secs(1))
            .unwrap();
        let Some(Event::Bound(lease)) = step.event else {
            panic!("{step:?}")
        };
        (c, lease)
    }

    #[test]
    fn discover_offer_request_ack() {
        let mut c = DhcpClient::new(MAC, Some("molar-525400123456".into()), 42);
        let step = c.start(secs(0));
        assert_eq!(c.state_name(), "selecting");
        let tx = step.transmit.unwrap();
        assert_eq!(tx.to, Ipv4Addr::BROADCAST);
        assert_eq!(step.deadline, secs(2));
        // The fixed BOOTP header, read by hand (RFC 2131 figure 1), independent of dhcproto.
        let b = &tx.bytes;
        assert_eq!(
            &b[0..4],
            &[1, 1, 6, 0],
            "op BOOTREQUEST, htype ethernet, hlen 6, hops 0"
        );
        assert_eq!(u32::from_be_bytes(b[4..8].try_into().unwrap()), c.xid());
        assert_eq!(&b[10..12], &[0x80, 0], "BROADCAST flag");
        assert_eq!(
            &b[12..28],
            &[0u8; 16],
            "ciaddr, yiaddr, siaddr, giaddr all zero"
        );
        assert_eq!(&b[28..34], &MAC);
        assert_eq!(&b[236..240], &[99, 130, 83, 99], "magic cookie");
        // Walk the options: code, length, value; until END.
        let mut options = std::collections::BTreeMap::new();
        let mut i = 240;
        while b[i] != 255 {
            let (code, len) = (b[i], b[i + 1] as usize);
            options.insert(code, b[i + 2..i + 2 + len].to_vec());
            i += 2 + len;
        }
        assert_eq!(options[&53], vec![1], "DHCPDISCOVER");
        assert_eq!(options[&61], vec![1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(options[&12], b"molar-525400123456".to_vec());
        assert_eq!(options[&57], 1500u16.to_be_bytes().to_vec());
        assert_eq!(options[&55], vec![1, 3, 6, 15, 51, 58, 59, 54]);
        let discover = decode(&tx.bytes);
        assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
        assert!(discover.flags().broadcast());
        assert_eq!(discover.chaddr(), &MAC);
        assert_eq!(discover.xid(), c.xid());
        assert!(
            matches!(discover.opts().get(OptionCode::Hostname), Some(DhcpOption::Hostname(h)) if h == "molar-525400123456")
        );
        assert!(
            matches!(discover.opts().get(OptionCode::ClientIdentifier), Some(DhcpOption::ClientIdentifier(id)) if id[..] == [1, 0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );

        let xid = c.xid();
        // Not ours: other xid, other MAC, a request echoed back, garbage.
        assert_eq!(
            c.on_packet(&reply(xid ^ 1, MessageType::Offer, &[]), secs(0)),
            None
        );
        let mut other_mac = reply(xid, MessageType::Offer, &[]);
        other_mac[28] ^= 0xff;
        assert_eq!(c.on_packet(&other_mac, secs(0)), None);
        assert_eq!(c.on_packet(&tx.bytes, secs(0)), None);
        assert_eq!(c.on_packet(b"garbage", secs(0)), None);
        // An ACK before any OFFER is ignored in SELECTING.
        assert_eq!(
            c.on_packet(&reply(xid, MessageType::Ack, &[]), secs(0)),
            None
        );

        let step = c
            .on_packet(&reply(xid, MessageType::Offer, &[]), secs(1))
            .unwrap();
        assert_eq!(c.state_name(), "requesting");
        let request = decode(&step.transmit.unwrap().bytes);
        assert_eq!(request.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(request.xid(), xid);
        assert_eq!(request.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(
            matches!(request.opts().get(OptionCode::RequestedIpAddress), Some(DhcpOption::RequestedIpAddress(a)) if *a == YIADDR)
        );
        assert!(
            matches!(request.opts().get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(a)) if *a == SERVER)
        );
        // A second OFFER while requesting is ignored.
        assert_eq!(
            c.on_packet(&reply(xid, MessageType::Offer, &[]), secs(1)),
            None
        );

        let step = c
            .on_packet(
                &reply(
                    xid,
                    MessageType::Ack,
                    &[
                        DhcpOption::Router(vec![SERVER]),
                        DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
                    ],
                ),
                secs(2),
            )
            .unwrap();
        let Some(Event::Bound(lease)) = step.event else {
            panic!("{step:?}")
        };
        assert_eq!(lease.address, YIADDR);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some(SERVER));
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.t1, secs(2 + 43200));
        assert_eq!(lease.t2, secs(2 + 75600));
        assert_eq!(lease.expiry, secs(2 + 86400));
        assert_eq!(step.deadline, lease.t1);
        assert_eq!(step.transmit, None);
        assert_eq!(c.state_name(), "bound");
    }

    #[test]
    fn retransmits_with_backoff_and_restarts_after_nak() {
        let mut c = DhcpClient::new(MAC, None, 7);
        let first = c.start(secs(0));
        let xid = c.xid();
        let mut deadlines = vec![first.deadline];
        for _ in 0..6 {
            let now = *deadlines.last().unwrap();
            let step = c.on_timeout(now);
            assert_eq!(
                decode(&step.transmit.unwrap().bytes).opts().msg_type(),
                Some(MessageType::Discover)
            );
            deadlines.push(step.deadline);
        }
        assert_eq!(
            deadlines,
            vec![
                secs(2),
                secs(6),
                secs(14),
                secs(30),
                secs(62),
                secs(126),
                secs(190)
            ]
        );
        assert_eq!(c.xid(), xid, "retransmissions keep the transaction");
        let secs_field = decode(&c.on_timeout(secs(190)).transmit.unwrap().bytes).secs();
        assert_eq!(secs_field, 190);

        c.on_packet(&reply(xid, MessageType::Offer, &[]), secs(200))
            .unwrap();
        // REQUEST retransmitted three times, then back to DISCOVER with a new xid.
        for _ in 0..3 {
            let step = c.on_timeout(secs(210));
            assert_eq!(
                decode(&step.transmit.unwrap().bytes).opts().msg_type(),
                Some(MessageType::Request)
            );
        }
        let step = c.on_timeout(secs(220));
        assert_eq!(
            decode(&step.transmit.unwrap().bytes).opts().msg_type(),
            Some(MessageType::Discover)
        );
        assert_ne!(c.xid(), xid);

        let xid = c.xid();
        c.on_packet(&reply(xid, MessageType::Offer, &[]), secs(221))
            .unwrap();
        let step = c
            .on_packet(&reply(xid, MessageType::Nak, &[]), secs(221))
            .unwrap();
        assert_eq!(c.state_name(), "selecting");
        assert_eq!(step.event, None);
        assert_ne!(c.xid(), xid);
    }

    #[test]
    fn renews_at_t1_rebinds_at_t2_and_loses_at_expiry() {
        let (mut c, lease) = bound_client();
        // Early timeout in BOUND just waits for T1.
        assert_eq!(c.on_timeout(secs(100)).deadline, lease.t1);
        let step = c.on_timeout(lease.t1);
        assert_eq!(c.state_name(), "renewing");
        let tx = step.transmit.unwrap();
        assert_eq!(tx.to, SERVER, "renewal is unicast to the server");
        let renew = decode(&tx.bytes);
        assert_eq!(renew.ciaddr(), YIADDR);
        assert!(renew.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
        // Half the time to T2.
        assert_eq!(step.deadline, lease.t1 + (lease.t2 - lease.t1) / 2);

        // No answer until T2: REBINDING broadcasts.
        let step = c.on_timeout(lease.t2);
        assert_eq!(c.state_name(), "rebinding");
        assert_eq!(step.transmit.unwrap().to, Ipv4Addr::BROADCAST);
        // Expiry: the lease is lost, DISCOVER again.
        let step = c.on_timeout(lease.expiry);
        assert_eq!(step.event, Some(Event::Lost(lease.clone())));
        assert_eq!(c.state_name(), "selecting");
        assert_eq!(
            decode(&step.transmit.unwrap().bytes).opts().msg_type(),
            Some(MessageType::Discover)
        );
    }

    #[test]
    fn renewal_ack_and_nak() {
        let (mut c, lease) = bound_client();
        c.on_timeout(lease.t1);
        let xid = c.xid();
        let step = c
            .on_packet(
                &reply(xid, MessageType::Ack, &[DhcpOption::AddressLeaseTime(600)]),
                lease.t1,
            )
            .unwrap();
        let Some(Event::Renewed(renewed)) = step.event else {
            panic!("{step:?}")
        };
        assert!(renewed.same_config(&lease));
        assert_eq!(renewed.t1, lease.t1 + secs(300));
        assert_eq!(c.state_name(), "bound");

        c.on_timeout(renewed.t1);
        let xid = c.xid();
        let step = c
            .on_packet(&reply(xid, MessageType::Nak, &[]), renewed.t1)
            .unwrap();
        assert_eq!(step.event, Some(Event::Lost(renewed)));
        assert_eq!(c.state_name(), "selecting");
    }

    #[test]
    fn dns_servers_and_domain_go_to_resolv_conf() {
        let mut c = DhcpClient::new(MAC, None, 9);
        c.start(secs(0));
        let xid = c.xid();
        c.on_packet(&reply(xid, MessageType::Offer, &[]), secs(0))
            .unwrap();
        let dns = vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 4)];
        let step = c
            .on_packet(
                &reply(
                    xid,
                    MessageType::Ack,
                    &[
                        DhcpOption::DomainNameServer(dns.clone()),
                        DhcpOption::DomainName("lab.example".into()),
                    ],
                ),
                secs(1),
            )
            .unwrap();
        let Some(Event::Bound(lease)) = step.event else {
            panic!("{step:?}")
        };
        assert_eq!(lease.domain.as_deref(), Some("lab.example"));
        let link = Link {
            name: "eth0".into(),
            ifindex: 2,
            mac: MAC,
        };
        let root = tempfile::tempdir().unwrap();
        let mut keeper = LeaseKeeper {
            root: root.path().to_path_buf(),
            link: link.clone(),
            current: None,
        };
        keeper.handle(&RecordingSystem::default(), Event::Bound(lease.clone()));
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "# from the dhcp lease on eth0\nsearch lab.example\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n"
        );
        // A hostile domain is dropped, not written into the file.
        let mut bad = lease.clone();
        bad.domain = None;
        assert!(!resolv_conf(&link, &bad).unwrap().contains("search"));
        assert!(!valid_search_domain("x\nnameserver 6.6.6.6"));
    }

    #[test]
    fn lease_without_options_uses_defaults() {
        let mut msg = v4::Message::new_with_id(
            1,
            Ipv4Addr::UNSPECIFIED,
            YIADDR,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        msg.set_opcode(v4::Opcode::BootReply);
        let lease = lease_from(&msg, SERVER, secs(10)).unwrap();
        assert_eq!(
            (lease.prefix_len, lease.router, lease.lease_secs),
            (24, None, 3600)
        );
        assert_eq!(
            (lease.t1, lease.t2, lease.expiry),
            (secs(1810), secs(3160), secs(3610))
        );
    }

    #[test]
    fn apply_lease_configures_and_replaces() {
        let (_, lease) = bound_client();
        let sys = RecordingSystem::default();
        apply_lease(&sys, 2, None, &lease).unwrap();
        let mut moved = lease.clone();
        moved.address = Ipv4Addr::new(10, 0, 2, 16);
        moved.router = Some(SERVER);
        apply_lease(&sys, 2, Some(&lease), &moved).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::AddrAdd {
                    ifindex: 2,
                    addr: YIADDR,
                    prefix_len: 24
                },
                Call::AddrDel {
                    ifindex: 2,
                    addr: YIADDR,
                    prefix_len: 24
                },
                Call::AddrAdd {
                    ifindex: 2,
                    addr: moved.address,
                    prefix_len: 24
                },
                Call::DefaultRouteAdd {
                    ifindex: 2,
                    gateway: SERVER
                },
            ]
        );
    }

    #[test]
    fn keeper_reconfigures_only_on_change_and_removes_lost_leases() {
        let (_, lease) = bound_client();
        let sys = RecordingSystem::default();
        let link = Link {
            name: "eth0".into(),
            ifindex: 2,
            mac: MAC,
        };
        let root = tempfile::tempdir().unwrap();
        let mut keeper = LeaseKeeper {
            root: root.path().to_path_buf(),
            link: link.clone(),
            current: None,
        };
        let state = keeper.handle(&sys, Event::Bound(lease.clone())).unwrap();
        assert_eq!(state.link, link);
        assert!(
            !root.path().join("etc/resolv.conf").exists(),
            "no dns servers, no resolv.conf"
        );
        let mut renewed = lease.clone();
        renewed.t1 += secs(100);
        assert_eq!(
            keeper
                .handle(&sys, Event::Renewed(renewed.clone()))
                .unwrap()
                .lease,
            renewed
        );
        let mut moved = renewed.clone();
        moved.address = Ipv4Addr::new(10, 0, 2, 20);
        keeper.handle(&sys, Event::Renewed(moved.clone()));
        assert_eq!(keeper.handle(&sys, Event::Lost(moved.clone())), None);
        assert_eq!(
            sys.calls(),
            vec![
                Call::AddrAdd {
                    ifindex: 2,
                    addr: YIADDR,
                    prefix_len: 24
                },
                Call::AddrDel {
                    ifindex: 2,
                    addr: YIADDR,
                    prefix_len: 24
                },
                Call::AddrAdd {
                    ifindex: 2,
                    addr: moved.address,
                    prefix_len: 24
                },
                Call::AddrDel {
                    ifindex: 2,
                    addr: moved.address,
                    prefix_len: 24
                },
            ]
        );
    }

    #[test]
    fn links_are_set_up_once_and_those_with_carrier_returned() {
        let root = tempfile::tempdir().unwrap();
        for (name, index, carrier) in [("eth0", "2", "1"), ("eth1", "3", "0")] {
            let d = root.path().join("sys/class/net").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), "1\n").unwrap();
            std::fs::write(d.join("ifindex"), index).unwrap();
            std::fs::write(d.join("address"), format!("52:54:00:00:00:0{index}\n")).unwrap();
            std::fs::write(d.join("carrier"), carrier).unwrap();
        }
        let sys = RecordingSystem::default();
        let mut upped = BTreeSet::new();
        let names = |links: Vec<Link>| links.into_iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(
            names(scan_links(&sys, root.path(), &mut upped)),
            vec!["eth0"]
        );
        // eth1 gets its cable later; it is not set up twice.
        std::fs::write(root.path().join("sys/class/net/eth1/carrier"), "1\n").unwrap();
        assert_eq!(
            names(scan_links(&sys, root.path(), &mut upped)),
            vec!["eth0", "eth1"]
        );
        assert_eq!(sys.calls(), vec![Call::LinkUp(2), Call::LinkUp(3)]);
        let empty = tempfile::tempdir().unwrap();
        assert!(scan_links(&sys, empty.path(), &mut upped).is_empty());
    }

    #[test]
    fn links_and_hostname_from_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let add = |name: &str, kind: &str, index: &str, mac: &str, carrier: Option<&str>| {
            let d = root.path().join("sys/class/net").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), kind).unwrap();
            std::fs::write(d.join("ifindex"), index).unwrap();
            std::fs::write(d.join("address"), mac).unwrap();
            if let Some(c) = carrier {
                std::fs::write(d.join("carrier"), c).unwrap();
            }
        };
        add("lo", "772\n", "1\n", "00:00:00:00:00:00\n", Some("1\n"));
        add("eth1", "1\n", "3\n", "52:54:00:ab:cd:ef\n", Some("0\n"));
        add("eth0", "1\n", "2\n", "52:54:00:12:34:56\n", Some("1\n"));
        add("bogus", "1\n", "4\n", "not-a-mac\n", None);
        let links = list_links(root.path());
        assert_eq!(
            links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            vec!["eth0", "eth1"]
        );
        assert_eq!(links[0].mac_string(), "52:54:00:12:34:56");
        assert_eq!(derive_hostname(&links), "molar-525400123456");
        assert_eq!(derive_hostname(&[]), "molar");
        assert!(has_carrier(root.path(), "eth0"));
        assert!(!has_carrier(root.path(), "eth1"));
        assert!(!has_carrier(root.path(), "bogus"));
    }
}
