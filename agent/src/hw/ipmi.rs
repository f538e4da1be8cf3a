//! Native driver for the Linux OpenIPMI character device (`/dev/ipmi0`).
//!
//! The ramdisk has no ipmitool: the agent talks to its local BMC through the kernel's
//! `ipmi_devintf` interface itself. A request goes out with `IPMICTL_SEND_COMMAND` addressed
//! to the BMC over the system interface, tagged with a sequence number (`msgid`); the answer
//! is read with `IPMICTL_RECEIVE_MSG_TRUNC` once poll(2) says the descriptor is readable.
//! Answers that do not carry the msgid of the outstanding request (late answers to an attempt
//! that already timed out) are dropped, and a request that gets no answer in time is sent
//! again under a new msgid.
//!
//! This module knows nothing about IPMI commands: it moves `(netfn, cmd, data)` requests and
//! returns the raw response bytes, completion code first, as the `molar_ipmi::Transport`
//! the `molar-ipmi` crate encodes and decodes commands over; `crate::bmc` builds the
//! operations on them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// How long one attempt waits for the BMC's answer. The IPMI specification gives the BMC
/// 5 s on the system interface; the kernel driver has its own retries below that.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts after the first one when the BMC does not answer in time (or answers "busy").
pub const DEFAULT_RETRIES: u32 = 2;
/// The largest request data the kernel accepts (`IPMI_MAX_MSG_LENGTH` minus netfn/cmd room);
/// no command this agent sends comes close.
pub const MAX_REQUEST_DATA: usize = 272;
/// Response buffer size: `IPMI_MAX_MSG_LENGTH` of current kernels, with room to spare.
const RESPONSE_BUFFER: usize = 320;
/// Pause before resending after a "node busy" answer.
const BUSY_BACKOFF: Duration = Duration::from_millis(200);

/// Device nodes tried, relative to the root, in order (the names udev and devfs used).
const DEVICE_NODES: [&str; 3] = ["dev/ipmi0", "dev/ipmi/0", "dev/ipmidev/0"];

/// Errors of the IPMI device layer.
#[derive(Debug, thiserror::Error)]
pub enum IpmiError {
    #[error(
        "no IPMI device at {path}: load the kernel modules ipmi_msghandler, ipmi_si and \
         ipmi_devintf (or the machine has no BMC)"
    )]
    NoDevice { path: PathBuf },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("request data of {len} bytes is over the IPMI limit of {max} bytes")]
    RequestTooLong { len: usize, max: usize },
    #[error("sending request netfn {netfn:#04x} cmd {cmd:#04x} to {path}: {source}")]
    Send {
        path: PathBuf,
        netfn: u8,
        cmd: u8,
        #[source]
        source: io::Error,
    },
    #[error("waiting for a response on {path}: {source}")]
    Poll {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("receiving a response from {path}: {source}")]
    Receive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the BMC did not answer request netfn {netfn:#04x} cmd {cmd:#04x} on {path} \
         ({attempts} attempts of {timeout:?})"
    )]
    Timeout {
        path: PathBuf,
        netfn: u8,
        cmd: u8,
        attempts: u32,
        timeout: Duration,
    },
    #[error("response to netfn {netfn:#04x} cmd {cmd:#04x} from {path} is longer than {len} bytes")]
    Truncated {
        path: PathBuf,
        netfn: u8,
        cmd: u8,
        len: usize,
    },
    #[error("response to netfn {netfn:#04x} cmd {cmd:#04x} from {path} has no completion code")]
    EmptyResponse { path: PathBuf, netfn: u8, cmd: u8 },
}

impl IpmiError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            IpmiError::NoDevice { .. } => "ipmi_no_device",
            IpmiError::Open { .. } => "ipmi_open_failed",
            IpmiError::RequestTooLong { .. } => "ipmi_request_too_long",
            IpmiError::Send { .. } | IpmiError::Poll { .. } | IpmiError::Receive { .. } => {
                "ipmi_io_failed"
            }
            IpmiError::Timeout { .. } => "bmc_timeout",
            IpmiError::Truncated { .. } | IpmiError::EmptyResponse { .. } => "bmc_bad_response",
        }
    }
}

