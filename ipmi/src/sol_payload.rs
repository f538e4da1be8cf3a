//! The SOL payload (IPMI 2.0, 15.9), sans-I/O: packet encoding and decoding, and the
//! acknowledge/retransmit flow of one SOL session as a state machine the caller drives with
//! received packets and its own clock.
//!
//! A packet is four header bytes and character data: packet sequence number (bits 3:0, 0 for
//! an ack-only packet), the acked/nacked sequence number (0: none), the accepted character
//! count, and operation (console to BMC) or status (BMC to console) bits. Each side has at
//! most one data packet unacknowledged; a packet whose acknowledgement does not come is sent
//! again, and a packet received twice (its acknowledgement was lost) is acknowledged again
//! but delivered once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Console-to-BMC operation bits (byte 4).
pub const OP_NACK: u8 = 0x40;
pub const OP_RING_WOR: u8 = 0x20;
pub const OP_BREAK: u8 = 0x10;
pub const OP_DEASSERT_CTS: u8 = 0x08;
pub const OP_DEASSERT_DCD_DSR: u8 = 0x04;
pub const OP_FLUSH_INBOUND: u8 = 0x02;
pub const OP_FLUSH_OUTBOUND: u8 = 0x01;
/// BMC-to-console status bits (byte 4).
pub const ST_NACK: u8 = 0x40;
pub const ST_TRANSFER_UNAVAILABLE: u8 = 0x20;
pub const ST_DEACTIVATING: u8 = 0x10;
pub const ST_OVERRUN: u8 = 0x08;
pub const ST_BREAK: u8 = 0x04;

/// One SOL payload packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolPacket {
    /// 1..=15, or 0 for a packet that only acknowledges.
    pub seq: u8,
    /// The sequence number acknowledged (or nacked), 0 for none.
    pub ack_seq: u8,
    /// How many characters of the acked packet were accepted.
    pub accepted: u8,
    /// Operation or status bits.
    pub flags: u8,
    pub data: Vec<u8>,
}

/// Why bytes are not a SOL packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolPacketError {
    #[error("SOL packet of {0} bytes is shorter than its 4-byte header")]
    Short(usize),
}

impl SolPacket {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.data.len());
        v.extend_from_slice(&[
            self.seq & 0x0F,
            self.ack_seq & 0x0F,
            self.accepted,
            self.flags,
        ]);
        v.extend_from_slice(&self.data);
        v
    }

    /// Decodes a packet; reserved bits of the sequence numbers are ignored.
    pub fn decode(b: &[u8]) -> Result<SolPacket, SolPacketError> {
        let [seq, ack_seq, accepted, flags, data @ ..] = b else {
            return Err(SolPacketError::Short(b.len()));
        };
        Ok(SolPacket {
            seq: seq & 0x0F,
            ack_seq: ack_seq & 0x0F,
            accepted: *accepted,
            flags: *flags,
            data: data.to_vec(),
        })
    }
}

/// What the BMC told the console, from one received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SolEvent {
    /// Characters from the host's serial port.
    Data(Vec<u8>),
    /// The BMC saw a break on the serial line.
    BreakDetected,
    /// The BMC dropped characters (its buffer overran).
    Overrun,
    /// The BMC is ending the SOL session.
    Deactivating,
}

/// Why the session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolError {
    #[error("the BMC did not acknowledge SOL packet {seq} after {attempts} attempts")]
    NoAck { seq: u8, attempts: u32 },
}

/// Timing and size limits of a session.
#[derive(Debug, Clone, Copy)]
pub struct SolConfig {
    /// Largest character data of one packet sent to the BMC (Activate Payload's inbound
    /// size less the header).
    pub max_data: usize,
    pub retry_interval: Duration,
    pub attempts: u32,
    /// Most bytes queued for the BMC; more is refused by [`SolSession::queue`].
    pub max_queued: usize,
}

