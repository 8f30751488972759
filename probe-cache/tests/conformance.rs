//! The CacheStore conformance suite on memory, local disk and a real S3 server, plus URL
//! handling, secrets, multipart uploads of 64 MiB entries and error classification.

mod common;

use bytes::Bytes;
use probe_cache::{ObjectCache, ObjectCacheBuilder, from_url};
use probe_core::testing::cache_conformance;
use probe_core::{CacheKey, CacheStore, CacheStoreExt, EntryKind, Error, PutRequest};

#[tokio::test]
async fn conformance_memory() {
    let cache = from_url("memory://").expect("memory store");
    assert_eq!(cache.location(), "memory://");
    assert!(!cache.capabilities().persistent);
    cache_conformance(cache.as_ref(), "memory").await;
}

#[tokio::test]
async fn conformance_local_disk_by_url_and_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("by-url").display());
    let cache = from_url(&url).expect("file store");
    assert!(cache.capabilities().persistent);
    cache_conformance(cache.as_ref(), "disk-url").await;

    let plain = dir.path().join("plain/nested");
    let cache = from_url(plain.to_str().unwrap()).expect("plain path store");
    cache_conformance(cache.as_ref(), "disk-path").await;
    assert!(plain.is_dir(), "the folder was created");
}

#[tokio::test]
async fn conformance_s3() {
    let Some(cache) = common::s3_cache("conformance") else { return };
    assert!(cache.location().starts_with("s3://"), "{}", cache.location());
    cache_conformance(cache.as_ref(), &common::unique("s3")).await;
}

#[tokio::test]
async fn entries_persist_across_opens_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::new(EntryKind::Generations, "m", "s", None, "persist");
    ObjectCache::open(dir.path().to_str().unwrap()).unwrap().put_bytes(&key, Bytes::from_static(b"x\n")).await.unwrap();
    let again = ObjectCache::open(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(again.get_key(&key).await.unwrap().expect("persisted").payload, Bytes::from_static(b"x\n"));
}

/// A 64 MiB entry goes through a multipart upload (threshold 16 MiB) and reads back intact.
async fn big_entry_round_trip(cache: &ObjectCache, tag: &str) -> CacheKey {
    let payload = Bytes::from(common::pattern(64, 64 << 20));
    let key = CacheKey::new(EntryKind::Activations, format!("big-{tag}"), "set", Some(1), "big");
    let meta = cache.put(PutRequest::new(key.clone(), payload.clone())).await.expect("put 64 MiB");
    assert_eq!(meta.size, 64 << 20);
    let got = cache.get_key(&key).await.expect("get").expect("64 MiB entry");
    assert!(got.payload == payload, "64 MiB payload round-trips");
    key
}

#[tokio::test]
async fn multipart_64_mib_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ObjectCache::open(dir.path().to_str().unwrap()).unwrap();
    let key = big_entry_round_trip(&cache, "disk").await;
    let files = common::files_under(&dir.path().join(key.path()));
    let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "one payload and meta.json, no staging files left: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("data-") && n.ends_with(".safetensors")), "{names:?}");
}