mod ioctl {
    //! `include/uapi/linux/ipmi.h`, the parts needed to talk to the BMC over the system
    //! interface.

    use std::ffi::{c_int, c_long, c_short, c_uchar, c_uint, c_ushort};

    /// `IPMI_SYSTEM_INTERFACE_ADDR_TYPE`
    pub const SYSTEM_INTERFACE_ADDR_TYPE: c_int = 0x0c;
    /// `IPMI_BMC_CHANNEL`
    pub const BMC_CHANNEL: c_short = 0x0f;
    /// `IPMI_RESPONSE_RECV_TYPE`
    pub const RESPONSE_RECV_TYPE: c_int = 1;
    /// `IPMI_MAX_ADDR_SIZE`
    pub const MAX_ADDR_SIZE: usize = 32;

    /// `struct ipmi_system_interface_addr`
    #[repr(C)]
    pub struct SystemInterfaceAddr {
        pub addr_type: c_int,
        pub channel: c_short,
        pub lun: c_uchar,
    }

    /// `struct ipmi_addr`: room for any address type, filled in by the kernel on receive.
    #[repr(C)]
    pub struct Addr {
        pub addr_type: c_int,
        pub channel: c_short,
        pub data: [c_uchar; MAX_ADDR_SIZE],
    }

    /// `struct ipmi_msg`
    #[repr(C)]
    pub struct Msg {
        pub netfn: c_uchar,
        pub cmd: c_uchar,
        pub data_len: c_ushort,
        pub data: *mut c_uchar,
    }

    /// `struct ipmi_req`
    #[repr(C)]
    pub struct Req {
        pub addr: *mut c_uchar,
        pub addr_len: c_uint,
        pub msgid: c_long,
        pub msg: Msg,
    }

    /// `struct ipmi_recv`
    #[repr(C)]
    pub struct Recv {
        pub recv_type: c_int,
        pub addr: *mut c_uchar,
        pub addr_len: c_uint,
        pub msgid: c_long,
        pub msg: Msg,
    }

    const IPMI_IOC_MAGIC: u8 = b'i';
    // `IPMICTL_RECEIVE_MSG_TRUNC`: _IOWR('i', 11, struct ipmi_recv). The truncating variant
    // removes an over-long message from the queue instead of leaving it to block the queue.
    nix::ioctl_readwrite!(receive_msg_trunc, IPMI_IOC_MAGIC, 11, Recv);
    // `IPMICTL_SEND_COMMAND`: declared _IOR('i', 13, struct ipmi_req) by the kernel even
    // though userspace passes the request in.
    nix::ioctl_read!(send_command, IPMI_IOC_MAGIC, 13, Req);
}

/// One message taken from the device's receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// `IPMI_RESPONSE_RECV_TYPE` (1) for responses to our requests.
    pub recv_type: i32,
    pub msgid: i64,
    pub netfn: u8,
    pub cmd: u8,
    /// Bytes written into the caller's buffer (completion code first).
    pub len: usize,
    /// The message was longer than the buffer and was cut to `len` bytes.
    pub truncated: bool,
}

