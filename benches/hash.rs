//! File hashing (the A1111/civitai SHA-256 pair of a safetensors file, `FileHashes::compute`)
//! against one SHA-256 over the same bytes in memory, the core's own rate: how much the
//! reading and the second digest cost. A 512 MiB file, read from the page cache after the
//! first iteration. Run: `cargo bench --bench hash`.

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mgpu::output::FileHashes;
use sha2::{Digest, Sha256};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("model.safetensors");
    let header = br#"{"__metadata__":{}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    bytes.extend((0..512usize << 20).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&bytes).expect("write");
    drop(f);
    let mut g = c.benchmark_group("hash");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("sha256_in_memory", |b| {
        b.iter(|| Sha256::digest(black_box(&bytes)))
    });
    g.bench_function("file_hashes_512MiB", |b| {
        b.iter(|| FileHashes::compute(black_box(&path), true).expect("hash"))
    });
    g.bench_function("file_hash_whole_512MiB", |b| {
        b.iter(|| FileHashes::compute(black_box(&path), false).expect("hash"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
