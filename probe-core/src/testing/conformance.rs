//! Conformance suites: one per trait, called by every implementation's tests.
//! They panic with a message naming the broken clause of the contract.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::{
    ActivationExtractor, ActivationRequest, CacheKey, CacheStore, CacheStoreExt, EntryKind, Error, GenerationRequest,
    Generator, ListRequest, Positions, PutRequest, SamplingParams,
};

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let den = b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-6);
    num / den
}

/// Checks a [`Generator`] serving `model` against its contract, using `prompts` (≥ 2).
pub async fn generator_conformance(g: &dyn Generator, model: &str, prompts: &[&str]) {
    assert!(prompts.len() >= 2, "the suite needs at least two prompts");
    let caps = g.capabilities();
    let prompts: Vec<String> = prompts.iter().map(|s| s.to_string()).collect();
    let req = GenerationRequest::new(model, prompts.clone()).with_sampling(SamplingParams::greedy(4));

    let a = g.generate(req.clone()).await.expect("greedy generation");
    assert_eq!(a.len(), prompts.len(), "one generation per prompt at n = 1");
    for (i, gen_) in a.iter().enumerate() {
        assert_eq!(gen_.prompt_index, i, "generations come back in prompt order");
        assert_eq!(gen_.prompt, prompts[i], "generation carries its prompt verbatim");
        if caps.token_ids {
            let ids = gen_.token_ids.as_ref().expect("token_ids capability: ids returned");
            assert!(ids.len() <= 4, "max_tokens = 4 honoured, got {} tokens", ids.len());
        }
    }
    let b = g.generate(req.clone()).await.expect("greedy generation, again");
    assert_eq!(a, b, "greedy decoding is deterministic");

    for bad in [
        SamplingParams::greedy(4).with_temperature(f32::NAN),
        SamplingParams::greedy(4).with_temperature(-1.0),
        SamplingParams::greedy(0),
        SamplingParams::greedy(4).with_n(0),
    ] {
        let err = g.generate(req.clone().with_sampling(bad.clone())).await.expect_err("bad sampling is refused");
        assert!(matches!(err, Error::InvalidInput { .. }), "bad sampling {bad:?} gives InvalidInput, got {err}");
    }
    let err = g
        .generate(GenerationRequest::new(format!("{model}-not-this-one"), prompts.clone()))
        .await
        .expect_err("a model mismatch is refused");
    assert!(matches!(err, Error::InvalidInput { .. }), "model mismatch gives InvalidInput, got {err}");

    if caps.sampling && caps.seeded_sampling {
        let s = SamplingParams::greedy(6).with_temperature(1.0).with_top_p(0.9).with_seed(7);
        let x = g.generate(req.clone().with_sampling(s.clone())).await.expect("sampling");
        let y = g.generate(req.clone().with_sampling(s)).await.expect("sampling, again");
        assert_eq!(x, y, "sampling with the same seed is deterministic");
    }
    if caps.multiple_samples {
        let s = SamplingParams::greedy(3).with_temperature(1.0).with_seed(1).with_n(2);
        let x = g.generate(req.clone().with_sampling(s)).await.expect("n = 2");
        assert_eq!(x.len(), 2 * prompts.len(), "n samples per prompt");
        for (j, gen_) in x.iter().enumerate() {
            assert_eq!(
                (gen_.prompt_index, gen_.sample_index as usize),
                (j / 2, j % 2),
                "ordered by prompt, then sample"
            );
        }
    }
}

