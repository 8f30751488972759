//! Shards and merge on the test doubles: the split, no duplicate work, the merged report
//! equal to one worker's, missing blocks named before anything is written, a plain run at
//! another batch size after the shards computing nothing.

use super::block_tests::{config, prompts};
use super::{CACHE_BLOCK_ROWS, Shard, SweepParts, merge, run, run_shard};
use crate::testing::{MemoryCache, MockExtractor, MockGenerator};
use crate::{CacheStore, EntryKind, Error, Generator, ListRequest};

#[test]
fn shards_parse_k_of_n_and_refuse_the_rest_naming_the_value() {
    assert_eq!("2/3".parse::<Shard>().unwrap(), Shard { index: 2, count: 3 });
    assert_eq!(" 1/1 ".parse::<Shard>().unwrap().to_string(), "1/1");
    for bad in ["0/3", "4/3", "1/0", "a/b", "3", "", "1/3/5", "-1/3"] {
        let e = bad.parse::<Shard>().unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
    }
    assert!(Shard::new(0, 2).is_err() && Shard::new(3, 2).is_err() && Shard::new(1, 0).is_err());
}

#[test]
fn every_block_belongs_to_exactly_one_shard() {
    let b = CACHE_BLOCK_ROWS;
    for count in 1..6 {
        for n in [0, 1, 15, 16, 17, 90, 113] {
            let mut owned: Vec<usize> =
                (1..=count).flat_map(|k| Shard::new(k, count).unwrap().blocks(n).into_iter().map(|(i, _)| i)).collect();
            owned.sort_unstable();
            assert_eq!(owned, (0..n.div_ceil(b)).collect::<Vec<_>>(), "{n} rows, {count} shards");
            for k in 1..=count {
                for (i, rows) in Shard::new(k, count).unwrap().blocks(n) {
                    assert_eq!(Shard::owner(i, count).index, k);
                    assert_eq!(rows, (i * b, (i * b + b).min(n)));
                }
            }
        }
    }
}

#[tokio::test]
async fn three_concurrent_shards_and_a_merge_equal_one_worker() {
    let set = prompts(90); // 6 blocks of 16, the last of 10
    let cfg = config(4);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    let parts = SweepParts::new(&ext, &cache).with_generator(&g);
    let (a, b, c) = tokio::join!(
        run_shard(parts, &set, &cfg, Shard::new(1, 3).unwrap()),
        run_shard(parts, &set, &cfg, Shard::new(2, 3).unwrap()),
        run_shard(parts, &set, &cfg, Shard::new(3, 3).unwrap()),
    );
    let shards = [a.unwrap(), b.unwrap(), c.unwrap()];
    assert_eq!(shards[1].blocks, vec![1, 4]);
    assert_eq!(shards[1].to_string().split(" · ").next().unwrap(), "shard 2/3: 2 of 6 blocks (blocks 1,4; 32 prompts)");
    assert_eq!(shards.iter().map(|s| s.work.batches_computed).sum::<usize>(), 6, "each block computed once");
    assert_eq!(shards.iter().map(|s| s.work.generations_generated).sum::<usize>(), 90);
    // Passes of 4 over each shard's 32, 32 and 26 rows.
    assert_eq!(shards.iter().map(|s| s.work.extract_calls).collect::<Vec<_>>(), vec![8, 8, 7]);
    assert_eq!(ext.passes(), 23);
    assert_eq!(g.generated(), 90, "each prompt generated once");
    let whole_gens = crate::key::generation_key(&g.model_id(), "set", cfg.sampling.as_ref().unwrap(), &set.texts());
    assert!(
        crate::CacheStoreExt::get_key(&cache, &whole_gens).await.unwrap().is_none(),
        "shards write no whole-set entry"
    );
    // 6 generation blocks + 6 blocks × 2 layers; no whole entries.
    assert_eq!(cache.len(), 18);

    let merged = merge(parts, &set, &cfg, Some(3)).await.unwrap();
    assert_eq!(ext.passes(), 23, "the merge computes nothing");
    assert_eq!(g.generated(), 90);
    assert_eq!(cache.list(ListRequest::all().with_kind(EntryKind::Generations)).await.unwrap().len(), 1);
    assert_eq!(cache.list(ListRequest::all().with_kind(EntryKind::Activations)).await.unwrap().len(), 2);

    let fresh = MemoryCache::new();
    let ext1 = MockExtractor::new("m", 4, 8);
    let single = run(SweepParts::new(&ext1, &fresh).with_generator(&g), &set, &cfg).await.unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&merged).unwrap(),
        serde_json::to_string_pretty(&single).unwrap(),
        "the merged report is one worker's, counts included"
    );
}

