//! Disk-tier eviction with 1,000 and 100,000 stored objects.
//!
//! The tier is full, so every `put` of a new object evicts the least recently used
//! one. With the index's linked last-use list this costs the same whatever the number
//! of objects (the older tier scanned the whole index for each victim). The time is
//! dominated by the file work (create, fsync, rename, unlink) on a tmpfs under
//! `/dev/shm`; the counters printed at the end show one index step per victim.
//!
//! `cargo bench -p udn-benches --bench disk_eviction`

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, StatusCode};
use std::path::PathBuf;
use std::time::Duration;
use udn_cache::policy::StoredMeta;
use udn_cache::server::store::{BodyLoc, DiskTier, Object};
use udn_core::Timestamp;

fn object(i: u64) -> Object {
    Object {
        key: format!("http://bench.example/objects/{i:010}"),
        meta: StoredMeta::new(
            StatusCode::OK,
            HeaderMap::new(),
            Timestamp::from_millis(1),
            Timestamp::from_millis(2),
        ),
        generation: 1,
        len: 64,
        body: BodyLoc::Memory(Bytes::from_static(&[b'x'; 64])),
    }
}

fn base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let root = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    root.join(format!("udn-bench-disk-{}", std::process::id()))
}

/// A full tier of `n` objects.
fn full_tier(n: u64) -> (DiskTier, PathBuf) {
    let dir = base().join(n.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    // One object's charge (body and metadata file), measured.
    let probe = DiskTier::open(&dir.join("probe"), u64::MAX).unwrap();
    probe.put(&object(0), None).unwrap();
    let one = probe.used();
    drop(probe);
    let _ = std::fs::remove_dir_all(dir.join("probe"));
    let t = DiskTier::open(&dir, n * one + one / 2).unwrap();
    for i in 0..n {
        t.put(&object(i), None).unwrap();
    }
    assert_eq!(t.len() as u64, n);
    assert_eq!(t.eviction_counts().0, 0);
    (t, dir)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("disk_eviction");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut report = Vec::new();
    for n in [1_000u64, 100_000] {
        let (t, dir) = full_tier(n);
        let mut next = n;
        g.bench_function(format!("put_evicting_one_of_{n}"), |b| {
            b.iter(|| {
                next += 1;
                t.put(&object(next), None).unwrap()
            })
        });
        let (evicted, steps) = t.eviction_counts();
        report.push((n, t.len(), evicted, steps));
        drop(t);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
    for (n, len, evicted, steps) in report {
        println!(
            "disk_eviction {n}: {len} objects kept, {evicted} evicted, {steps} index steps ({:.2} per victim)",
            steps as f64 / evicted.max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(base());
}

criterion_group!(benches, bench);
criterion_main!(benches);