/// Checks an [`ActivationExtractor`] against its contract, using `texts` (≥ 3, of
/// different lengths so batches are padded).
pub async fn extractor_conformance(e: &dyn ActivationExtractor, texts: &[&str]) {
    assert!(texts.len() >= 3, "the suite needs at least three texts");
    let info = e.model_info();
    let caps = e.capabilities();
    let texts: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
    let l = info.num_layers;
    let layers = vec![l, 0, l / 2, l / 2];

    for positions in [Positions::Last, Positions::Mean] {
        let req = ActivationRequest::texts(texts.clone(), layers.clone()).with_positions(positions);
        let full = e.extract(req.clone().with_batch_size(texts.len())).await.expect("batched extraction");
        let got: Vec<usize> = full.layers.iter().map(|x| x.layer).collect();
        let want: Vec<usize> = layers.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        assert_eq!(got, want, "one result per requested layer, deduplicated and sorted");
        assert_eq!(full.token_counts.len(), texts.len(), "token counts per input");
        for la in &full.layers {
            assert_eq!(
                la.tensor.shape,
                vec![texts.len(), info.hidden_size],
                "layer {} has shape [n, hidden]",
                la.layer
            );
            assert!(la.tensor.data.iter().all(|v| v.is_finite()), "layer {} is finite", la.layer);
        }
        let single = e.extract(req.clone().with_batch_size(1)).await.expect("unbatched extraction");
        for (a, b) in full.layers.iter().zip(&single.layers) {
            let err = rel_err(&a.tensor.data, &b.tensor.data);
            assert!(err <= 1e-4, "batched equals unbatched at layer {} ({positions}): relative error {err}", a.layer);
        }
        let one = e
            .extract(ActivationRequest::texts(vec![texts[1].clone()], vec![l / 2]).with_positions(positions))
            .await
            .expect("one text");
        let err = rel_err(one.layers[0].tensor.row(0), full.layer(l / 2).expect("layer").row(1));
        assert!(err <= 1e-4, "a text's activations do not depend on its batch ({positions}): {err}");
    }

    let err = e.extract(ActivationRequest::texts(texts.clone(), vec![l + 1])).await.expect_err("layer out of range");
    assert!(matches!(err, Error::InvalidInput { .. }), "layer L+1 gives InvalidInput, got {err}");
    assert!(err.to_string().contains(&(l + 1).to_string()), "the error names the bad layer: {err}");
    let err = e.extract(ActivationRequest::texts(vec![], vec![0])).await.expect_err("no inputs");
    assert!(matches!(err, Error::InvalidInput { .. }), "no inputs gives InvalidInput, got {err}");

    if caps.all_positions {
        let acts = e
            .extract(ActivationRequest::texts(texts.clone(), vec![l]).with_positions(Positions::All))
            .await
            .expect("all positions");
        let mask = acts.mask.as_ref().expect("Positions::All returns a mask");
        let seq = mask.shape[1];
        assert_eq!(
            acts.layers[0].tensor.shape,
            vec![texts.len(), seq, info.hidden_size],
            "all positions: [n, seq, hidden]"
        );
        for (i, &count) in acts.token_counts.iter().enumerate() {
            let real: f32 = mask.row(i).iter().sum();
            assert_eq!(real as usize, count, "mask row {i} marks the real tokens");
        }
    } else {
        let err = e
            .extract(ActivationRequest::texts(texts.clone(), vec![l]).with_positions(Positions::All))
            .await
            .expect_err("all positions unsupported");
        assert!(matches!(err, Error::NotSupported { .. }), "unsupported positions give NotSupported, got {err}");
    }
}

/// Checks a [`CacheStore`] against its contract. `namespace` keeps runs apart on a shared
/// server (use something unique per run).
pub async fn cache_conformance(store: &dyn CacheStore, namespace: &str) {
    let caps = store.capabilities();
    let key = |set: &str, layer: Option<usize>, d: &str| {
        let kind = if layer.is_some() { EntryKind::Activations } else { EntryKind::Generations };
        CacheKey::new(kind, format!("conf-{namespace}"), set, layer, d)
    };
    let k1 = key("set-a", None, "one");
    let k2 = key("set-a", Some(3), "two");
    let k3 = key("50/50", Some(3), "three");

    assert!(store.get_key(&k1).await.expect("get").is_none(), "a missing key is a miss");
    assert!(!store.contains_key(&k1).await.expect("contains"), "a missing key is not contained");

    let payload = Bytes::from_static(b"{\"a\":1}\n");
    let meta = store.put(PutRequest::new(k1.clone(), payload.clone()).with_attr("model", "m")).await.expect("put");
    assert_eq!(meta.size, payload.len() as u64, "metadata records the size");
    let got = store.get_key(&k1).await.expect("get").expect("a committed entry reads back");
    assert_eq!(got.payload, payload, "payload round-trips");
    assert_eq!(got.meta.sha256, meta.sha256, "checksum round-trips");
    assert_eq!(got.meta.attrs.get("model").map(String::as_str), Some("m"), "attributes round-trip");
    assert!(store.contains_key(&k1).await.expect("contains"), "a committed entry is contained");

    let big: Bytes = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>().into();
    store.put_bytes(&k2, big.clone()).await.expect("put big");
    assert_eq!(store.get_key(&k2).await.expect("get").expect("big entry").payload, big, "a 1.2 MB payload round-trips");

    store.put_bytes(&k1, Bytes::from_static(b"replaced")).await.expect("overwrite");
    assert_eq!(
        store.get_key(&k1).await.expect("get").expect("entry").payload,
        Bytes::from_static(b"replaced"),
        "put replaces"
    );

    store.put_bytes(&k3, Bytes::new()).await.expect("put empty");
    assert_eq!(
        store.get_key(&k3).await.expect("get").expect("empty entry").payload.len(),
        0,
        "empty payloads are entries"
    );

    if caps.list {
        let all = store.list(ListRequest::model(format!("conf-{namespace}"))).await.expect("list");
        let mut want = vec![k1.clone(), k2.clone(), k3.clone()];
        want.sort();
        assert_eq!(all, want, "list returns the committed keys, sorted");
        let acts = store
            .list(
                ListRequest::model(format!("conf-{namespace}"))
                    .with_kind(EntryKind::Activations)
                    .with_prompt_set("50/50"),
            )
            .await
            .expect("list narrowed");
        assert_eq!(acts, vec![k3.clone()], "list narrows by kind and prompt set");
    }
    if caps.delete {
        assert!(store.delete_key(&k1).await.expect("delete"), "delete reports a removal");
        assert!(store.get_key(&k1).await.expect("get").is_none(), "a deleted entry is a miss");
        assert!(!store.delete_key(&k1).await.expect("delete again"), "deleting twice removes nothing");
        store.delete_key(&k2).await.expect("cleanup");
        store.delete_key(&k3).await.expect("cleanup");
    }
}
