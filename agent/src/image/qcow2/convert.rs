//! [`Converter`]: places the bytes of a qcow2 file, fed in file order from offset 0, onto
//! the virtual disk.
//!
//! The map is a min-heap of extents by host offset (`pending`). As the stream reaches an
//! extent it becomes active: a run of standard clusters is copied through [`Output`] as its
//! bytes pass; a compressed cluster gathers its stored bytes and is inflated when the stream
//! reaches the end of its stored range (or at [`Converter::finish`], for a range cut by the
//! end of the file). Standard extents may overlap nothing; compressed ones overlap each
//! other by their sector-rounded tails, which is how qemu packs them. Once the map is
//! complete, compressed clusters go to the [`Pool`] of inflating threads, and standard data
//! queues behind them while any are outstanding, so the sink sees the writes of inflating
//! inline; an error the converter finds itself first drains the pool, whose earlier error
//! wins.
//!
//! Without a map ([`Converter::streaming`]) the header, the L1 table and each L2 table are
//! taken from the stream as it passes them (`Stream`). Until every L2 table has been read,
//! bytes that no known extent claims are held ([`Held`], bounded by `max_buffer`): when an
//! L2 table arrives, the clusters it maps that have already passed are placed from there.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::header::{Header, PROBE_LEN, Parsed};
use super::held::Held;
use super::inflate::Inflater;
use super::layout::Layout;
use super::map::{self, Builder, Extent, Kind};
use super::output::{Coverage, Output};
use super::parallel::{self, Pool};
use super::verify::Verifier;
use super::{ConvertStats, DiskSink, Qcow2Error};

/// Most extents active at once: compressed clusters overlapping by their tails make two;
/// more means a hostile map making every byte feed many clusters.
const MAX_ACTIVE: usize = 8;

/// An extent whose stored range the stream is in.
#[derive(Debug)]
struct Active {
    extent: Extent,
    end: u64,
    /// Compressed: the stored bytes so far.
    input: Vec<u8>,
}

/// Places the bytes of the qcow2 file, fed in file order from offset 0 (the sequential GET,
/// already hashed by the caller), onto the virtual disk. Memory bounded: see the module
/// documentation of [`super`].
#[derive(Debug)]
pub struct Converter {
    /// File offset of the next byte fed.
    pos: u64,
    header: Option<Header>,
    pending: BinaryHeap<Reverse<Extent>>,
    active: Vec<Active>,
    output: Output,
    coverage: Coverage,
    inflater: Inflater,
    /// A compressed cluster's input buffer, kept for the next one.
    spare: Vec<u8>,
    /// Threads to inflate on once the map is complete (1: inline).
    workers: usize,
    /// Started at the first compressed cluster inflated in parallel.
    pool: Option<Pool>,
    /// While the map is incomplete.
    stream: Option<Stream>,
    stats: ConvertStats,
    /// Most bytes held at once (streaming).
    held_peak: usize,
    failed: bool,
    /// The metadata the map was read from, re-hashed as the stream passes it.
    verifier: Verifier,
    /// Bytes of the target: a larger virtual size is refused before the first write.
    capacity: Option<u64>,
}

/// What the streaming converter waits for next.
#[derive(Debug)]
enum Stage {
    /// The first `need` bytes, to parse the header.
    Header { need: usize },
    /// The L1 table at `offset..end`.
    L1 { offset: u64, end: u64 },
    /// L2 tables by the offset where they end: `(offset, L1 index)`.
    Tables(BTreeMap<u64, Vec<(u64, u32)>>),
}

#[derive(Debug)]
struct Stream {
    max_buffer: usize,
    /// File ranges never held, sorted: metadata no valid image maps as data (the header
    /// cluster, the refcount table, the rest of the L1 table's last cluster), so that a
    /// plain image streams holding nothing but the table being read.
    skip: Vec<(u64, u64)>,
    held: Held,
    stage: Stage,
    builder: Option<Builder>,
}