/// Sends one request to the BMC over the system interface (`IPMICTL_SEND_COMMAND`).
pub fn send_command(
    fd: BorrowedFd<'_>,
    msgid: i64,
    netfn: u8,
    cmd: u8,
    data: &[u8],
) -> Result<(), Errno> {
    let data_len = u16::try_from(data.len()).map_err(|_| Errno::EMSGSIZE)?;
    let mut addr = ioctl::SystemInterfaceAddr {
        addr_type: ioctl::SYSTEM_INTERFACE_ADDR_TYPE,
        channel: ioctl::BMC_CHANNEL,
        lun: 0,
    };
    let mut req = ioctl::Req {
        addr: (&raw mut addr).cast(),
        addr_len: std::mem::size_of::<ioctl::SystemInterfaceAddr>() as u32,
        msgid: msgid as std::ffi::c_long,
        msg: ioctl::Msg {
            netfn,
            cmd,
            data_len,
            // The kernel only reads the request data (copy_from_user); the field is mutable
            // only because the same struct type also describes receive buffers.
            data: data.as_ptr().cast_mut(),
        },
    };
    // SAFETY: `req` and the address it points to live on this stack frame for the whole call;
    // `msg.data` points to `data.len()` readable bytes, which is what `data_len` says, and
    // the kernel copies them in before returning, never writing through the pointer.
    unsafe { ioctl::send_command(fd.as_raw_fd(), &mut req) }?;
    Ok(())
}

/// Takes the next message from the device's receive queue into `buf`
/// (`IPMICTL_RECEIVE_MSG_TRUNC`). `EAGAIN` means the queue is empty.
pub fn receive_message(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Received, Errno> {
    let mut addr = ioctl::Addr {
        addr_type: 0,
        channel: 0,
        data: [0; ioctl::MAX_ADDR_SIZE],
    };
    let capacity = u16::try_from(buf.len()).unwrap_or(u16::MAX);
    let mut recv = ioctl::Recv {
        recv_type: 0,
        addr: (&raw mut addr).cast(),
        addr_len: std::mem::size_of::<ioctl::Addr>() as u32,
        msgid: 0,
        msg: ioctl::Msg {
            netfn: 0,
            cmd: 0,
            data_len: capacity,
            data: buf.as_mut_ptr(),
        },
    };
    // SAFETY: `recv`, `addr` and `buf` outlive the call; `addr_len` and `msg.data_len` state
    // the true sizes of the buffers they describe (data_len is at most buf.len()), so the
    // kernel writes only inside them.
    let truncated = match unsafe { ioctl::receive_msg_trunc(fd.as_raw_fd(), &mut recv) } {
        Ok(_) => false,
        // With the _TRUNC request the kernel fills the struct and the buffer with as much
        // as fits, dequeues the message, then reports EMSGSIZE.
        Err(Errno::EMSGSIZE) => true,
        Err(e) => return Err(e),
    };
    Ok(Received {
        recv_type: recv.recv_type,
        msgid: recv.msgid as i64,
        netfn: recv.msg.netfn,
        cmd: recv.msg.cmd,
        len: usize::from(recv.msg.data_len).min(buf.len()),
        truncated,
    })
}

/// Waits until `fd` is readable or `timeout` passes; `Ok(false)` on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool, Errno> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so that a sub-millisecond remainder does not turn into a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid, initialised pollfd that outlives the call, and nfds is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(Errno::last());
    }
    if pfd.revents & libc::POLLNVAL != 0 {
        return Err(Errno::EBADF);
    }
    if pfd.revents & libc::POLLIN == 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        // Nothing to read and nothing ever will be: fail instead of spinning until the
        // deadline.
        return Err(Errno::EIO);
    }
    Ok(pfd.revents & libc::POLLIN != 0)
}

/// The three kernel operations the request loop needs; the device implements them with the
/// ioctls above, tests with a scripted kernel.
trait Kernel {
    fn send(&mut self, msgid: i64, netfn: u8, cmd: u8, data: &[u8]) -> Result<(), Errno>;
    fn wait(&mut self, timeout: Duration) -> Result<bool, Errno>;
    fn receive(&mut self, buf: &mut [u8]) -> Result<Received, Errno>;
}