#[tokio::test]
async fn multipart_64_mib_on_memory() {
    let cache = ObjectCache::open("memory://").unwrap();
    big_entry_round_trip(&cache, "memory").await;
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn multipart_64_mib_on_s3() {
    use probe_cache::object_store::aws::AmazonS3Builder;
    use probe_cache::object_store::path::Path;
    use probe_cache::object_store::{ObjectStore, ObjectStoreExt};

    let Some(builder) = common::s3_builder("multipart") else { return };
    let cache = builder.build().unwrap();
    let key = big_entry_round_trip(&cache, "s3").await;

    // A multipart upload's ETag is "<md5 of part md5s>-<parts>": check the payload object.
    let endpoint = std::env::var("PROBE_TEST_S3_ENDPOINT").unwrap();
    let bucket = std::env::var("PROBE_TEST_S3_BUCKET").unwrap();
    let raw = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .build()
        .unwrap();
    let location = cache.location().trim_start_matches("s3://").split(' ').next().unwrap().to_owned();
    let prefix = location.split_once('/').map(|(_, p)| p.to_owned()).unwrap();
    let dir = Path::from(format!("{prefix}/{}", key.path()));
    let objects: Vec<_> = futures::TryStreamExt::try_collect(raw.list(Some(&dir))).await.unwrap();
    let payload = objects.iter().find(|o| o.location.filename().is_some_and(|n| n.starts_with("data-"))).unwrap();
    let head = raw.head(&payload.location).await.unwrap();
    let etag = head.e_tag.unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-8"), "64 MiB in 8 MiB parts is a multipart object, ETag {etag}");
    assert!(cache.delete_key(&key).await.unwrap());
}

#[tokio::test]
async fn bad_urls_are_invalid_input_naming_the_url_without_secrets() {
    for url in ["gs://bucket/p", "memory://x", "file://host/p", "s3://AKIAID:TOPSECRET@bucket/p", "ht!tp://x"] {
        let err = from_url(url).expect_err(url);
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidInput { .. }), "{url}: {msg}");
        assert!(!msg.contains("TOPSECRET"), "{msg}");
    }
    let msg = from_url("gs://bucket/p").unwrap_err().to_string();
    assert!(msg.contains("gs://bucket/p"), "names the URL: {msg}");
}

#[cfg(not(feature = "s3"))]
#[test]
fn s3_without_the_feature_is_feature_disabled() {
    let err = from_url("s3://bucket/prefix").unwrap_err();
    assert!(matches!(err, Error::FeatureDisabled { ref feature } if feature == "s3"), "{err}");
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn secrets_never_show_and_network_failures_are_retryable() {
    // Port 1 on loopback refuses connections at once: no server is needed.
    let builder = ObjectCacheBuilder::new("s3://bucket/prefix")
        .with_endpoint("http://127.0.0.1:1")
        .with_credentials("AKIDTOPSECRETID", "TOPSECRETKEY")
        .with_retry(0, std::time::Duration::from_secs(2));
    let shown = format!("{builder:?}");
    assert!(!shown.contains("TOPSECRET"), "{shown}");
    assert!(shown.contains("******"), "{shown}");
    let cache = builder.build().expect("building does not connect");
    for shown in [format!("{cache:?}"), cache.location().to_owned()] {
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(shown.contains("s3://bucket/prefix"), "{shown}");
    }
    let key = CacheKey::new(EntryKind::Generations, "m", "s", None, "k");
    let err = cache.put_bytes(&key, Bytes::from_static(b"x")).await.expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "a refused connection is temporary: {err}");
    assert!(!err.to_string().contains("TOPSECRET"), "{err}");
    let err = cache.get_key(&key).await.expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn settings_are_checked() {
    let err = ObjectCacheBuilder::new("memory://").with_part_size(1024).build().unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let err = ObjectCacheBuilder::new("memory://").with_upload_concurrency(0).build().unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
}

#[tokio::test]
async fn writing_to_a_bucket_that_does_not_exist_names_the_bucket() {
    let Some(endpoint) = probe_core::testing::require_service("PROBE_TEST_S3_ENDPOINT") else {
        return;
    };
    let url = format!("s3://{}/prefix", common::unique("no-such-bucket"));
    let cache = ObjectCacheBuilder::new(url.clone())
        .with_endpoint(endpoint)
        .with_retry(1, std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let key = CacheKey::new(EntryKind::Generations, "m", "s", None, "k");
    assert!(cache.get_key(&key).await.unwrap().is_none(), "reading from a missing bucket is a miss");
    let err = cache.put_bytes(&key, Bytes::from_static(b"x")).await.expect_err("the bucket does not exist");
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidInput { .. }), "{msg}");
    assert!(msg.contains(&url) && msg.contains("does the bucket exist?"), "{msg}");
}
