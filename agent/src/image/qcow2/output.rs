//! The virtual disk side of the converter: data coalesced into large writes (the sink is an
//! `O_DIRECT` device), and the record of which guest clusters got data, from which the
//! zero ranges are emitted at the end.

use super::{DiskSink, Qcow2Error};

/// Largest write handed to the sink (and the one buffer the converter fills).
pub const COALESCE: usize = 4 << 20;

/// Data for consecutive guest offsets, gathered into one write.
#[derive(Debug, Default)]
pub(crate) struct Output {
    buf: Vec<u8>,
    /// Guest offset of `buf[0]`.
    start: u64,
}

impl Output {
    /// Queues `data` for guest offset `offset`; writes whatever does not continue the
    /// queued run, and every full buffer.
    pub fn write(
        &mut self,
        sink: &mut dyn DiskSink,
        mut offset: u64,
        mut data: &[u8],
    ) -> Result<(), Qcow2Error> {
        if !self.buf.is_empty() && offset != self.start + self.buf.len() as u64 {
            self.flush(sink)?;
        }
        while !data.is_empty() {
            if self.buf.is_empty() {
                self.start = offset;
                if self.buf.capacity() < COALESCE {
                    self.buf.reserve_exact(COALESCE);
                }
            }
            let n = (COALESCE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() == COALESCE {
                self.flush(sink)?;
            }
            offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    pub fn flush(&mut self, sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        if !self.buf.is_empty() {
            let offset = self.start;
            sink.write_at(offset, &self.buf)
                .map_err(|source| Qcow2Error::Sink { offset, source })?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Guest clusters that received data, as runs `(first cluster, count)`, merged when each
/// continues the last (the common case: files store data mostly in guest order).
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    runs: Vec<(u32, u32)>,
}

impl Coverage {
    pub fn add(&mut self, first: u32, count: u32) {
        if let Some(last) = self.runs.last_mut()
            && u64::from(last.0) + u64::from(last.1) == u64::from(first)
            && last.1.checked_add(count).is_some()
        {
            last.1 += count;
            return;
        }
        self.runs.push((first, count));
    }

    /// Calls `sink.zeros` for every range of `0..virtual_size` no run covers, each as large
    /// as it can be; returns the bytes so declared.
    pub fn emit_zeros(
        mut self,
        sink: &mut dyn DiskSink,
        cluster_bits: u32,
        virtual_size: u64,
    ) -> Result<u64, Qcow2Error> {
        self.runs.sort_unstable();
        let mut at = 0u64;
        let mut total = 0;
        let mut zero = |from: u64, to: u64, sink: &mut dyn DiskSink| {
            let to = to.min(virtual_size);
            if to > from {
                sink.zeros(from, to - from)
                    .map_err(|source| Qcow2Error::Sink {
                        offset: from,
                        source,
                    })?;
                total += to - from;
            }
            Ok::<(), Qcow2Error>(())
        };
        for &(first, count) in &self.runs {
            let start = u64::from(first) << cluster_bits;
            let end = (u64::from(first) + u64::from(count)) << cluster_bits;
            zero(at, start, sink)?;
            at = at.max(end);
        }
        zero(at, virtual_size, sink)?;
        Ok(total)
    }
}