#[tokio::test]
async fn a_merge_with_a_missing_shard_names_it_and_writes_nothing() {
    let set = prompts(90);
    let cfg = config(4);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    let parts = SweepParts::new(&ext, &cache).with_generator(&g);
    run_shard(parts, &set, &cfg, Shard::new(1, 3).unwrap()).await.unwrap();
    run_shard(parts, &set, &cfg, Shard::new(3, 3).unwrap()).await.unwrap();
    let before = cache.len();
    let e = merge(parts, &set, &cfg, Some(3)).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("2 of 6 blocks are missing"), "{msg}");
    assert!(msg.contains("block 1 (rows 16..32: generations, layers 1,3; shard 2/3)"), "{msg}");
    assert!(msg.contains("block 4 (rows 64..80"), "{msg}");
    assert!(msg.contains("run shard 2/3"), "{msg}");
    assert_eq!(cache.len(), before, "nothing written");
    // Shards 1 and 3: passes (and generate calls) of 4 over 32 and 26 rows.
    assert_eq!((ext.passes(), g.calls()), (15, 15), "nothing computed by the merge");

    // Without the shard count the blocks are still named.
    let e = merge(parts, &set, &cfg, None).await.unwrap_err().to_string();
    assert!(e.contains("block 1 (rows 16..32: generations, layers 1,3)"), "{e}");

    // A plain sweep fills in only the missing shard's blocks: 32 rows, in 8 passes of 4.
    let r = run(parts, &set, &cfg).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (32, 58));
    assert_eq!((r.summary.batches_computed, r.summary.batches_cached), (2, 4));
    assert_eq!(r.summary.extract_calls, 8);
    assert_eq!((ext.passes(), g.calls()), (23, 23));
}

#[tokio::test]
async fn a_shard_after_a_whole_run_finds_everything_and_writes_nothing() {
    let set = prompts(22);
    let cfg = config(4);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    let parts = SweepParts::new(&ext, &cache).with_generator(&g);
    run(parts, &set, &cfg).await.unwrap();
    let before = (cache.len(), ext.passes(), g.calls());
    let s = run_shard(parts, &set, &cfg, Shard::new(2, 4).unwrap()).await.unwrap();
    assert_eq!((s.work.generations_cached, s.work.layers_cached, s.work.batches_computed), (s.rows, 2, 0));
    assert_eq!((cache.len(), ext.passes(), g.calls()), before);
    // A merge over whole entries only reads them.
    let m = merge(parts, &set, &cfg, Some(4)).await.unwrap();
    assert_eq!((m.summary.generations_cached, m.summary.layers_cached, m.summary.batches_computed), (22, 2, 0));
}

#[tokio::test]
async fn shards_without_generation_split_the_prompt_texts() {
    let set = prompts(50); // 4 blocks, the last of 2
    let cfg = config(3).with_sampling(None);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let parts = SweepParts::new(&ext, &cache);
    let a = run_shard(parts, &set, &cfg, Shard::new(1, 2).unwrap()).await.unwrap();
    let b = run_shard(parts, &set, &cfg, Shard::new(2, 2).unwrap()).await.unwrap();
    assert_eq!((a.blocks.clone(), b.blocks.clone()), (vec![0, 2], vec![1, 3]));
    assert_eq!(a.rows + b.rows, 50);
    let merged = merge(parts, &set, &cfg, Some(2)).await.unwrap();
    let fresh = MemoryCache::new();
    let single = run(SweepParts::new(&ext, &fresh), &set, &cfg).await.unwrap();
    assert_eq!(merged, single);
}

#[tokio::test]
async fn shards_at_batch_16_then_a_plain_run_at_batch_64_compute_nothing() {
    let set = prompts(90); // the measured regression: 6 blocks
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    let cache = MemoryCache::new();
    let parts = SweepParts::new(&ext, &cache).with_generator(&g);
    for k in 1..=3 {
        let s = run_shard(parts, &set, &config(16), Shard::new(k, 3).unwrap()).await.unwrap();
        assert_eq!(s.blocks.len(), 2);
    }
    assert_eq!((ext.passes(), g.calls(), g.generated()), (6, 6, 90), "one pass and one call per block");

    let r = run(parts, &set, &config(64)).await.unwrap();
    let s = &r.summary;
    assert_eq!((s.generations_generated, s.generations_cached), (0, 90));
    assert_eq!((s.batches_computed, s.batches_cached, s.extract_calls), (0, 6, 0));
    assert_eq!((ext.passes(), g.calls()), (6, 6), "nothing generated or extracted");

    let fresh = MemoryCache::new();
    let single = run(SweepParts::new(&ext, &fresh).with_generator(&g), &set, &config(64)).await.unwrap();
    assert_eq!(single.layers, r.layers);
    assert_eq!(single.summary.extract_calls, 2, "one worker at batch 64: passes of 64 and 26 rows");
}
