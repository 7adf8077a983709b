//! Decision-engine bench (filled in below).
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let net = udn_core::Config::from_toml(udn_core::config::SAMPLE)
        .unwrap()
        .compile()
        .unwrap();
    c.bench_function("host_id", |b| {
        b.iter(|| net.host_id(std::hint::black_box("www.shop.udn.example")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