impl Kernel for File {
    fn send(&mut self, msgid: i64, netfn: u8, cmd: u8, data: &[u8]) -> Result<(), Errno> {
        send_command(self.as_fd(), msgid, netfn, cmd, data)
    }
    fn wait(&mut self, timeout: Duration) -> Result<bool, Errno> {
        wait_readable(self.as_fd(), timeout)
    }
    fn receive(&mut self, buf: &mut [u8]) -> Result<Received, Errno> {
        receive_message(self.as_fd(), buf)
    }
}

/// Sequence numbers and retry policy of one open device.
#[derive(Debug, Clone)]
struct Exchange {
    path: PathBuf,
    next_msgid: i64,
    timeout: Duration,
    retries: u32,
}

impl Exchange {
    fn take_msgid(&mut self) -> i64 {
        let id = self.next_msgid;
        // Wrap well inside the positive range of a 32-bit `long` as well.
        self.next_msgid = if id >= i64::from(i32::MAX) { 1 } else { id + 1 };
        id
    }

    /// Sends a request and returns the matching response, completion code first.
    /// `attempts` is how many times the request may be sent in all.
    fn run(
        &mut self,
        kernel: &mut dyn Kernel,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        attempts: u32,
    ) -> Result<Vec<u8>, IpmiError> {
        if data.len() > MAX_REQUEST_DATA {
            return Err(IpmiError::RequestTooLong {
                len: data.len(),
                max: MAX_REQUEST_DATA,
            });
        }
        let attempts = attempts.max(1);
        let mut buf = [0u8; RESPONSE_BUFFER];
        let mut attempt = 0;
        while attempt < attempts {
            attempt += 1;
            let msgid = self.take_msgid();
            kernel
                .send(msgid, netfn, cmd, data)
                .map_err(|e| IpmiError::Send {
                    path: self.path.clone(),
                    netfn,
                    cmd,
                    source: e.into(),
                })?;
            let deadline = Instant::now() + self.timeout;
            'wait: loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break 'wait;
                }
                match kernel.wait(left) {
                    Ok(true) => {}
                    Ok(false) => break 'wait,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        return Err(IpmiError::Poll {
                            path: self.path.clone(),
                            source: e.into(),
                        });
                    }
                }
                let got = match kernel.receive(&mut buf) {
                    Ok(got) => got,
                    Err(Errno::EAGAIN | Errno::EINTR) => continue,
                    Err(e) => {
                        return Err(IpmiError::Receive {
                            path: self.path.clone(),
                            source: e.into(),
                        });
                    }
                };
                if got.recv_type != ioctl::RESPONSE_RECV_TYPE
                    || got.msgid != msgid
                    || got.cmd != cmd
                {
                    // An event, or the late answer to an attempt we gave up on.
                    continue;
                }
                if got.truncated {
                    return Err(IpmiError::Truncated {
                        path: self.path.clone(),
                        netfn,
                        cmd,
                        len: got.len,
                    });
                }
                let Some(&cc) = buf[..got.len].first() else {
                    return Err(IpmiError::EmptyResponse {
                        path: self.path.clone(),
                        netfn,
                        cmd,
                    });
                };
                if cc == molar_ipmi::completion::NODE_BUSY && attempt < attempts {
                    // Busy means "not executed": safe to send again even for side effects.
                    std::thread::sleep(BUSY_BACKOFF);
                    break 'wait;
                }
                return Ok(buf[..got.len].to_vec());
            }
        }
        Err(IpmiError::Timeout {
            path: self.path.clone(),
            netfn,
            cmd,
            attempts,
            timeout: self.timeout,
        })
    }
}

/// An open `/dev/ipmi0`.
#[derive(Debug)]
pub struct IpmiDevice {
    file: File,
    exchange: Exchange,
}

