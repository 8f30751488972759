//! Concurrent writers, corruption on disk, slug safety and garbage collection.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use probe_cache::{ObjectCache, ObjectCacheBuilder, payload_file_name};
use probe_core::{CacheKey, CacheStore, CacheStoreExt, EntryKind, Error, ListRequest, PutRequest};

/// Payload sizes of the 8 writers: empty, small, and above the 6 MiB multipart threshold.
const SIZES: [usize; 8] = [0, 17, 1_000, 100_003, 1 << 20, 3 << 20, 7 << 20, 11 << 20];

fn payloads() -> Vec<Bytes> {
    SIZES.iter().enumerate().map(|(i, &n)| Bytes::from(common::pattern(i as u64 + 1, n))).collect()
}

/// 8 tasks each write their own payload to one key and read it back, 4 rounds; every read is
/// one whole payload of one writer (never a mix, never truncated), and once a task has
/// written, the key is never a miss again.
async fn eight_writers(cache: Arc<ObjectCache>, tag: &str) {
    let key = CacheKey::new(EntryKind::Activations, format!("race-{tag}"), "set", Some(2), "same-key");
    let payloads = Arc::new(payloads());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (cache, key, payloads) = (cache.clone(), key.clone(), payloads.clone());
        tasks.push(tokio::spawn(async move {
            let mut reads = 0;
            for round in 0..4 {
                if round > 0 || i % 2 == 0 {
                    cache
                        .put(PutRequest::new(key.clone(), payloads[i].clone()).with_attr("writer", i.to_string()))
                        .await
                        .expect("put");
                }
                for _ in 0..2 {
                    match cache.get_key(&key).await.expect("get") {
                        Some(entry) => {
                            let writer: usize = entry.meta.attrs["writer"].parse().unwrap();
                            assert!(
                                entry.payload == payloads[writer],
                                "task {i} read writer {writer}'s metadata with other bytes ({} bytes)",
                                entry.payload.len()
                            );
                            assert_eq!(entry.meta.size as usize, SIZES[writer]);
                            reads += 1;
                        }
                        None => assert!(round == 0, "task {i}: a miss after its own put in round {round}"),
                    }
                }
            }
            reads
        }));
    }
    let mut reads = 0;
    for t in tasks {
        reads += t.await.expect("task");
    }
    assert!(reads >= 8 * 6, "every read after a put is a hit ({reads})");
    assert_eq!(cache.corrupt_entries(), 0, "no reader saw a corrupt entry");
    let last = cache.get_key(&key).await.unwrap().expect("final entry");
    let writer: usize = last.meta.attrs["writer"].parse().unwrap();
    assert!(last.payload == payloads[writer]);
    assert_eq!(cache.list(ListRequest::model(format!("race-{tag}"))).await.unwrap(), vec![key]);
}

fn small_parts(b: ObjectCacheBuilder) -> ObjectCacheBuilder {
    b.with_multipart_threshold(6 << 20).with_part_size(5 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_memory() {
    let cache = small_parts(ObjectCacheBuilder::new("memory://")).build().unwrap();
    eight_writers(Arc::new(cache), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = small_parts(ObjectCacheBuilder::new(dir.path().to_str().unwrap())).build().unwrap();
    eight_writers(Arc::new(cache), "disk").await;
    let left: Vec<_> = common::files_under(dir.path())
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains('#'))
        .collect();
    assert!(left.is_empty(), "finished writers leave no staging files: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_s3() {
    let Some(b) = common::s3_builder("race") else { return };
    eight_writers(Arc::new(small_parts(b).build().unwrap()), "s3").await;
}

fn payload_path(root: &std::path::Path, key: &CacheKey, cache_entry: &probe_core::CacheEntry) -> std::path::PathBuf {
    root.join(key.path()).join(payload_file_name(&cache_entry.meta).unwrap())
}

#[tokio::test]
async fn corrupt_entries_on_disk_are_counted_misses_and_repaired_by_put() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ObjectCache::open(dir.path().to_str().unwrap()).unwrap();
    let key = CacheKey::new(EntryKind::Activations, "m", "s", Some(0), "corrupt");
    let payload = Bytes::from(common::pattern(9, 4096));
    let mut expected_corrupt = 0;

    type Damage = fn(&std::path::Path, &std::path::Path);
    let damages: [(&str, Damage); 5] = [
        ("a flipped byte", |p, _| {
            let mut b = std::fs::read(p).unwrap();
            b[100] ^= 0x01;
            std::fs::write(p, b).unwrap();
        }),
        ("a truncated payload", |p, _| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() - 1]).unwrap();
        }),
        ("a missing payload", |p, _| std::fs::remove_file(p).unwrap()),
        ("an unparsable meta.json", |_, m| std::fs::write(m, b"{\"schema\":1,").unwrap()),
        ("a meta.json of another key", |_, m| {
            let s = std::fs::read_to_string(m).unwrap();
            std::fs::write(m, s.replace("/corrupt", "/elsewhere").replace("m/activations", "x/activations")).unwrap();
        }),
    ];
    for (what, damage) in damages {
        cache.put(PutRequest::new(key.clone(), payload.clone())).await.unwrap();
        let entry = cache.get_key(&key).await.unwrap().expect("intact entry");
        let meta_path = dir.path().join(key.path()).join("meta.json");
        damage(&payload_path(dir.path(), &key, &entry), &meta_path);
        assert!(cache.get_key(&key).await.unwrap().is_none(), "{what} is a miss");
        expected_corrupt += 1;
        assert_eq!(cache.corrupt_entries(), expected_corrupt, "{what} is counted");
        assert!(!cache.contains_key(&key).await.unwrap() || what == "a flipped byte", "{what}: not contained");
        cache.put(PutRequest::new(key.clone(), payload.clone())).await.unwrap();
        assert_eq!(cache.get_key(&key).await.unwrap().expect("repaired").payload, payload, "put repairs {what}");
    }
    assert_eq!(cache.corrupt_entries(), expected_corrupt);
}