impl Stream {
    /// The file offset at which the stage's next table is complete.
    fn next_event(&self) -> u64 {
        match &self.stage {
            Stage::Header { need } => *need as u64,
            Stage::L1 { end, .. } => *end,
            Stage::Tables(t) => t.keys().next().copied().unwrap_or(u64::MAX),
        }
    }
}

impl Converter {
    /// The map is known (Range path): no buffering beyond the compressed clusters in
    /// progress.
    pub fn new(layout: Layout) -> Converter {
        let mut c = Converter::empty();
        c.stats.virtual_size = layout.header.virtual_size;
        c.verifier = Verifier::new(layout.checks);
        c.pending = layout.extents.into_iter().map(Reverse).collect();
        c.header = Some(layout.header);
        c
    }

    /// No Range support: learns header, L1 and L2 tables as they pass in the stream; data
    /// clusters that arrive before the L2 table mapping them are held up to `max_buffer`
    /// bytes, past which it fails with [`Qcow2Error::NeedsRandomAccess`].
    pub fn streaming(max_buffer: usize) -> Converter {
        let mut c = Converter::empty();
        c.stream = Some(Stream {
            max_buffer,
            skip: Vec::new(),
            held: Held::default(),
            stage: Stage::Header { need: PROBE_LEN },
            builder: None,
        });
        c
    }

    fn empty() -> Converter {
        Converter {
            pos: 0,
            header: None,
            pending: BinaryHeap::new(),
            active: Vec::new(),
            output: Output::default(),
            coverage: Coverage::default(),
            inflater: Inflater::new(),
            spare: Vec::new(),
            workers: parallel::default_workers(),
            pool: None,
            stream: None,
            stats: ConvertStats::default(),
            held_peak: 0,
            failed: false,
            verifier: Verifier::default(),
            capacity: None,
        }
    }

    /// Refuses a virtual size larger than `capacity` bytes as soon as the header is known,
    /// before anything is written.
    pub fn with_capacity(mut self, capacity: u64) -> Converter {
        self.capacity = Some(capacity);
        self
    }

    fn check_capacity(&self) -> Result<(), Qcow2Error> {
        match (&self.header, self.capacity) {
            (Some(h), Some(c)) if h.virtual_size > c => Err(Qcow2Error::LargerThanTarget {
                virtual_size: h.virtual_size,
                capacity: c,
            }),
            _ => Ok(()),
        }
    }

    /// Inflates compressed clusters on `workers` threads (by default the CPUs available, at
    /// most 4) once the map is complete; 1 inflates them inline, on the caller's thread.
    /// The sink sees the same writes in the same order either way.
    pub fn inflate_workers(mut self, workers: usize) -> Converter {
        self.workers = workers.max(1);
        self
    }

    /// The virtual disk's size, known once the header has passed.
    pub fn virtual_size(&self) -> Option<u64> {
        self.header.as_ref().map(|h| h.virtual_size)
    }