impl IpmiDevice {
    /// Opens the BMC's device under `root` (`/` on a live system): `dev/ipmi0`, else the
    /// older `dev/ipmi/0` and `dev/ipmidev/0` names. When none exists, the error tells the
    /// operator which kernel modules to load.
    pub fn open(root: &Path) -> Result<Self, IpmiError> {
        for node in DEVICE_NODES {
            let path = root.join(node);
            match Self::open_path(&path) {
                Err(IpmiError::NoDevice { .. }) => continue,
                other => return other,
            }
        }
        Err(IpmiError::NoDevice {
            path: root.join(DEVICE_NODES[0]),
        })
    }

    /// Opens a specific device node.
    pub fn open_path(path: &Path) -> Result<Self, IpmiError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    IpmiError::NoDevice {
                        path: path.to_owned(),
                    }
                } else {
                    IpmiError::Open {
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;
        Ok(Self::from_file(file, path.to_owned()))
    }

    /// Wraps an already open descriptor (`path` is only used in messages).
    pub fn from_file(file: File, path: PathBuf) -> Self {
        Self {
            file,
            exchange: Exchange {
                path,
                next_msgid: 1,
                timeout: DEFAULT_TIMEOUT,
                retries: DEFAULT_RETRIES,
            },
        }
    }

    /// Per-attempt timeout and number of resends after a timeout.
    pub fn with_timeout(mut self, timeout: Duration, retries: u32) -> Self {
        self.exchange.timeout = timeout;
        self.exchange.retries = retries;
        self
    }

    pub fn path(&self) -> &Path {
        &self.exchange.path
    }

    /// Sends a request and returns the response bytes, completion code first, resending
    /// (under a new sequence number) when the BMC does not answer in time.
    pub fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        let attempts = self.exchange.retries.saturating_add(1);
        self.exchange
            .run(&mut self.file, netfn, cmd, data, attempts)
    }

    /// Like [`IpmiDevice::request`] but never resends after a timeout: for commands whose
    /// effect a lost answer must not double (power cycle, BMC reset).
    pub fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        self.exchange.run(&mut self.file, netfn, cmd, data, 1)
    }
}

