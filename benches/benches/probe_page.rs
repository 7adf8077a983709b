//! Page-check parsing costs: component extraction from a page and the CHK checksum,
//! each against a reference in the same run (a plain byte scan for `<` and a byte sum),
//! so the report reads as ratios.
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn page(components: usize) -> String {
    let mut s = String::from("<!doctype html><html><head><title>shop</title>");
    s.push_str("<script>var x = '<img src=\"fake.gif\">';</script>");
    for i in 0..components {
        match i % 3 {
            0 => s.push_str(&format!(
                "<img src=\"/img/{i}.gif\" alt=\"product {i}\" width=10>"
            )),
            1 => s.push_str(&format!("<script src='js/{i}.js' async></script>")),
            _ => s.push_str(&format!("<link rel=stylesheet href=\"../css/{i}.css\">")),
        }
        s.push_str(
            "<p>Lorem ipsum dolor sit amet, <b>consectetur</b> adipiscing elit.</p><!-- c -->\n",
        );
    }
    s.push_str("</body></html>");
    s
}

fn bench(c: &mut Criterion) {
    let html = page(300);
    let mut g = c.benchmark_group("page");
    g.throughput(Throughput::Bytes(html.len() as u64));
    g.bench_function("components", |b| {
        b.iter(|| udn_probe::html::components("http://www.shop.example/a/b/", black_box(&html)))
    });
    g.bench_function("reference_scan_lt", |b| {
        b.iter(|| {
            black_box(html.as_bytes())
                .iter()
                .filter(|&&c| c == b'<')
                .count()
        })
    });
    let body = vec![0x5au8; 1 << 20];
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("crc32_1MiB", |b| {
        b.iter(|| udn_probe::pagecheck::crc32(black_box(&body)))
    });
    g.bench_function("reference_sum_1MiB", |b| {
        b.iter(|| {
            black_box(&body)
                .iter()
                .fold(0u32, |a, &x| a.wrapping_add(u32::from(x)))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
