//! A writer process killed with SIGKILL mid-write leaves nothing that reads back as a valid
//! entry. The test re-runs its own binary as the writer (the ignored test `writer_child`,
//! selected by an environment variable), waits until a write is visibly under way on disk,
//! kills it and reads what is left.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use probe_cache::object_store::local::LocalFileSystem;
use probe_cache::object_store::throttle::{ThrottleConfig, ThrottledStore};
use probe_cache::{ObjectCache, ObjectCacheBuilder};
use probe_core::{CacheKey, CacheStore, CacheStoreExt, EntryKind, ListRequest, PutRequest};

const CHILD_ENV: &str = "PROBE_CACHE_KILL_CHILD";
const PART: usize = 5 << 20;

fn key() -> CacheKey {
    CacheKey::new(EntryKind::Activations, "killed", "set", Some(4), "killed-writer")
}

/// The payload of write number `i`: 6 parts, different for every `i`.
fn payload(i: u64) -> Bytes {
    Bytes::from(common::pattern(1000 + i, 6 * PART))
}

/// Child mode: writes through a store that pauses 500 ms before each object or part write,
/// so a write takes seconds; `once` writes one entry, `loop` overwrites the key forever.
#[test]
#[ignore = "run by the kill tests as a child process"]
fn writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (mode, dir) = spec.split_once(':').expect("mode:dir");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let fs = LocalFileSystem::new_with_prefix(dir).unwrap();
        let config = ThrottleConfig { wait_put_per_call: Duration::from_millis(500), ..ThrottleConfig::default() };
        let store = Arc::new(ThrottledStore::new(fs, config));
        let cache = ObjectCacheBuilder::from_store(store, format!("throttled file://{dir}"), true)
            .with_multipart_threshold(PART)
            .with_part_size(PART)
            .with_upload_concurrency(1)
            .build()
            .unwrap();
        for i in 0.. {
            cache.put(PutRequest::new(key(), payload(i)).with_attr("iteration", i.to_string())).await.unwrap();
            eprintln!("child committed write {i}");
            if mode == "once" {
                break;
            }
        }
    });
}

fn spawn_writer(mode: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["writer_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer")
}

/// Staging files (`name#N`) of uploads in progress, with their sizes.
fn staging_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    if !dir.exists() {
        return Vec::new();
    }
    common::files_under(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains('#'))
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect()
}

/// Polls until `ready` holds (then SIGKILLs the child) or the child exits / 120 s pass
/// (then the test fails: the kill must land mid-write to prove anything).
fn kill_when(child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ready() {
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the writer exited ({status}) before it could be killed mid-write");
        }
        assert!(Instant::now() < deadline, "the writer never reached the point to kill it");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_during_its_first_write_leaves_a_miss() {
    let root = tempfile::tempdir().unwrap();
    let entry_dir = root.path().join(key().path());
    let mut child = spawn_writer("once", root.path());
    // Kill once a part has landed in the staging file, long before the upload completes.
    kill_when(&mut child, || staging_files(&entry_dir).iter().any(|(_, len)| *len >= PART as u64));

    let meta = entry_dir.join("meta.json");
    assert!(!meta.exists(), "no commit record was written");
    assert!(!staging_files(&entry_dir).is_empty(), "the kill left the partial upload behind");
    let cache = ObjectCache::open(root.path().to_str().unwrap()).unwrap();
    assert!(cache.get_key(&key()).await.unwrap().is_none(), "a killed write is a miss");
    assert!(!cache.contains_key(&key()).await.unwrap());
    assert!(cache.list(ListRequest::all()).await.unwrap().is_empty(), "a killed write is not listed");
    assert_eq!(cache.corrupt_entries(), 0, "an uncommitted write is simply absent");

    // The key can be written afterwards, and the leftovers are collected.
    let repair =
        ObjectCacheBuilder::new(root.path().to_str().unwrap()).with_garbage_grace(Duration::ZERO).build().unwrap();
    repair.put(PutRequest::new(key(), payload(7))).await.unwrap();
    assert_eq!(repair.get_key(&key()).await.unwrap().expect("written after the crash").payload, payload(7));
    assert!(staging_files(&entry_dir).is_empty(), "the dead writer's staging file was collected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_while_overwriting_leaves_the_previous_whole_entry() {
    let root = tempfile::tempdir().unwrap();
    let entry_dir = root.path().join(key().path());
    let meta = entry_dir.join("meta.json");
    let mut child = spawn_writer("loop", root.path());
    // Kill once an entry is committed and a later write is half-way through.
    kill_when(&mut child, || meta.exists() && staging_files(&entry_dir).iter().any(|(_, len)| *len >= PART as u64));

    let cache = ObjectCache::open(root.path().to_str().unwrap()).unwrap();
    let entry = cache.get_key(&key()).await.unwrap().expect("the last committed entry survives");
    let i: u64 = entry.meta.attrs["iteration"].parse().unwrap();
    assert!(entry.payload == payload(i), "the entry is write {i}, whole");
    assert_eq!(cache.corrupt_entries(), 0);
    assert_eq!(cache.list(ListRequest::all()).await.unwrap(), vec![key()]);
}
