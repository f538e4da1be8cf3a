//! Unit tests over qcow2 files built here in memory, in orders `qemu-img` does not write
//! (tables after their data, L1 after the L2 tables), with hostile entries, and a proptest
//! that random damage to the metadata never panics and never makes the two paths disagree.
//! The tests against real `qemu-img` output are in `agent/tests/qcow2_qemu.rs`.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use proptest::prelude::*;

use super::*;

/// Zero ranges are stored in a [`MemSink`] up to here (every valid test disk is smaller).
const ZEROS_MATERIALISED: u64 = 256 << 20;

/// A memory disk that checks the `DiskSink` contract (virtual sizes here are multiples of
/// 512, so every write is) and grows as written.
struct MemSink {
    disk: Vec<u8>,
    /// End of the last zero range: the next must not touch it (ranges are maximal).
    zeros_end: Option<u64>,
}

impl MemSink {
    fn new() -> MemSink {
        MemSink {
            disk: Vec::new(),
            zeros_end: None,
        }
    }

    fn room(&mut self, end: u64) {
        if self.disk.len() < end as usize {
            // Garbage, so a range neither written nor zeroed shows.
            self.disk.resize(end as usize, 0xee);
        }
    }
}

impl DiskSink for MemSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        assert_eq!(offset % 512, 0);
        assert!(data.len().is_multiple_of(512) && !data.is_empty());
        assert!(data.len() <= COALESCE);
        let end = offset + data.len() as u64;
        self.room(end);
        self.disk[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        assert_eq!(offset % 512, 0);
        assert!(len > 0);
        assert!(
            self.zeros_end.is_none_or(|end| offset > end),
            "zero ranges not coalesced"
        );
        self.zeros_end = Some(offset + len);
        // A damaged header may declare a disk of a TiB: zeros past what data can reach are
        // not materialised (both paths compared make the same calls).
        let end = (offset + len).min(ZEROS_MATERIALISED);
        if offset < end {
            self.room(end);
            self.disk[offset as usize..end as usize].fill(0);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Plain,
    Deflate,
    Zstd,
    /// The v3 zero flag over a still-allocated cluster holding stale bytes.
    ZeroAlloc,
}

/// Where the L2 tables go relative to the data they map.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Order {
    /// Each table just before its data (uncompressed `qemu-img convert`).
    TableFirst,
    /// Each table after its data (what `-c` does for large images).
    DataFirst,
    /// All data, then the L2 tables, then the L1 table at the end.
    TablesLast,
}

struct Built {
    file: Vec<u8>,
    disk: Vec<u8>,
}

/// The bytes of guest cluster `g`: varied, and compressible.
fn content(g: usize, cs: usize) -> Vec<u8> {
    (0..cs)
        .map(|b| ((g * 7 + b / 3) % 253) as u8 ^ (b / 64) as u8)
        .collect()
}

fn compress(how: Store, data: &[u8]) -> Vec<u8> {
    match how {
        Store::Deflate => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Store::Zstd => zstd::bulk::compress(data, 3).unwrap(),
        _ => data.to_vec(),
    }
}

fn align(file: &mut Vec<u8>, to: usize) {
    file.resize(file.len().div_ceil(to) * to, 0);
}

/// Appends the data of the L2 table's clusters, filling in their entries.
fn place_data(file: &mut Vec<u8>, l2: &mut [u64], data: &[(usize, Vec<u8>, Store)], cb: u32) {
    let cs = 1usize << cb;
    let x = 62 - (cb - 8);
    align(file, cs);
    for (i, bytes, how) in data {
        match how {
            Store::Deflate | Store::Zstd => {
                // Packed byte after byte, lengths rounded up to sectors, as qemu does.
                let host = file.len() as u64;
                let end = host + bytes.len() as u64;
                let sectors = (end - 1) / 512 - host / 512;
                l2[*i] = 1 << 62 | sectors << x | host;
                file.extend_from_slice(bytes);
            }
            Store::Plain | Store::ZeroAlloc => {
                align(file, cs);
                let host = file.len() as u64;
                l2[*i] = 1 << 63 | host | u64::from(*how == Store::ZeroAlloc);
                file.extend_from_slice(bytes);
            }
        }
    }
    // The last compressed cluster's sectors must exist.
    align(file, 512);
}

