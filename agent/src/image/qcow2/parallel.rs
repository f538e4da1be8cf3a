//! Compressed clusters inflated on a few worker threads, their output put back in file order.
//!
//! Once the map is complete, the converter gathers its work in file order into batches of
//! at most [`BATCH_INPUT`] stored bytes or [`BATCH_OUTPUT`] bytes of output (at least one
//! operation each): the compressed clusters to inflate, and the standard data that passes
//! while any are outstanding. A full batch goes to the next worker, round-robin; at most
//! [`WINDOW_PER_WORKER`] batches per worker are outstanding, past which the converter waits
//! for the oldest. Batches are applied oldest first, each in its own order, so the sink sees
//! the very writes ([`Output`] coalescing included), in the very order, that inflating one
//! cluster at a time gives. A batch whose cluster failed to inflate applies what precedes
//! that cluster, reports it, and everything queued after it is dropped: the first error in
//! file order wins.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::header::Compression;
use super::inflate::Inflater;
use super::output::Output;
use super::{DiskSink, Qcow2Error};

/// Stored bytes (compressed input and standard data) past which a batch is sent.
pub(crate) const BATCH_INPUT: usize = 512 << 10;
/// Output of a batch's clusters past which it is sent.
pub(crate) const BATCH_OUTPUT: usize = 512 << 10;
/// Batches outstanding per worker: one being inflated, one waiting.
pub(crate) const WINDOW_PER_WORKER: usize = 2;
/// Most worker threads.
pub(crate) const MAX_WORKERS: usize = 4;

/// Workers by default: the CPUs available, at most [`MAX_WORKERS`], at least 1 (inline).
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .clamp(1, MAX_WORKERS)
}

/// One piece of work, its bytes at `buf[start..end]` of its batch.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Standard data for guest offset `guest`, read at file offset `host`.
    Data {
        guest: u64,
        host: u64,
        start: usize,
        end: usize,
    },
    /// A compressed cluster stored at `host`; `want` bytes of it are inside the disk.
    Cluster {
        guest: u64,
        host: u64,
        want: usize,
        start: usize,
        end: usize,
    },
}

impl Op {
    fn offsets(self) -> (u64, u64) {
        match self {
            Op::Data { guest, host, .. } | Op::Cluster { guest, host, .. } => (guest, host),
        }
    }
}

#[derive(Debug, Default)]
struct Batch {
    ops: Vec<Op>,
    buf: Vec<u8>,
    /// Output the clusters will make.
    planned: usize,
    /// The clusters' output, back to back (filled by the worker).
    out: Vec<u8>,
    /// The index of the cluster that failed to inflate, and why.
    failed: Option<(usize, String)>,
}

impl Batch {
    fn clear(&mut self) {
        self.ops.clear();
        self.buf.clear();
        self.planned = 0;
        self.out.clear();
        self.failed = None;
    }

    fn full(&self) -> bool {
        self.buf.len() >= BATCH_INPUT || self.planned >= BATCH_OUTPUT
    }

    /// Writes the batch's data and output in order, or reports its failed cluster.
    fn apply(&self, output: &mut Output, sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        let mut out_at = 0;
        for (i, &op) in self.ops.iter().enumerate() {
            match op {
                Op::Data {
                    guest, start, end, ..
                } => output.write(sink, guest, &self.buf[start..end])?,
                Op::Cluster {
                    guest, host, want, ..
                } => {
                    if let Some((at, reason)) = &self.failed
                        && *at == i
                    {
                        return Err(Qcow2Error::Inflate {
                            guest_offset: guest,
                            host_offset: host,
                            reason: reason.clone(),
                        });
                    }
                    let data =
                        self.out
                            .get(out_at..out_at + want)
                            .ok_or_else(|| Qcow2Error::Inflate {
                                guest_offset: guest,
                                host_offset: host,
                                reason: "the inflating thread returned no output (a bug)".into(),
                            })?;
                    output.write(sink, guest, data)?;
                    out_at += want;
                }
            }
        }
        Ok(())
    }
}

struct Job {
    batch: Batch,
    done: SyncSender<Batch>,
}

/// Inflates every cluster of each job's batch, stopping at the first that fails.
fn work(jobs: Receiver<Job>, compression: Compression, cluster_size: usize) {
    let mut inflater = Inflater::new();
    for Job { mut batch, done } in jobs {
        batch.out.clear();
        batch.out.reserve(batch.planned);
        for (i, &op) in batch.ops.iter().enumerate() {
            if let Op::Cluster {
                want, start, end, ..
            } = op
            {
                match inflater.cluster(compression, &batch.buf[start..end], cluster_size, want) {
                    Ok(c) => batch.out.extend_from_slice(c.data),
                    Err(reason) => {
                        batch.failed = Some((i, reason));
                        break;
                    }
                }
            }
        }
        // The converter may have dropped the result after an earlier error.
        let _ = done.send(batch);
    }
}

