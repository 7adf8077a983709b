//! Cache lookup and purge with 1,000,000 cached keys.
//!
//! A lookup is what the edge does per request: the primary-key map probe plus the
//! invalidation-tree validity walk. A purge bumps one tree node in O(path depth),
//! whatever the number of cached keys.

use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::HashMap;
use std::hint::black_box;
use udn_cache::invalidate::{InvalidationTree, Scope};

const KEYS: usize = 1_000_000;

fn key(i: usize) -> String {
    format!(
        "http://h{}.example/d{}/e{}/f{i}.gif",
        i % 100,
        i % 1000,
        i % 7
    )
}

fn setup() -> (Vec<String>, HashMap<String, u64>, InvalidationTree) {
    let mut tree = InvalidationTree::new();
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let mut map = HashMap::with_capacity(KEYS);
    for k in &keys {
        map.insert(k.clone(), tree.generation());
    }
    // A realistic history: 10,000 URL purges and 1,000 directory purges.
    for i in 0..10_000 {
        tree.purge(Scope::Url, &key(i * 97 % KEYS));
    }
    for i in 0..1_000 {
        tree.purge(
            Scope::Prefix,
            &format!("http://h{}.example/d{}/", i % 100, i),
        );
    }
    (keys, map, tree)
}

fn bench(c: &mut Criterion) {
    let (keys, map, mut tree) = setup();
    let mut i = 0usize;
    c.bench_function("cache_lookup_1m_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let k = &keys[i];
            let valid = map.get(k.as_str()).is_some_and(|&g| tree.is_valid(k, g));
            black_box(valid)
        })
    });
    let mut j = 0usize;
    c.bench_function("cache_purge_url_1m_keys", |b| {
        b.iter(|| {
            j = (j + 104_729) % KEYS;
            black_box(tree.purge(Scope::Url, &keys[j]))
        })
    });
    c.bench_function("cache_purge_domain_1m_keys", |b| {
        b.iter(|| black_box(tree.purge(Scope::Domain, "http://h42.example/")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