/// Appends an L2 table; returns its offset.
fn place_table(file: &mut Vec<u8>, l2: &[u64], cs: usize) -> u64 {
    align(file, cs);
    let at = file.len() as u64;
    file.extend(l2.iter().flat_map(|e| e.to_be_bytes()));
    at
}

/// A version 3 qcow2 file of `virtual_size` with `1 << cluster_bits` clusters, where
/// `store[g]` says how guest cluster `g` is kept (`None` or past the end: unallocated),
/// its tables placed in `order`. Deflate and zstd cannot share a file: with any zstd
/// cluster the header says zstd, and `Deflate` clusters must not be used with it.
fn build(cluster_bits: u32, virtual_size: u64, store: &[Option<Store>], order: Order) -> Built {
    let cs = 1usize << cluster_bits;
    let l2_entries = cs / 8;
    let clusters = (virtual_size as usize).div_ceil(cs);
    let l1_size = clusters.div_ceil(l2_entries).max(1);
    let zstd = store.contains(&Some(Store::Zstd));
    let mut disk = vec![0u8; virtual_size as usize];
    // Header and L1 clusters (the L1 moves to the end for `TablesLast`).
    let mut file = vec![0u8; 2 * cs];
    let mut l1 = vec![0u64; l1_size];
    let mut deferred = Vec::new();
    for (t, l1e) in l1.iter_mut().enumerate() {
        let mut l2 = vec![0u64; l2_entries];
        let mut data = Vec::new();
        for i in 0..l2_entries {
            let g = t * l2_entries + i;
            if g >= clusters {
                break;
            }
            let Some(how) = store.get(g).copied().flatten() else {
                continue;
            };
            let c = content(g, cs);
            let inside = (virtual_size as usize - g * cs).min(cs);
            if how != Store::ZeroAlloc {
                disk[g * cs..g * cs + inside].copy_from_slice(&c[..inside]);
            }
            data.push((i, compress(how, &c), how));
        }
        if data.is_empty() {
            continue;
        }
        match order {
            Order::TableFirst => {
                align(&mut file, cs);
                let at = file.len();
                file.resize(at + cs, 0);
                place_data(&mut file, &mut l2, &data, cluster_bits);
                let bytes: Vec<u8> = l2.iter().flat_map(|e| e.to_be_bytes()).collect();
                file[at..at + cs].copy_from_slice(&bytes);
                *l1e = 1 << 63 | at as u64;
            }
            Order::DataFirst => {
                place_data(&mut file, &mut l2, &data, cluster_bits);
                *l1e = 1 << 63 | place_table(&mut file, &l2, cs);
            }
            Order::TablesLast => {
                place_data(&mut file, &mut l2, &data, cluster_bits);
                deferred.push((t, l2));
            }
        }
    }
    let mut l1_offset = cs;
    if order == Order::TablesLast {
        for (t, l2) in deferred {
            l1[t] = 1 << 63 | place_table(&mut file, &l2, cs);
        }
        align(&mut file, cs);
        l1_offset = file.len();
        file.resize(l1_offset + (l1_size * 8).div_ceil(cs) * cs, 0);
    }
    assert!(l1_size * 8 <= cs || order == Order::TablesLast);
    for (i, e) in l1.iter().enumerate() {
        let at = l1_offset + 8 * i;
        file[at..at + 8].copy_from_slice(&e.to_be_bytes());
    }
    let h = &mut file[..112];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&(l1_offset as u64).to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    if zstd {
        h[79] = 1 << 3;
        h[104] = 1;
    }
    Built { file, disk }
}

fn feed_chunks(
    conv: &mut Converter,
    file: &[u8],
    sizes: &[usize],
    sink: &mut MemSink,
) -> Result<(), Qcow2Error> {
    let mut at = 0;
    let mut k = 0;
    while at < file.len() {
        let n = sizes
            .get(k % sizes.len().max(1))
            .copied()
            .unwrap_or(4096)
            .max(1)
            .min(file.len() - at);
        conv.feed(&file[at..at + n], sink)?;
        at += n;
        k += 1;
    }
    Ok(())
}