    /// Bytes of the file fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Memory holding bytes whose L2 table has not passed yet (streaming only).
    pub fn held_bytes(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.held.allocated())
    }

    /// The most [`Converter::held_bytes`] has been so far.
    pub fn held_peak(&self) -> usize {
        self.held_peak
    }

    /// Feeds the next bytes of the file (chunks of any size).
    pub fn feed(&mut self, chunk: &[u8], sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        if self.failed {
            return Err(Qcow2Error::AfterError);
        }
        let mut r = self
            .check_capacity()
            .and_then(|()| self.verifier.feed(self.pos, chunk))
            .and_then(|()| self.feed_inner(chunk, sink));
        if r.is_err()
            && let Some(p) = &mut self.pool
        {
            // Work queued before the error lies earlier in the file: its own error wins.
            if let Err(earlier) = p.drain(&mut self.output, sink) {
                r = Err(earlier);
            }
        }
        self.failed = r.is_err();
        r
    }

    fn feed_inner(&mut self, mut chunk: &[u8], sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        while !chunk.is_empty() {
            self.start_pending()?;
            let mut next = self.pos + chunk.len() as u64;
            if let Some(Reverse(e)) = self.pending.peek() {
                next = next.min(e.host);
            }
            for a in &self.active {
                next = next.min(a.end);
            }
            if let Some(s) = &self.stream {
                next = next.min(s.next_event());
            }
            if next <= self.pos {
                // Every boundary above lies past the current offset; should one not, stop
                // rather than loop forever.
                return Err(Qcow2Error::Stalled { offset: self.pos });
            }
            let (now, rest) = chunk.split_at((next - self.pos) as usize);
            self.consume(now, sink)?;
            self.pos = next;
            chunk = rest;
            self.complete_ended(sink)?;
            self.stream_events(sink)?;
        }
        Ok(())
    }

    /// Activates the pending extents that begin at the current offset.
    fn start_pending(&mut self) -> Result<(), Qcow2Error> {
        while let Some(&Reverse(e)) = self.pending.peek() {
            if e.host > self.pos {
                break;
            }
            self.pending.pop();
            self.activate(e)?;
        }
        Ok(())
    }

    fn activate(&mut self, e: Extent) -> Result<(), Qcow2Error> {
        let h = self.header.as_ref().ok_or(Qcow2Error::AfterError)?;
        let standard = matches!(e.kind(), Kind::Standard { .. });
        if let Some(other) = self
            .active
            .iter()
            .find(|a| standard || matches!(a.extent.kind(), Kind::Standard { .. }))
        {
            return Err(Qcow2Error::Overlap {
                offset: e.host,
                other: other.extent.host,
            });
        }
        if self.active.len() >= MAX_ACTIVE {
            return Err(Qcow2Error::Overlap {
                offset: e.host,
                other: self.active[0].extent.host,
            });
        }
        let end = e.host_end(h.cluster_bits);
        let mut input = Vec::new();
        if !standard {
            input = std::mem::take(&mut self.spare);
            input.clear();
        }
        self.active.push(Active {
            extent: e,
            end,
            input,
        });
        Ok(())
    }

    /// Gives the bytes at the current offset to the active extents, and holds them when no
    /// standard extent claims them and the map is incomplete.
    fn consume(&mut self, bytes: &[u8], sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        let mut claimed = false;
        let Some(h) = &self.header else {
            return self.hold(bytes);
        };
        for a in &mut self.active {
            match a.extent.kind() {
                Kind::Standard { .. } => {
                    claimed = true;
                    let guest =
                        (u64::from(a.extent.guest) << h.cluster_bits) + (self.pos - a.extent.host);
                    write_clipped(
                        &mut self.output,
                        &mut self.pool,
                        sink,
                        h.virtual_size,
                        (guest, self.pos),
                        bytes,
                        &mut self.stats,
                    )?;
                }
                Kind::Compressed { .. } => a.input.extend_from_slice(bytes),
            }
        }
        if claimed { Ok(()) } else { self.hold(bytes) }
    }

    fn hold(&mut self, bytes: &[u8]) -> Result<(), Qcow2Error> {
        let Some(s) = &mut self.stream else {
            return Ok(());
        };
        let (mut at, end) = (self.pos, self.pos + bytes.len() as u64);
        let first = s.skip.partition_point(|&(_, e)| e <= at);
        for &(from, to) in &s.skip[first..] {
            if from >= end {
                break;
            }
            if from > at {
                s.held.push(
                    at,
                    &bytes[(at - self.pos) as usize..(from - self.pos) as usize],
                );
            }
            at = at.max(to);
        }
        if at < end {
            s.held.push(at, &bytes[(at - self.pos) as usize..]);
        }
        self.held_peak = self.held_peak.max(s.held.allocated());
        if s.held.allocated() > s.max_buffer {
            return Err(Qcow2Error::NeedsRandomAccess {
                offset: self.pos,
                reason: format!(
                    "more than {} bytes would have to be held that the L2 tables read so far do \
                     not map (data stored before its L2 table, as in compressed images)",
                    s.max_buffer
                ),
            });
        }
        Ok(())
    }

    /// Completes the active extents whose stored range ends at the current offset.
    fn complete_ended(&mut self, sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].end <= self.pos {
                let a = self.active.swap_remove(i);
                self.complete(a, sink, false)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// An extent whose bytes have all been seen (or, at the end, all there are). A compressed
    /// cluster is inflated on the pool once the map is complete, unless `inline`.
    fn complete(
        &mut self,
        a: Active,
        sink: &mut dyn DiskSink,
        inline: bool,
    ) -> Result<(), Qcow2Error> {
        let h = self.header.as_ref().ok_or(Qcow2Error::AfterError)?;
        let e = a.extent;
        match e.kind() {
            Kind::Standard { clusters } => self.coverage.add(e.guest, clusters),
            Kind::Compressed { .. } => {
                let cs = h.cluster_size();
                let guest = u64::from(e.guest) << h.cluster_bits;
                let want = cs.min(h.virtual_size - guest) as usize;
                // Streaming releases held bytes by how much input the stream used, so it
                // inflates inline until the map is complete.
                if !inline && self.stream.is_none() {
                    if self.pool.is_none() && self.workers > 1 {
                        self.pool = Pool::start(self.workers, h.compression, cs as usize);
                        if self.pool.is_none() {
                            self.workers = 1;
                        }
                    }
                    if let Some(p) = &mut self.pool {
                        p.cluster(guest, e.host, want, &a.input, &mut self.output, sink)?;
                        self.stats.data_bytes += want as u64;
                        self.stats.compressed_clusters += 1;
                        self.coverage.add(e.guest, 1);
                        self.spare = a.input;
                        return Ok(());
                    }
                }
                let out = self
                    .inflater
                    .cluster(h.compression, &a.input, cs as usize, want)
                    .map_err(|reason| Qcow2Error::Inflate {
                        guest_offset: guest,
                        host_offset: e.host,
                        reason,
                    })?;
                self.output.write(sink, guest, out.data)?;
                self.stats.data_bytes += out.data.len() as u64;
                self.stats.compressed_clusters += 1;
                self.coverage.add(e.guest, 1);
                if let Some(s) = &mut self.stream {
                    s.held.release(e.host, e.host + out.consumed as u64);
                }
                self.spare = a.input;
            }
        }
        Ok(())
    }

    /// Reads the tables the stream has just completed, and places what they map.
    fn stream_events(&mut self, sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        loop {
            let Some(s) = &mut self.stream else {
                return Ok(());
            };
            if s.next_event() > self.pos {
                return Ok(());
            }
            match &mut s.stage {
                Stage::Header { need } => {
                    let bytes = take(&s.held, 0, *need as u64, "header")?;
                    match Header::parse(&bytes, None)? {
                        Parsed::NeedBytes(n) => *need = n,
                        Parsed::Header(h) => {
                            // The rest of the header cluster is header extensions (and
                            // nothing a valid image maps as data).
                            let cs = h.cluster_size();
                            s.held.release(0, cs);
                            s.skip.push((0, cs));
                            let refcounts = u64::from(h.refcount_table_clusters) * cs;
                            let l1_end = h.l1_offset + h.l1_bytes();
                            let start = h.refcount_table_offset;
                            if start >= cs
                                && start < 1 << 56
                                && start.is_multiple_of(cs)
                                && (start + refcounts <= h.l1_offset || start >= l1_end)
                            {
                                s.skip.push((start, start + refcounts));
                            }
                            s.skip.push((l1_end, l1_end.next_multiple_of(cs)));
                            s.skip.retain(|&(a, b)| a < b);
                            s.skip.sort_unstable();
                            merge_ranges(&mut s.skip);
                            self.stats.virtual_size = h.virtual_size;
                            s.builder = Some(Builder::new(h.cluster_bits));
                            s.stage = Stage::L1 {
                                offset: h.l1_offset,
                                end: h.l1_offset + h.l1_bytes(),
                            };
                            let no_l1 = h.l1_bytes() == 0;
                            self.header = Some(h);
                            self.check_capacity()?;
                            if no_l1 {
                                self.stream = None;
                            }
                        }
                    }
                }
                Stage::L1 { offset, end } => {
                    let (offset, end) = (*offset, *end);
                    let h = self.header.as_ref().ok_or(Qcow2Error::AfterError)?;
                    let l1 = take(&s.held, offset, end, "L1 table")?;
                    s.held.release(offset, end);
                    let mut tables: BTreeMap<u64, Vec<(u64, u32)>> = BTreeMap::new();
                    for (index, l2) in map::l2_offsets(h, &l1, None)? {
                        tables
                            .entry(l2 + h.cluster_size())
                            .or_default()
                            .push((l2, index));
                    }
                    if tables.is_empty() {
                        self.stream = None;
                    } else {
                        s.stage = Stage::Tables(tables);
                    }
                }
                Stage::Tables(tables) => {
                    let Some((end, list)) = tables.pop_first() else {
                        self.stream = None;
                        continue;
                    };
                    let done = tables.is_empty();
                    let h = self.header.as_ref().ok_or(Qcow2Error::AfterError)?;
                    let builder = s.builder.as_mut().ok_or(Qcow2Error::AfterError)?;
                    for &(offset, index) in &list {
                        let table = take(&s.held, offset, end, "L2 table")?;
                        builder.add_l2(h, index, &table, None)?;
                    }
                    let mut found = builder.take();
                    found.sort_unstable();
                    if let Some(&(offset, _)) = list.first() {
                        s.held.release(offset, end);
                    }
                    for e in found {
                        if e.host >= self.pos {
                            self.pending.push(Reverse(e));
                        } else {
                            self.place_passed(e, end, sink)?;
                        }
                    }
                    if done {
                        // The map is complete: nothing held can be needed any more (what
                        // the active compressed clusters need, they have copied).
                        self.stream = None;
                    }
                }
            }
        }
    }

    /// Places an extent whose stored range began before the current offset, from the held
    /// bytes; it stays active if its range goes on past the current offset.
    fn place_passed(
        &mut self,
        e: Extent,
        l2_end: u64,
        sink: &mut dyn DiskSink,
    ) -> Result<(), Qcow2Error> {
        self.activate(e)?;
        let Some(a) = self.active.pop() else {
            return Err(Qcow2Error::AfterError);
        };
        let mut a = a;
        let (Some(h), Some(s)) = (&self.header, &mut self.stream) else {
            return Err(Qcow2Error::AfterError);
        };
        let upto = a.end.min(self.pos);
        let (vsize, cb) = (h.virtual_size, h.cluster_bits);
        let guest0 = u64::from(e.guest) << cb;
        let mut at = e.host;
        let (output, pool, stats) = (&mut self.output, &mut self.pool, &mut self.stats);
        let missing = s.held.read(e.host, upto, |bytes| {
            match e.kind() {
                Kind::Standard { .. } => write_clipped(
                    output,
                    pool,
                    sink,
                    vsize,
                    (guest0 + (at - e.host), at),
                    bytes,
                    stats,
                )?,
                Kind::Compressed { .. } => a.input.extend_from_slice(bytes),
            }
            at += bytes.len() as u64;
            Ok::<(), Qcow2Error>(())
        })?;
        if let Err(offset) = missing {
            return Err(Qcow2Error::NeedsRandomAccess {
                offset,
                reason: format!(
                    "the cluster for guest offset {guest0:#x} is stored at {:#x}, before the L2 \
                     table ending at {l2_end:#x} that maps it, and its bytes were not held",
                    e.host
                ),
            });
        }
        if matches!(e.kind(), Kind::Standard { .. }) {
            s.held.release(e.host, upto);
        }
        if a.end <= self.pos {
            self.complete(a, sink, false)
        } else {
            self.active.push(a);
            Ok(())
        }
    }

    /// Writes `zeros` for every unallocated or zero cluster, checks that every mapped
    /// cluster was seen (a truncated file is an error), returns stats.
    pub fn finish(mut self, sink: &mut dyn DiskSink) -> Result<ConvertStats, Qcow2Error> {
        if self.failed {
            return Err(Qcow2Error::AfterError);
        }
        // What is queued lies before anything checked here.
        if let Some(p) = &mut self.pool {
            p.drain(&mut self.output, sink)?;
        }
        self.verifier.finish(self.pos)?;
        if let Some(s) = &self.stream {
            let (what, offset) = match &s.stage {
                Stage::Header { .. } => ("header", 0),
                Stage::L1 { offset, .. } => ("L1 table", *offset),
                Stage::Tables(t) => (
                    "L2 table",
                    t.values().flatten().map(|&(o, _)| o).min().unwrap_or(0),
                ),
            };
            return Err(Qcow2Error::Truncated {
                what,
                offset,
                file_len: self.pos,
            });
        }
        let Some(h) = self.header.clone() else {
            return Err(Qcow2Error::Truncated {
                what: "header",
                offset: 0,
                file_len: self.pos,
            });
        };
        // A compressed cluster's stored range may be cut by the end of the file.
        while let Some(a) = self.active.pop() {
            if matches!(a.extent.kind(), Kind::Standard { .. }) {
                return Err(Qcow2Error::Truncated {
                    what: "data cluster",
                    offset: a.extent.host,
                    file_len: self.pos,
                });
            }
            let host = a.extent.host;
            self.complete(a, sink, true).map_err(|e| match e {
                Qcow2Error::Inflate { .. } => Qcow2Error::Truncated {
                    what: "compressed cluster",
                    offset: host,
                    file_len: self.pos,
                },
                other => other,
            })?;
        }
        if let Some(Reverse(e)) = self.pending.peek() {
            let what = match e.kind() {
                Kind::Standard { .. } => "data cluster",
                Kind::Compressed { .. } => "compressed cluster",
            };
            return Err(Qcow2Error::Truncated {
                what,
                offset: e.host,
                file_len: self.pos,
            });
        }
        self.output.flush(sink)?;
        self.stats.zero_bytes = self
            .coverage
            .emit_zeros(sink, h.cluster_bits, h.virtual_size)?;
        Ok(self.stats)
    }
}