impl molar_ipmi::Transport for IpmiDevice {
    type Error = IpmiError;

    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        IpmiDevice::request(self, netfn, cmd, data)
    }

    fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        IpmiDevice::request_once(self, netfn, cmd, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::mem::size_of;

    #[test]
    fn structs_and_request_codes_match_the_kernel_abi() {
        assert_eq!(size_of::<ioctl::SystemInterfaceAddr>(), 8);
        assert_eq!(size_of::<ioctl::Addr>(), 40);
        if cfg!(target_pointer_width = "64") {
            assert_eq!(size_of::<ioctl::Msg>(), 16);
            assert_eq!(size_of::<ioctl::Req>(), 40);
            assert_eq!(size_of::<ioctl::Recv>(), 48);
            // Values of IPMICTL_SEND_COMMAND and IPMICTL_RECEIVE_MSG_TRUNC on x86_64.
            assert_eq!(
                nix::request_code_read!(b'i', 13, size_of::<ioctl::Req>()) as u64,
                0x8028_690d
            );
            assert_eq!(
                nix::request_code_readwrite!(b'i', 11, size_of::<ioctl::Recv>()) as u64,
                0xc030_690b
            );
        }
    }

    #[test]
    fn ioctls_on_a_plain_file_fail_with_enotty() {
        let file = tempfile::tempfile().unwrap();
        assert_eq!(
            send_command(file.as_fd(), 1, 0x06, 0x01, &[]),
            Err(Errno::ENOTTY)
        );
        let mut buf = [0u8; 64];
        assert_eq!(receive_message(file.as_fd(), &mut buf), Err(Errno::ENOTTY));

        let mut dev = IpmiDevice::from_file(file, PathBuf::from("/tmp/not-ipmi"));
        let err = dev.request(0x06, 0x01, &[]).unwrap_err();
        assert!(matches!(&err, IpmiError::Send { source, .. }
            if source.raw_os_error() == Some(libc::ENOTTY)));
        assert_eq!(err.code(), "ipmi_io_failed");
        assert_eq!(
            err.to_string(),
            "sending request netfn 0x06 cmd 0x01 to /tmp/not-ipmi: \
             Inappropriate ioctl for device (os error 25)"
        );
    }

    #[test]
    fn missing_device_names_the_modules_to_load() {
        let root = tempfile::tempdir().unwrap();
        let err = IpmiDevice::open(root.path()).unwrap_err();
        assert_eq!(err.code(), "ipmi_no_device");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{}/dev/ipmi0", root.path().display())),
            "{msg}"
        );
        assert!(
            msg.contains("ipmi_si") && msg.contains("ipmi_devintf"),
            "{msg}"
        );
    }

    #[test]
    fn older_device_names_are_found_and_open_errors_are_reported() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev/ipmi")).unwrap();
        std::fs::write(root.path().join("dev/ipmi/0"), b"").unwrap();
        let dev = IpmiDevice::open(root.path()).unwrap();
        assert_eq!(dev.path(), root.path().join("dev/ipmi/0"));

        // A directory where the node should be: opening for writing fails, not "missing".
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev/ipmi0")).unwrap();
        let err = IpmiDevice::open(root.path()).unwrap_err();
        assert_eq!(err.code(), "ipmi_open_failed");
        assert!(err.to_string().starts_with("opening "), "{err}");
    }

    #[test]
    fn wait_readable_times_out_on_an_idle_pipe() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        assert_eq!(
            wait_readable(r.as_fd(), Duration::from_millis(30)),
            Ok(false)
        );
        assert!(start.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn wait_readable_reports_data_and_a_dead_peer() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"x").unwrap();
        assert_eq!(
            wait_readable(r.as_fd(), Duration::from_millis(30)),
            Ok(true)
        );
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert_eq!(
            wait_readable(r.as_fd(), Duration::from_millis(30)),
            Err(Errno::EIO)
        );
    }

    #[test]
    fn oversized_requests_are_refused_before_the_kernel() {
        let file = tempfile::tempfile().unwrap();
        let mut dev = IpmiDevice::from_file(file, PathBuf::from("/dev/ipmi0"));
        let err = dev.request(0x06, 0x01, &[0; 300]).unwrap_err();
        assert_eq!(err.code(), "ipmi_request_too_long");
    }

    /// What the scripted kernel does when asked to wait for the answer to a given send.
    enum Reply {
        /// Nothing arrives before the timeout.
        Silence,
        /// These messages are queued (msgid `None` = the msgid of the send being answered).
        Queue(Vec<(Option<i64>, i32, u8, Vec<u8>)>),
    }

    struct ScriptedKernel {
        sent: Vec<(i64, u8, u8, Vec<u8>)>,
        replies: VecDeque<Reply>,
        queue: VecDeque<(i64, i32, u8, Vec<u8>)>,
    }

    impl ScriptedKernel {
        fn new(replies: Vec<Reply>) -> Self {
            Self {
                sent: vec![],
                replies: replies.into(),
                queue: VecDeque::new(),
            }
        }
    }

    impl Kernel for ScriptedKernel {
        fn send(&mut self, msgid: i64, netfn: u8, cmd: u8, data: &[u8]) -> Result<(), Errno> {
            self.sent.push((msgid, netfn, cmd, data.to_vec()));
            match self.replies.pop_front() {
                Some(Reply::Queue(msgs)) => {
                    for (id, recv_type, cmd, bytes) in msgs {
                        self.queue
                            .push_back((id.unwrap_or(msgid), recv_type, cmd, bytes));
                    }
                }
                Some(Reply::Silence) | None => {}
            }
            Ok(())
        }
        fn wait(&mut self, _timeout: Duration) -> Result<bool, Errno> {
            Ok(!self.queue.is_empty())
        }
        fn receive(&mut self, buf: &mut [u8]) -> Result<Received, Errno> {
            let (msgid, recv_type, cmd, bytes) = self.queue.pop_front().ok_or(Errno::EAGAIN)?;
            let len = bytes.len().min(buf.len());
            buf[..len].copy_from_slice(&bytes[..len]);
            Ok(Received {
                recv_type,
                msgid,
                netfn: 0x07,
                cmd,
                len,
                truncated: len < bytes.len(),
            })
        }
    }

    fn exchange(retries: u32) -> Exchange {
        Exchange {
            path: PathBuf::from("/dev/ipmi0"),
            next_msgid: 1,
            timeout: Duration::from_millis(20),
            retries,
        }
    }

    #[test]
    fn stale_answers_and_events_are_skipped() {
        let mut k = ScriptedKernel::new(vec![Reply::Queue(vec![
            (Some(77), 1, 0x01, vec![0x00, 0xAA]), // late answer to an old request
            (None, 2, 0x01, vec![0x00, 0xBB]),     // an async event
            (None, 1, 0x01, vec![0x00, 0x20, 0x81]),
        ])]);
        let mut ex = exchange(0);
        let resp = ex.run(&mut k, 0x06, 0x01, &[], 1).unwrap();
        assert_eq!(resp, vec![0x00, 0x20, 0x81]);
        assert_eq!(k.sent, vec![(1, 0x06, 0x01, vec![])]);
    }

    #[test]
    fn a_timeout_is_retried_under_a_new_msgid() {
        let mut k = ScriptedKernel::new(vec![
            Reply::Silence,
            Reply::Queue(vec![(None, 1, 0x44, vec![0x00, 0x10])]),
        ]);
        let mut ex = exchange(2);
        let resp = ex.run(&mut k, 0x06, 0x44, &[0x01, 0x02], 3).unwrap();
        assert_eq!(resp, vec![0x00, 0x10]);
        let ids: Vec<i64> = k.sent.iter().map(|s| s.0).collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn a_bmc_that_never_answers_times_out_with_a_clear_error() {
        let mut k = ScriptedKernel::new(vec![Reply::Silence, Reply::Silence]);
        let mut ex = exchange(1);
        let err = ex.run(&mut k, 0x00, 0x01, &[], 2).unwrap_err();
        assert_eq!(err.code(), "bmc_timeout");
        assert_eq!(
            err.to_string(),
            "the BMC did not answer request netfn 0x00 cmd 0x01 on /dev/ipmi0 (2 attempts of 20ms)"
        );
        assert_eq!(k.sent.len(), 2);
    }

    #[test]
    fn busy_is_resent_and_truncation_and_empty_answers_are_errors() {
        let mut k = ScriptedKernel::new(vec![
            Reply::Queue(vec![(None, 1, 0x01, vec![0xC0])]),
            Reply::Queue(vec![(None, 1, 0x01, vec![0x00, 0x01])]),
        ]);
        let resp = exchange(1).run(&mut k, 0x00, 0x01, &[], 2).unwrap();
        assert_eq!(resp, vec![0x00, 0x01]);

        let mut k = ScriptedKernel::new(vec![Reply::Queue(vec![(None, 1, 0x01, vec![0; 400])])]);
        let err = exchange(0).run(&mut k, 0x00, 0x01, &[], 1).unwrap_err();
        assert_eq!(err.code(), "bmc_bad_response");

        let mut k = ScriptedKernel::new(vec![Reply::Queue(vec![(None, 1, 0x01, vec![])])]);
        let err = exchange(0).run(&mut k, 0x00, 0x01, &[], 1).unwrap_err();
        assert!(matches!(err, IpmiError::EmptyResponse { .. }));
    }

    #[test]
    fn msgids_wrap_inside_the_positive_range() {
        let mut ex = exchange(0);
        ex.next_msgid = i64::from(i32::MAX);
        assert_eq!(ex.take_msgid(), i64::from(i32::MAX));
        assert_eq!(ex.take_msgid(), 1);
    }
}