fn ranged(file: &[u8], sizes: &[usize]) -> Result<(Vec<u8>, ConvertStats), Qcow2Error> {
    let layout = Layout::read(&mut &file[..], Some(file.len() as u64))?;
    let mut sink = MemSink::new();
    let mut conv = Converter::new(layout);
    feed_chunks(&mut conv, file, sizes, &mut sink)?;
    let stats = conv.finish(&mut sink)?;
    Ok((sink.disk, stats))
}

fn streamed(
    file: &[u8],
    sizes: &[usize],
    max_buffer: usize,
) -> Result<(Vec<u8>, ConvertStats), Qcow2Error> {
    let mut conv = Converter::streaming(max_buffer);
    let mut sink = MemSink::new();
    feed_chunks(&mut conv, file, sizes, &mut sink)?;
    let stats = conv.finish(&mut sink)?;
    Ok((sink.disk, stats))
}

fn mixed(n: usize) -> Vec<Option<Store>> {
    (0..n)
        .map(|i| match i % 7 {
            0 | 3 => Some(Store::Plain),
            1 | 5 => Some(Store::Deflate),
            2 => None,
            4 => Some(Store::ZeroAlloc),
            _ => Some(Store::Plain),
        })
        .collect()
}

#[test]
fn every_order_converts_through_both_paths() {
    for order in [Order::TableFirst, Order::DataFirst, Order::TablesLast] {
        for (cb, vsize) in [
            (9u32, 300 * 512),
            (12, (4096 * 1100 + 1024) as u64),
            (16, 3 << 20),
        ] {
            let n = (vsize as usize).div_ceil(1 << cb);
            let b = build(cb, vsize, &mixed(n), order);
            for sizes in [vec![1 << 20], vec![1, 7, 512, 4093], vec![100_000, 3]] {
                let (disk, stats) = ranged(&b.file, &sizes).unwrap();
                assert!(disk == b.disk, "{order:?} cb {cb}: ranged output differs");
                let (disk2, stats2) = streamed(&b.file, &sizes, 64 << 20).unwrap();
                assert!(
                    disk2 == b.disk,
                    "{order:?} cb {cb}: streamed output differs"
                );
                assert_eq!(stats, stats2);
                assert_eq!(stats.data_bytes + stats.zero_bytes, vsize);
                assert!(stats.compressed_clusters > 0);
            }
        }
    }
}

#[test]
fn zstd_clusters() {
    let store: Vec<Option<Store>> = (0..40)
        .map(|i| {
            Some(if i % 3 == 0 {
                Store::Plain
            } else {
                Store::Zstd
            })
        })
        .collect();
    let b = build(12, 40 * 4096, &store, Order::DataFirst);
    assert_eq!(ranged(&b.file, &[5000]).unwrap().0, b.disk);
    assert_eq!(streamed(&b.file, &[777], 1 << 20).unwrap().0, b.disk);
}

#[test]
fn table_first_streams_without_holding_data() {
    let b = build(
        12,
        4 << 20,
        &vec![Some(Store::Plain); 1024],
        Order::TableFirst,
    );
    // One table at a time, each just before its data: nothing else is held.
    assert_eq!(streamed(&b.file, &[65536], 2 * 4096).unwrap().0, b.disk);
    assert_eq!(streamed(&b.file, &[333], 2 * 4096).unwrap().0, b.disk);
    let b = build(
        12,
        4 << 20,
        &vec![Some(Store::Plain); 1024],
        Order::DataFirst,
    );
    let err = streamed(&b.file, &[65536], 256 << 10).unwrap_err();
    assert!(matches!(err, Qcow2Error::NeedsRandomAccess { .. }), "{err}");
}