#[tokio::test]
async fn user_names_stay_under_the_root() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("cache");
    let cache = ObjectCache::open(root.to_str().unwrap()).unwrap();
    let keys = [
        CacheKey::new(EntryKind::Generations, "../../etc", "../../etc", None, "../../etc/passwd"),
        CacheKey::new(EntryKind::Activations, "50/50", "50/50", Some(7), "50/50"),
        CacheKey::new(EntryKind::Generations, "", "", None, ""),
        CacheKey::new(EntryKind::Activations, "/abs/model/", ".", Some(0), "x"),
    ];
    for k in &keys {
        cache.put_bytes(k, Bytes::from_static(b"{}\n")).await.unwrap();
        assert!(cache.get_key(k).await.unwrap().is_some(), "{k}");
    }
    let files = common::files_under(base.path());
    assert_eq!(files.len(), 2 * keys.len(), "a payload and a meta.json per key: {files:?}");
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or_else(|_| panic!("{} is outside the cache root", f.display()));
        let depth = rel.components().count();
        assert!(depth == 5 || depth == 6, "{}: <model>/<kind>/<set>/[layer/]<digest>/<file>", rel.display());
        assert!(!rel.to_string_lossy().contains(".."), "{}", rel.display());
    }
    // A key built by hand around the slugging is refused, and writes nothing.
    let mut evil = keys[0].clone();
    evil.model = "../../outside".into();
    let err = cache.put_bytes(&evil, Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(cache.get_key(&evil).await.is_err());
    assert_eq!(common::files_under(base.path()).len(), files.len(), "nothing was written");
    let mut listed = cache.list(ListRequest::all()).await.unwrap();
    let mut want = keys.to_vec();
    want.sort();
    listed.sort();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn overwrites_leave_garbage_until_the_grace_period_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::new(EntryKind::Generations, "m", "s", None, "garbage");
    let data_files = || {
        let mut v: Vec<_> = common::files_under(&dir.path().join(key.path()))
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("data-"))
            .collect();
        v.sort();
        v
    };
    let keep = ObjectCache::open(dir.path().to_str().unwrap()).unwrap();
    keep.put_bytes(&key, Bytes::from_static(b"one\n")).await.unwrap();
    keep.put_bytes(&key, Bytes::from_static(b"two\n")).await.unwrap();
    assert_eq!(data_files().len(), 2, "within the grace period the old payload stays");
    // A crashed writer's staging file.
    let staging = dir.path().join(key.path()).join("data-0123456789abcdef.jsonl#1");
    std::fs::write(&staging, b"half").unwrap();

    let eager =
        ObjectCacheBuilder::new(dir.path().to_str().unwrap()).with_garbage_grace(Duration::ZERO).build().unwrap();
    let meta = eager.put_bytes(&key, Bytes::from_static(b"three\n")).await.unwrap();
    let meta_name = payload_file_name(&meta).unwrap();
    assert_eq!(data_files(), vec![meta_name], "older payloads and staging files are collected");
    assert!(!staging.exists());
    assert_eq!(eager.get_key(&key).await.unwrap().unwrap().payload, Bytes::from_static(b"three\n"));
    assert!(eager.delete_key(&key).await.unwrap());
    assert!(!dir.path().join(key.path()).exists(), "delete removes the entry's folder");
}
