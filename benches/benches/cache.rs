//! Write and read throughput of a 256 MiB activation entry (a `[16384, 4096]` f32 tensor as
//! safetensors) through probe-cache: on local disk, and on the S3 server named by
//! `PROBE_TEST_S3_ENDPOINT` / `PROBE_TEST_S3_BUCKET` when they are set (AWS_* credentials
//! from the environment). A write hashes the payload, uploads it (multipart, 8 MiB parts)
//! and commits meta.json; a read fetches both and verifies the SHA-256.
//!
//! `cargo bench -p probe-benches --bench cache` (MB/s is criterion's throughput).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use probe_cache::ObjectCacheBuilder;
use probe_core::codec::{ACTIVATIONS_TENSOR, encode_tensors};
use probe_core::{CacheKey, CacheStore, CacheStoreExt, EntryKind, PutRequest, Tensor};

const ROWS: usize = 16384;
const HIDDEN: usize = 4096;

fn entry() -> bytes::Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let data: Vec<f32> = (0..ROWS * HIDDEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let tensor = Tensor::new(vec![ROWS, HIDDEN], data);
    encode_tensors(&[(ACTIVATIONS_TENSOR, &tensor)], None).expect("encode").into()
}

fn bench_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let payload = entry();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut stores: Vec<(String, Arc<dyn CacheStore>)> = vec![(
        "disk".into(),
        Arc::new(ObjectCacheBuilder::new(dir.path().to_str().expect("utf-8 path")).build().expect("disk cache")),
    )];
    match (std::env::var("PROBE_TEST_S3_ENDPOINT"), std::env::var("PROBE_TEST_S3_BUCKET")) {
        (Ok(endpoint), Ok(bucket)) => {
            let url = format!("s3://{bucket}/probe-bench-{}", std::process::id());
            let s3 = ObjectCacheBuilder::new(url).with_endpoint(endpoint).build().expect("S3 cache");
            stores.push(("s3".into(), Arc::new(s3)));
        }
        _ => eprintln!("PROBE_TEST_S3_ENDPOINT / PROBE_TEST_S3_BUCKET unset: benchmarking local disk only"),
    }

    let key = CacheKey::new(EntryKind::Activations, "bench-model", "bench-set", Some(0), "bench-256mib");
    let mut group = c.benchmark_group("cache_256MiB_activation");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(payload.len() as u64));
    for (name, cache) in &stores {
        group.bench_function(format!("{name}/write"), |b| {
            b.to_async(&rt).iter(|| async {
                cache.put(PutRequest::new(key.clone(), payload.clone())).await.expect("put");
            })
        });
        group.bench_function(format!("{name}/read"), |b| {
            b.to_async(&rt).iter(|| async {
                let got = cache.get_key(&key).await.expect("get").expect("entry written by the write bench");
                assert_eq!(got.payload.len(), payload.len());
            })
        });
        rt.block_on(cache.delete_key(&key)).expect("clean up");
    }
    group.finish();
}

criterion_group!(benches, bench_cache);
criterion_main!(benches);