#[test]
fn overlapping_data_clusters_are_refused() {
    let mut b = build(12, 64 * 4096, &[Some(Store::Plain); 64], Order::TableFirst);
    // Point guest cluster 1 at guest cluster 0's data.
    let l1 = u64::from_be_bytes(b.file[40..48].try_into().unwrap()) as usize;
    let l2 = (u64::from_be_bytes(b.file[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00)
        as usize;
    let first = b.file[l2..l2 + 8].to_vec();
    b.file[l2 + 8..l2 + 16].copy_from_slice(&first);
    let err = ranged(&b.file, &[4096]).unwrap_err();
    assert!(matches!(err, Qcow2Error::Overlap { .. }), "{err}");
    let err = streamed(&b.file, &[4096], 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            Qcow2Error::Overlap { .. } | Qcow2Error::NeedsRandomAccess { .. }
        ),
        "{err}"
    );
}

#[test]
fn zero_flags_in_a_version_2_image_are_refused() {
    let mut b = build(
        12,
        64 * 4096,
        &[Some(Store::ZeroAlloc); 64],
        Order::TableFirst,
    );
    b.file[4..8].copy_from_slice(&2u32.to_be_bytes());
    let err = ranged(&b.file, &[4096]).unwrap_err();
    assert!(
        matches!(err, Qcow2Error::ZeroClusterInV2 { guest_offset: 0 }),
        "{err}"
    );
    let err = streamed(&b.file, &[4096], 1 << 20).unwrap_err();
    assert!(
        matches!(err, Qcow2Error::ZeroClusterInV2 { guest_offset: 0 }),
        "{err}"
    );
}

#[test]
fn adjacent_l2_tables_are_read_together() {
    // With tables last, all of them sit side by side: one read for the lot.
    let n = 3000;
    let b = build(
        9,
        n as u64 * 512,
        &vec![Some(Store::Plain); n],
        Order::TablesLast,
    );
    let layout = Layout::read(&mut &b.file[..], Some(b.file.len() as u64)).unwrap();
    // Header, L1, then one read of 47 tables.
    assert_eq!(layout.metadata_read().1, 3);
    assert_eq!(layout.extents(), 1, "a contiguous run is one extent");
    assert_eq!(layout.allocated_bytes(), n as u64 * 512);
}

/// A disk that fails every write.
struct BrokenDisk;

impl DiskSink for BrokenDisk {
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("medium error"))
    }

    fn zeros(&mut self, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::other("medium error"))
    }
}

#[test]
fn a_failing_disk_is_named_with_the_offset() {
    let b = build(16, 128 << 20, &[Some(Store::Plain); 100], Order::TableFirst);
    let layout = Layout::read(&mut &b.file[..], None).unwrap();
    let mut conv = Converter::new(layout);
    let err = conv.feed(&b.file, &mut BrokenDisk).unwrap_err();
    assert_eq!(
        err.to_string(),
        "writing the virtual disk at offset 0x0: medium error"
    );
    assert!(matches!(
        conv.feed(&b.file, &mut BrokenDisk),
        Err(Qcow2Error::AfterError)
    ));
    // Zeros too: a disk with no data at all fails at `finish`.
    let b = build(16, 1 << 20, &[], Order::TableFirst);
    let mut conv = Converter::streaming(1 << 20);
    conv.feed(&b.file, &mut BrokenDisk).unwrap();
    let err = conv.finish(&mut BrokenDisk).unwrap_err();
    assert!(matches!(err, Qcow2Error::Sink { offset: 0, .. }), "{err}");
}

#[test]
fn an_empty_disk_is_all_zeros() {
    let b = build(16, 5 << 20, &[], Order::TableFirst);
    let (disk, stats) = ranged(&b.file, &[100]).unwrap();
    assert_eq!(disk, b.disk);
    assert_eq!(stats.zero_bytes, 5 << 20);
    assert_eq!(streamed(&b.file, &[100], 1 << 20).unwrap().0, b.disk);
}

