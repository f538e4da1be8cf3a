//! Bytes of the file held by the streaming converter until it knows what they are: data
//! clusters that arrive before the L2 table mapping them, the metadata tables themselves
//! until they are complete, the sector-rounded tail of a compressed cluster that may begin
//! the next one. Bytes arrive in file order and are released by range once used.
//!
//! Storage is a list of segments of at most [`SEGMENT`] bytes, sorted by offset. Releasing
//! the front of a segment only moves its head; a segment of more than 64 KiB whose live part
//! shrinks below a quarter of its allocation is compacted. The memory counted against the
//! caller's bound is the allocation, not the live bytes, so the bound is a true one.

/// Largest segment: new bytes start a new segment past it.
const SEGMENT: usize = 1 << 20;

#[derive(Debug)]
struct Segment {
    /// File offset of `data[0]`.
    start: u64,
    data: Vec<u8>,
    /// `data[..head]` is released.
    head: usize,
}

impl Segment {
    fn live_start(&self) -> u64 {
        self.start + self.head as u64
    }

    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

#[derive(Debug, Default)]
pub(crate) struct Held {
    segments: Vec<Segment>,
    allocated: usize,
}

impl Held {
    /// Memory the held bytes take.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// Holds `bytes` found at `offset`, which is at or past the end of everything held.
    pub fn push(&mut self, mut offset: u64, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = match self.segments.last() {
                Some(s) if s.end() == offset && s.data.len() < SEGMENT => SEGMENT - s.data.len(),
                _ => {
                    let data = Vec::with_capacity(SEGMENT.min(bytes.len().next_power_of_two()));
                    self.allocated += data.capacity();
                    self.segments.push(Segment {
                        start: offset,
                        data,
                        head: 0,
                    });
                    SEGMENT
                }
            };
            let n = room.min(bytes.len());
            if let Some(s) = self.segments.last_mut() {
                let before = s.data.capacity();
                s.data.extend_from_slice(&bytes[..n]);
                self.allocated = self.allocated - before + s.data.capacity();
            }
            offset += n as u64;
            bytes = &bytes[n..];
        }
    }

    /// Calls `f` with the held bytes of `start..end`, in order. When some are not held,
    /// returns the first missing offset (after calling `f` with what precedes it).
    pub fn read<E>(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), u64>, E> {
        let mut at = start;
        let first = self.segments.partition_point(|s| s.end() <= start);
        for s in &self.segments[first..] {
            if at >= end {
                break;
            }
            if s.live_start() > at {
                return Ok(Err(at));
            }
            let to = end.min(s.end());
            let lo = (at - s.start) as usize;
            let hi = (to - s.start) as usize;
            f(&s.data[lo..hi])?;
            at = to;
        }
        Ok(if at >= end { Ok(()) } else { Err(at) })
    }

    /// Forgets the held bytes of `start..end` (bytes not held there are ignored).
    pub fn release(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut i = self.segments.partition_point(|s| s.end() <= start);
        while i < self.segments.len() {
            let (s_live, s_end) = (self.segments[i].live_start(), self.segments[i].end());
            if s_live >= end {
                break;
            }
            if start <= s_live && end >= s_end {
                let gone = self.segments.remove(i);
                self.allocated -= gone.data.capacity();
                continue;
            }
            if start <= s_live {
                // The front goes.
                let s = &mut self.segments[i];
                s.head = (end - s.start) as usize;
            } else if end >= s_end {
                // The back goes.
                let s = &mut self.segments[i];
                s.data.truncate((start - s.start) as usize);
            } else {
                // A hole in the middle: the tail becomes a segment of its own.
                let s = &mut self.segments[i];
                let tail = s.data[(end - s.start) as usize..].to_vec();
                s.data.truncate((start - s.start) as usize);
                let seg = Segment {
                    start: end,
                    data: tail,
                    head: 0,
                };
                self.allocated += seg.data.capacity();
                self.segments.insert(i + 1, seg);
            }
            self.compact(i);
            i += 1;
        }
    }

    fn compact(&mut self, i: usize) {
        let s = &mut self.segments[i];
        let live = s.data.len() - s.head;
        if s.data.capacity() > 64 << 10 && live < s.data.capacity() / 4 {
            let fresh = s.data[s.head..].to_vec();
            self.allocated = self.allocated - s.data.capacity() + fresh.capacity();
            s.start += s.head as u64;
            s.head = 0;
            s.data = fresh;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn get(h: &Held, start: u64, end: u64) -> Result<Vec<u8>, u64> {
        let mut out = Vec::new();
        h.read::<()>(start, end, |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap()
        .map(|()| out)
    }

    #[test]
    fn holds_reads_and_releases_ranges() {
        let mut h = Held::default();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        h.push(100, &data[..1000]);
        h.push(1100, &data[1000..]);
        h.push(5_000_000, &[7; 10]);
        assert_eq!(get(&h, 100, 3_000_100).unwrap(), data);
        assert_eq!(get(&h, 5_000_000, 5_000_010).unwrap(), vec![7; 10]);
        assert_eq!(get(&h, 3_000_000, 5_000_001), Err(3_000_100));
        assert_eq!(get(&h, 50, 200), Err(50));
        h.release(100, 200);
        assert_eq!(get(&h, 150, 250), Err(150));
        assert_eq!(get(&h, 200, 300).unwrap(), data[100..200]);
        h.release(1000, 2000);
        assert_eq!(get(&h, 200, 1000).unwrap(), data[100..900]);
        assert_eq!(get(&h, 1500, 1600), Err(1500));
        assert_eq!(get(&h, 2000, 2_500_000).unwrap(), data[1900..2_499_900]);
        h.release(0, 4_000_000);
        assert_eq!(get(&h, 5_000_000, 5_000_010).unwrap(), vec![7; 10]);
        assert!(h.allocated() < 1000, "{}", h.allocated());
        h.release(0, u64::MAX);
        assert_eq!(h.allocated(), 0);
    }

    #[test]
    fn allocation_follows_releases_from_the_front() {
        let mut h = Held::default();
        let block = vec![1u8; 4096];
        for i in 0..2048u64 {
            h.push(i * 4096, &block);
            if i > 4 {
                h.release(0, (i - 4) * 4096 + 100);
            }
        }
        // About 4 blocks live, at most four times that allocated plus one segment.
        assert!(h.allocated() <= SEGMENT + 4 * 5 * 4096, "{}", h.allocated());
    }
}