impl Default for SolConfig {
    fn default() -> Self {
        SolConfig {
            max_data: 200,
            retry_interval: Duration::from_millis(500),
            attempts: 8,
            max_queued: 64 * 1024,
        }
    }
}

/// Activate Payload's inbound size is the whole payload; the data part is 4 bytes less,
/// and at least one byte so a BMC answering nonsense cannot stall the session.
pub fn max_data_for(inbound_size: u16) -> usize {
    (inbound_size as usize).saturating_sub(4).clamp(1, 255)
}

#[derive(Debug)]
struct InFlight {
    seq: u8,
    data: Vec<u8>,
    flags: u8,
    sent_at: Instant,
    attempts: u32,
}

/// One SOL session's flow, console side.
#[derive(Debug)]
pub struct SolSession {
    cfg: SolConfig,
    queue: VecDeque<u8>,
    pending_break: bool,
    in_flight: Option<InFlight>,
    next_seq: u8,
    /// The last BMC packet delivered (to drop a retransmission), and the ack still owed.
    last_rx: Option<(u8, u8)>,
    owe_ack: Option<(u8, u8)>,
    /// The BMC said it cannot take characters now: wait a retry interval before sending.
    paused_until: Option<Instant>,
}

impl SolSession {
    pub fn new(cfg: SolConfig) -> Self {
        SolSession {
            cfg,
            queue: VecDeque::new(),
            pending_break: false,
            in_flight: None,
            next_seq: 1,
            last_rx: None,
            owe_ack: None,
            paused_until: None,
        }
    }

    /// Queues characters for the host; false (nothing queued) when the queue is full.
    pub fn queue(&mut self, data: &[u8]) -> bool {
        if self.queue.len() + data.len() > self.cfg.max_queued {
            return false;
        }
        self.queue.extend(data);
        true
    }

    /// Sends a break on the host's serial line with the next packet.
    pub fn send_break(&mut self) {
        self.pending_break = true;
    }