#[test]
fn feeding_after_an_error_is_refused() {
    let mut conv = Converter::streaming(1 << 20);
    let mut sink = MemSink::new();
    assert!(matches!(
        conv.feed(&[0u8; 100], &mut sink),
        Err(Qcow2Error::BadMagic)
    ));
    assert!(matches!(
        conv.feed(&[0u8; 100], &mut sink),
        Err(Qcow2Error::AfterError)
    ));
    let conv = Converter::streaming(1 << 20);
    let err = conv.finish(&mut sink).unwrap_err();
    assert!(
        matches!(err, Qcow2Error::Truncated { what: "header", .. }),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random damage to the header, L1 and L2 tables and random chunking: never a panic or
    /// a hang, and when both paths accept the file they write the same disk.
    #[test]
    fn damaged_metadata_never_panics(
        cb in prop::sample::select(vec![9u32, 12, 16]),
        order in prop::sample::select(vec![Order::TableFirst, Order::DataFirst, Order::TablesLast]),
        damage in prop::collection::vec((any::<u16>(), any::<u8>()), 0..12),
        table_damage in prop::collection::vec((any::<u16>(), any::<u64>()), 0..6),
        sizes in prop::collection::vec(1usize..70_000, 1..6),
    ) {
        let vsize = 40u64 << cb;
        let mut b = build(cb, vsize, &mixed(40), order);
        let len = b.file.len();
        for (at, v) in damage {
            // Mostly the header, sometimes anywhere.
            let at = if at % 4 == 0 { at as usize % len } else { at as usize % 112 };
            b.file[at] = v;
        }
        for (at, v) in table_damage {
            // Whole 8-byte entries anywhere in the file (L1, L2 or data).
            let at = (at as usize % (len / 8)) * 8;
            b.file[at..at + 8].copy_from_slice(&v.to_be_bytes());
        }
        let r = ranged(&b.file, &sizes);
        let s = streamed(&b.file, &sizes, 1 << 20);
        if let (Ok((d1, s1)), Ok((d2, s2))) = (&r, &s) {
            prop_assert!(d1 == d2, "the paths disagree");
            prop_assert_eq!(s1, s2);
        }
    }

    /// Random header bytes behind a valid magic.
    #[test]
    fn random_headers_never_panic(mut head in prop::collection::vec(any::<u8>(), 112..600), v3 in any::<bool>()) {
        head[0..4].copy_from_slice(&MAGIC);
        head[4..8].copy_from_slice(&(if v3 { 3u32 } else { 2 }).to_be_bytes());
        let _ = ranged(&head, &[37]);
        let _ = streamed(&head, &[37], 1 << 16);
    }
}

/// Every call a converter makes on its sink, in order, over a [`MemSink`].
struct Recording {
    mem: MemSink,
    calls: Vec<(bool, u64, u64)>,
}

impl DiskSink for Recording {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.calls.push((true, offset, data.len() as u64));
        self.mem.write_at(offset, data)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.calls.push((false, offset, len));
        self.mem.zeros(offset, len)
    }
}

/// Converts `file` with `workers` inflating threads, ranged or streamed, recording the
/// sink calls (also those made before an error).
fn converted(
    file: &[u8],
    sizes: &[usize],
    workers: usize,
    ranged: bool,
) -> (Result<ConvertStats, Qcow2Error>, Recording) {
    let mut sink = Recording {
        mem: MemSink::new(),
        calls: Vec::new(),
    };
    let conv = if ranged {
        match Layout::read(&mut &file[..], Some(file.len() as u64)) {
            Ok(layout) => Converter::new(layout),
            Err(e) => return (Err(e), sink),
        }
    } else {
        Converter::streaming(64 << 20)
    };
    let mut conv = conv.inflate_workers(workers);
    let mut at = 0;
    let mut k = 0;
    while at < file.len() {
        let n = sizes[k % sizes.len()].min(file.len() - at);
        if let Err(e) = conv.feed(&file[at..at + n], &mut sink) {
            return (Err(e), sink);
        }
        at += n;
        k += 1;
    }
    (conv.finish(&mut sink), sink)
}

/// Random chunk sizes from 1 byte to 300 KiB.
fn random_sizes(seed: u64) -> Vec<usize> {
    let mut x = seed;
    (0..97)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (x >> 33) as usize;
            if r.is_multiple_of(3) {
                r % 64 + 1
            } else {
                r % 300_000 + 1
            }
        })
        .collect()
}