/// The worker threads and the batches in progress.
pub(crate) struct Pool {
    jobs: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
    /// The batch being gathered.
    open: Batch,
    /// Sent batches, oldest first, with the offsets of their first operation.
    outstanding: VecDeque<(Receiver<Batch>, (u64, u64))>,
    /// Applied batches, for their buffers.
    spare: Vec<Batch>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.jobs.len())
            .field("outstanding", &self.outstanding.len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts `workers` threads; `None` (inflate inline) for fewer than 2 or when no thread
    /// can be started.
    pub fn start(workers: usize, compression: Compression, cluster_size: usize) -> Option<Pool> {
        if workers < 2 {
            return None;
        }
        let mut pool = Pool {
            jobs: Vec::new(),
            threads: Vec::new(),
            next: 0,
            open: Batch::default(),
            outstanding: VecDeque::new(),
            spare: Vec::new(),
        };
        for i in 0..workers.min(MAX_WORKERS) {
            let (tx, rx) = sync_channel(WINDOW_PER_WORKER);
            let spawned = std::thread::Builder::new()
                .name(format!("qcow2-inflate-{i}"))
                .spawn(move || work(rx, compression, cluster_size));
            match spawned {
                Ok(t) => {
                    pool.jobs.push(tx);
                    pool.threads.push(t);
                }
                Err(_) => break,
            }
        }
        (pool.jobs.len() >= 2).then_some(pool)
    }

    /// Nothing queued: writes may go straight to the output.
    pub fn is_idle(&self) -> bool {
        self.open.ops.is_empty() && self.outstanding.is_empty()
    }

    /// Queues standard data, read at `host`, for guest offset `guest`, in pieces that keep
    /// each batch within [`BATCH_INPUT`] (the caller's chunks may be of any size).
    pub fn data(
        &mut self,
        mut guest: u64,
        mut host: u64,
        mut bytes: &[u8],
        output: &mut Output,
        sink: &mut dyn DiskSink,
    ) -> Result<(), Qcow2Error> {
        while !bytes.is_empty() {
            let n = BATCH_INPUT
                .saturating_sub(self.open.buf.len())
                .clamp(1, bytes.len());
            self.data_piece(guest, host, &bytes[..n], output, sink)?;
            (guest, host, bytes) = (guest + n as u64, host + n as u64, &bytes[n..]);
        }
        Ok(())
    }

    fn data_piece(
        &mut self,
        guest: u64,
        host: u64,
        bytes: &[u8],
        output: &mut Output,
        sink: &mut dyn DiskSink,
    ) -> Result<(), Qcow2Error> {
        let b = &mut self.open;
        // Data continuing the last data operation joins it.
        if let Some(Op::Data {
            guest: g,
            start,
            end,
            ..
        }) = b.ops.last_mut()
            && *end == b.buf.len()
            && *g + (*end - *start) as u64 == guest
        {
            *end += bytes.len();
        } else {
            let start = b.buf.len();
            b.ops.push(Op::Data {
                guest,
                host,
                start,
                end: start + bytes.len(),
            });
        }
        b.buf.extend_from_slice(bytes);
        self.send_if_full(output, sink)
    }

    /// Queues a compressed cluster stored at `host` for guest offset `guest`.
    pub fn cluster(
        &mut self,
        guest: u64,
        host: u64,
        want: usize,
        input: &[u8],
        output: &mut Output,
        sink: &mut dyn DiskSink,
    ) -> Result<(), Qcow2Error> {
        let b = &mut self.open;
        let start = b.buf.len();
        b.buf.extend_from_slice(input);
        b.ops.push(Op::Cluster {
            guest,
            host,
            want,
            start,
            end: b.buf.len(),
        });
        b.planned += want;
        self.send_if_full(output, sink)
    }

    fn send_if_full(
        &mut self,
        output: &mut Output,
        sink: &mut dyn DiskSink,
    ) -> Result<(), Qcow2Error> {
        if self.open.full() {
            self.send(output, sink)?;
        }
        Ok(())
    }

    /// Sends the open batch to the next worker, first applying the oldest when the window
    /// is full.
    fn send(&mut self, output: &mut Output, sink: &mut dyn DiskSink) -> Result<(), Qcow2Error> {
        let Some(&first) = self.open.ops.first() else {
            return Ok(());
        };
        while self.outstanding.len() >= self.jobs.len() * WINDOW_PER_WORKER {
            self.apply_oldest(output, sink)?;
        }
        let fresh = self.spare.pop().unwrap_or_default();
        let batch = std::mem::replace(&mut self.open, fresh);
        let (done, result) = sync_channel(1);
        let sent = self.jobs[self.next].send(Job { batch, done });
        self.next = (self.next + 1) % self.jobs.len();
        if sent.is_err() {
            self.clear();
            return Err(lost(first.offsets()));
        }
        self.outstanding.push_back((result, first.offsets()));
        Ok(())
    }

    /// Waits for the oldest batch and applies it.
    fn apply_oldest(
        &mut self,
        output: &mut Output,
        sink: &mut dyn DiskSink,
    ) -> Result<(), Qcow2Error> {
        let Some((result, first)) = self.outstanding.pop_front() else {
            return Ok(());
        };
        let Ok(mut batch) = result.recv() else {
            self.clear();
            return Err(lost(first));
        };
        let r = batch.apply(output, sink);
        if r.is_err() {
            self.clear();
        }
        if self.spare.len() < self.jobs.len() * WINDOW_PER_WORKER {
            batch.clear();
            self.spare.push(batch);
        }
        r
    }

    /// Sends the open batch and applies every outstanding one.
    pub fn drain(
        &mut self,
        output: &mut Output,
        sink: &mut dyn DiskSink,
    ) -> Result<(), Qcow2Error> {
        self.send(output, sink)?;
        while !self.outstanding.is_empty() {
            self.apply_oldest(output, sink)?;
        }
        Ok(())
    }

    /// Drops everything queued (after an error, which later work must not follow).
    fn clear(&mut self) {
        self.open.clear();
        self.outstanding.clear();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.outstanding.clear();
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A worker thread gone (it panicked): a bug, named by the first operation it had.
fn lost((guest_offset, host_offset): (u64, u64)) -> Qcow2Error {
    Qcow2Error::Inflate {
        guest_offset,
        host_offset,
        reason: "the inflating thread stopped (a bug)".into(),
    }
}