    /// Whether all queued characters were accepted by the BMC.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_none() && !self.pending_break
    }

    /// Handles one packet from the BMC: what it said, in order.
    pub fn receive(&mut self, p: &SolPacket, now: Instant) -> Vec<SolEvent> {
        let mut events = Vec::new();
        if p.ack_seq != 0
            && let Some(f) = &mut self.in_flight
            && f.seq == p.ack_seq
        {
            if p.flags & ST_NACK != 0 {
                // Not accepted now: the same characters go again after a pause.
                self.paused_until = Some(now + self.cfg.retry_interval);
                f.sent_at = now;
                f.attempts = 0;
            } else {
                let accepted = (p.accepted as usize).min(f.data.len());
                // Characters not accepted go first in the next packet.
                for &b in f.data[accepted..].iter().rev() {
                    self.queue.push_front(b);
                }
                self.in_flight = None;
                self.paused_until = None;
            }
        }
        if p.seq != 0 {
            let accepted = p.data.len().min(255) as u8;
            if self.last_rx.map(|(s, _)| s) != Some(p.seq) {
                if !p.data.is_empty() {
                    events.push(SolEvent::Data(p.data.clone()));
                }
                self.last_rx = Some((p.seq, accepted));
            }
            // Acked again even when a duplicate: the first ack was lost.
            self.owe_ack = Some((p.seq, self.last_rx.map_or(accepted, |(_, a)| a)));
        }
        if p.flags & ST_BREAK != 0 {
            events.push(SolEvent::BreakDetected);
        }
        if p.flags & ST_OVERRUN != 0 {
            events.push(SolEvent::Overrun);
        }
        if p.flags & ST_DEACTIVATING != 0 {
            events.push(SolEvent::Deactivating);
        }
        events
    }

    /// The next packet to send now, if any: a retransmission when due, else new characters
    /// (or a break), carrying any acknowledgement owed; else an ack-only packet.
    pub fn poll_transmit(&mut self, now: Instant) -> Result<Option<SolPacket>, SolError> {
        let (ack_seq, accepted) = self.owe_ack.take().unwrap_or((0, 0));
        if let Some(f) = &mut self.in_flight {
            let due = now.saturating_duration_since(f.sent_at) >= self.cfg.retry_interval;
            if due && self.paused_until.is_none_or(|t| now >= t) {
                if f.attempts >= self.cfg.attempts {
                    return Err(SolError::NoAck {
                        seq: f.seq,
                        attempts: f.attempts,
                    });
                }
                f.attempts += 1;
                f.sent_at = now;
                return Ok(Some(SolPacket {
                    seq: f.seq,
                    ack_seq,
                    accepted,
                    flags: f.flags,
                    data: f.data.clone(),
                }));
            }
        } else if (!self.queue.is_empty() || self.pending_break)
            && self.paused_until.is_none_or(|t| now >= t)
        {
            let n = self.queue.len().min(self.cfg.max_data);
            let data: Vec<u8> = self.queue.drain(..n).collect();
            let flags = if std::mem::take(&mut self.pending_break) {
                OP_BREAK
            } else {
                0
            };
            let seq = self.next_seq;
            self.next_seq = if seq >= 15 { 1 } else { seq + 1 };
            self.in_flight = Some(InFlight {
                seq,
                data: data.clone(),
                flags,
                sent_at: now,
                attempts: 1,
            });
            return Ok(Some(SolPacket {
                seq,
                ack_seq,
                accepted,
                flags,
                data,
            }));
        }
        Ok((ack_seq != 0).then(|| SolPacket {
            seq: 0,
            ack_seq,
            accepted,
            flags: 0,
            data: Vec::new(),
        }))
    }

    /// When [`Self::poll_transmit`] next has something to do without new input.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retry = self
            .in_flight
            .as_ref()
            .map(|f| f.sent_at + self.cfg.retry_interval);
        match (retry, self.paused_until) {
            (Some(r), Some(p)) => Some(r.max(p)),
            (r, p) => r.or(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bmc(seq: u8, ack: u8, accepted: u8, flags: u8, data: &[u8]) -> SolPacket {
        SolPacket {
            seq,
            ack_seq: ack,
            accepted,
            flags,
            data: data.to_vec(),
        }
    }

    #[test]
    fn layout_matches_the_spec() {
        let p = SolPacket {
            seq: 3,
            ack_seq: 2,
            accepted: 5,
            flags: OP_BREAK,
            data: b"hi".to_vec(),
        };
        assert_eq!(p.encode(), vec![0x03, 0x02, 0x05, 0x10, b'h', b'i']);
        assert_eq!(SolPacket::decode(&p.encode()), Ok(p));
        // Reserved upper bits of the sequence numbers are ignored.
        let d = SolPacket::decode(&[0xF1, 0xA2, 0, 0]).expect("decode");
        assert_eq!((d.seq, d.ack_seq), (1, 2));
    }

    #[test]
    fn hostile_input_never_panics() {
        for n in 0..4 {
            assert_eq!(
                SolPacket::decode(&vec![0xFF; n]),
                Err(SolPacketError::Short(n))
            );
        }
        let mut s = SolSession::new(SolConfig::default());
        let now = Instant::now();
        s.queue(b"abc");
        let _ = s.poll_transmit(now);
        for b in [[0xFFu8; 4], [0x00; 4], [0x01, 0x01, 0xFF, 0xFF]] {
            let p = SolPacket::decode(&b).expect("decode");
            let _ = s.receive(&p, now);
            let _ = s.poll_transmit(now + Duration::from_secs(1));
        }
        assert_eq!(max_data_for(0), 1);
        assert_eq!(max_data_for(u16::MAX), 255);
    }

    #[test]
    fn data_is_acked_and_duplicates_dropped() {
        let mut s = SolSession::new(SolConfig::default());
        let now = Instant::now();
        assert_eq!(
            s.receive(&bmc(1, 0, 0, 0, b"boot"), now),
            vec![SolEvent::Data(b"boot".to_vec())]
        );
        let ack = s.poll_transmit(now).expect("ok").expect("ack");
        assert_eq!((ack.seq, ack.ack_seq, ack.accepted), (0, 1, 4));
        // The ack was lost: the BMC sends packet 1 again.
        assert_eq!(s.receive(&bmc(1, 0, 0, 0, b"boot"), now), vec![]);
        let ack = s.poll_transmit(now).expect("ok").expect("ack again");
        assert_eq!((ack.ack_seq, ack.accepted), (1, 4));
        assert_eq!(s.poll_transmit(now).expect("ok"), None);
    }

    #[test]
    fn sending_retransmits_and_resends_the_unaccepted_part() {
        let cfg = SolConfig {
            max_data: 4,
            ..SolConfig::default()
        };
        let mut s = SolSession::new(cfg);
        let t0 = Instant::now();
        assert!(s.queue(b"abcdef"));
        let p = s.poll_transmit(t0).expect("ok").expect("packet");
        assert_eq!((p.seq, p.data.as_slice()), (1, &b"abcd"[..]));
        // Nothing new while packet 1 is unacknowledged and not yet due.
        assert_eq!(s.poll_transmit(t0).expect("ok"), None);
        let again = s
            .poll_transmit(t0 + cfg.retry_interval)
            .expect("ok")
            .expect("retransmission");
        assert_eq!(again, p);
        // Only two characters accepted: "cd" goes first next.
        s.receive(&bmc(0, 1, 2, 0, b""), t0);
        let p = s.poll_transmit(t0).expect("ok").expect("packet");
        assert_eq!((p.seq, p.data.as_slice()), (2, &b"cdef"[..]));
        s.receive(&bmc(0, 2, 4, 0, b""), t0);
        assert!(s.idle());
    }

    #[test]
    fn no_ack_ends_the_session_and_break_is_sent() {
        let cfg = SolConfig {
            attempts: 2,
            ..SolConfig::default()
        };
        let mut s = SolSession::new(cfg);
        let mut t = Instant::now();
        s.send_break();
        let p = s.poll_transmit(t).expect("ok").expect("break");
        assert_eq!((p.seq, p.flags, p.data.len()), (1, OP_BREAK, 0));
        t += cfg.retry_interval;
        assert!(s.poll_transmit(t).expect("ok").is_some());
        t += cfg.retry_interval;
        assert_eq!(
            s.poll_transmit(t),
            Err(SolError::NoAck {
                seq: 1,
                attempts: 2
            })
        );
    }

    #[test]
    fn nack_pauses_and_status_bits_are_reported() {
        let mut s = SolSession::new(SolConfig::default());
        let t0 = Instant::now();
        s.queue(b"x");
        s.poll_transmit(t0).expect("ok");
        s.receive(&bmc(0, 1, 0, ST_NACK | ST_TRANSFER_UNAVAILABLE, b""), t0);
        assert_eq!(s.poll_transmit(t0).expect("ok"), None);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            s.poll_transmit(later).expect("ok").expect("again").data,
            b"x"
        );
        let ev = s.receive(
            &bmc(0, 0, 0, ST_BREAK | ST_OVERRUN | ST_DEACTIVATING, b""),
            t0,
        );
        assert_eq!(
            ev,
            vec![
                SolEvent::BreakDetected,
                SolEvent::Overrun,
                SolEvent::Deactivating
            ]
        );
    }

    #[test]
    fn sequence_numbers_wrap_skipping_zero() {
        let mut s = SolSession::new(SolConfig::default());
        let t = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..16 {
            s.queue(b"a");
            let p = s.poll_transmit(t).expect("ok").expect("p");
            seen.push(p.seq);
            s.receive(&bmc(0, p.seq, 1, 0, b""), t);
        }
        assert_eq!(seen[14], 15);
        assert_eq!(seen[15], 1);
        assert!(!seen.contains(&0));
    }
}