/// Mostly compressed clusters, runs of plain ones and holes: many batches.
fn mostly_compressed(n: usize, zstd: bool) -> Vec<Option<Store>> {
    let c = if zstd { Store::Zstd } else { Store::Deflate };
    (0..n)
        .map(|i| match i % 23 {
            3 | 4 | 5 | 17 => Some(Store::Plain),
            9 => None,
            13 => Some(Store::ZeroAlloc),
            _ => Some(c),
        })
        .collect()
}

#[test]
fn converter_is_send() {
    fn send<T: Send>() {}
    send::<Converter>();
}

#[test]
fn parallel_inflation_makes_the_same_sink_calls_as_inline() {
    for (zstd, order) in [
        (false, Order::DataFirst),
        (false, Order::TableFirst),
        (true, Order::TablesLast),
    ] {
        // 24 MiB of 4 KiB clusters: about twenty batches of output.
        let n = 6144;
        let b = build(12, (n * 4096) as u64, &mostly_compressed(n, zstd), order);
        for (seed, ranged) in [(1, true), (2, false), (3, true)] {
            let sizes = random_sizes(seed);
            let (r1, inline) = converted(&b.file, &sizes, 1, ranged);
            let stats = r1.unwrap();
            assert!(
                inline.mem.disk == b.disk,
                "{order:?}: inline output differs"
            );
            assert!(stats.compressed_clusters > 4000);
            for workers in [2, 4] {
                let (r, par) = converted(&b.file, &sizes, workers, ranged);
                assert_eq!(
                    r.unwrap(),
                    stats,
                    "{order:?} ranged {ranged} {workers} workers"
                );
                assert!(
                    par.calls == inline.calls,
                    "{order:?} ranged {ranged} {workers} workers: sink calls differ"
                );
                assert!(par.mem.disk == b.disk);
            }
        }
    }
}

#[test]
fn parallel_inflation_reports_the_first_bad_cluster_in_file_order() {
    for (order, ranged, at) in [
        (Order::DataFirst, true, 2),
        // Streaming inflates in parallel once the last table has passed.
        (Order::TableFirst, false, 30),
    ] {
        first_bad_cluster_wins(order, ranged, at);
    }
}

/// Damages the compressed cluster `1/at` of the way from the end, and one after it.
fn first_bad_cluster_wins(order: Order, ranged: bool, at: usize) {
    let n = 6144;
    let mut b = build(12, (n * 4096) as u64, &mostly_compressed(n, false), order);
    let layout = Layout::read(&mut &b.file[..], Some(b.file.len() as u64)).unwrap();
    let mut compressed: Vec<_> = layout
        .extents
        .iter()
        .filter(|e| matches!(e.kind(), map::Kind::Compressed { .. }))
        .copied()
        .collect();
    compressed.sort_unstable_by_key(|e| e.host);
    // Two bad clusters (0xff: a final deflate block of the reserved type); the first wins.
    let bad = compressed[compressed.len() - compressed.len() / at];
    let later = compressed[compressed.len() - compressed.len() / at + 100];
    b.file[bad.host as usize] = 0xff;
    b.file[later.host as usize] = 0xff;
    for seed in [4, 5] {
        let sizes = random_sizes(seed);
        let (r1, inline) = converted(&b.file, &sizes, 1, ranged);
        let e1 = r1.unwrap_err();
        let Qcow2Error::Inflate {
            guest_offset,
            host_offset,
            ..
        } = e1
        else {
            panic!("not an inflate error: {e1}");
        };
        assert_eq!(
            (guest_offset, host_offset),
            (u64::from(bad.guest) << 12, bad.host)
        );
        for workers in [2, 4] {
            let (r, par) = converted(&b.file, &sizes, workers, ranged);
            let e = r.unwrap_err();
            assert_eq!(e.to_string(), e1.to_string(), "{workers} workers");
            assert!(
                par.calls == inline.calls,
                "{workers} workers: sink calls differ"
            );
        }
    }
}