/// Merges overlapping ranges of a sorted list.
fn merge_ranges(ranges: &mut Vec<(u64, u64)>) {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *ranges = out;
}

/// Writes the part of `data` (for guest offset `guest`, read at file offset `host`) that lies
/// inside the virtual disk: behind the compressed clusters queued on the pool, if any.
fn write_clipped(
    output: &mut Output,
    pool: &mut Option<Pool>,
    sink: &mut dyn DiskSink,
    virtual_size: u64,
    (guest, host): (u64, u64),
    data: &[u8],
    stats: &mut ConvertStats,
) -> Result<(), Qcow2Error> {
    if guest >= virtual_size {
        return Ok(());
    }
    let n = (virtual_size - guest).min(data.len() as u64) as usize;
    stats.data_bytes += n as u64;
    match pool {
        Some(p) if !p.is_idle() => p.data(guest, host, &data[..n], output, sink),
        _ => output.write(sink, guest, &data[..n]),
    }
}

/// The held bytes of `start..end`, which must all be there.
fn take(held: &Held, start: u64, end: u64, what: &'static str) -> Result<Vec<u8>, Qcow2Error> {
    let mut out = Vec::with_capacity((end - start) as usize);
    let r = held.read::<Qcow2Error>(start, end, |b| {
        out.extend_from_slice(b);
        Ok(())
    })?;
    match r {
        Ok(()) => Ok(out),
        Err(offset) => Err(Qcow2Error::NeedsRandomAccess {
            offset,
            reason: format!(
                "the {what} at {start:#x} was not held when the stream reached it (it lies \
                 before the table that names it, or inside data already placed)"
            ),
        }),
    }
}
