//! Placement executed on candle: a decoder split over devices (two CPU stages; "GPU + CPU" from
//! a plan over a fake inventory whose `cuda:N` map to the CPU) gives the values of one device
//! bit for bit, in extraction and in greedy generation; data-parallel replicas give those of
//! one device at their micro-batch size.
#![cfg(feature = "candle")]

use std::path::{Path, PathBuf};

use probe_backends::candle::{
    BlockShare, CandleBackend, CandleDevice, CandleFolder, CandleOptions, CandleReplicas, device_of, open_placement,
};
use probe_core::plan::{Device, DeviceInventory, ModelSpec, Placement, RunSettings, resolve_run};
use probe_core::testing::require_service;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, GenerationRequest, Generator, Positions, SamplingParams,
};

fn model(arch: &str) -> Option<PathBuf> {
    require_service("PROBE_FIXTURES").map(|f| Path::new(&f).join("models").join(arch))
}

fn texts() -> Vec<String> {
    [
        "The sky is",
        "Paris is the capital of",
        "a",
        "One two three four five six seven eight nine ten",
        "Hello, world",
        "The quick brown fox jumps over the lazy dog",
        "Rust",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

async fn extract(e: &dyn ActivationExtractor, positions: Positions, batch: usize) -> Activations {
    let layers: Vec<usize> = (0..=e.model_info().num_layers).collect();
    e.extract(ActivationRequest::texts(texts(), layers).with_positions(positions).with_batch_size(batch))
        .await
        .expect("extract")
}

fn same_bits(a: &Activations, b: &Activations, what: &str) {
    assert_eq!(a.layers.len(), b.layers.len(), "{what}");
    for (x, y) in a.layers.iter().zip(&b.layers) {
        assert_eq!((x.layer, &x.tensor.shape), (y.layer, &y.tensor.shape), "{what}");
        let bits = |t: &[f32]| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&x.tensor.data), bits(&y.tensor.data), "{what}: layer {} differs", x.layer);
    }
    assert_eq!(a.token_counts, b.token_counts, "{what}");
}

async fn greedy(g: &dyn Generator) -> Vec<Option<Vec<u32>>> {
    let id = g.model_id().id;
    let req = GenerationRequest::new(id, texts()[..3].to_vec()).with_sampling(SamplingParams::greedy(6));
    g.generate(req).await.expect("generate").into_iter().map(|g| g.token_ids).collect()
}

#[tokio::test]
async fn blocks_split_over_two_cpu_stages_give_the_single_device_values_bit_for_bit() {
    for arch in ["llama", "gemma2"] {
        let Some(dir) = model(arch) else { return };
        let one = CandleBackend::load(&dir, CandleOptions::default()).unwrap();
        let n = one.model_info().num_layers;
        for cut in [0, n / 2, n - 2] {
            let split =
                vec![BlockShare::new(CandleDevice::Cpu, 0, cut), BlockShare::new(CandleDevice::Cpu, cut + 1, n - 1)];
            let two = CandleBackend::load(&dir, CandleOptions::default().with_split(split)).unwrap();
            for positions in [Positions::Last, Positions::Mean, Positions::All] {
                let what = format!("{arch}, blocks 0..={cut} | {}..={}, {positions}", cut + 1, n - 1);
                same_bits(&extract(&one, positions, 3).await, &extract(&two, positions, 3).await, &what);
            }
            assert_eq!(greedy(&one).await, greedy(&two).await, "{arch}: greedy tokens through the split");
        }
    }
}

#[tokio::test]
async fn a_split_that_does_not_cover_the_blocks_is_refused_naming_them() {
    let Some(dir) = model("llama") else { return };
    let gap = vec![BlockShare::new(CandleDevice::Cpu, 0, 0), BlockShare::new(CandleDevice::Cpu, 2, 3)];
    let e = CandleBackend::load(&dir, CandleOptions::default().with_split(gap)).unwrap_err().to_string();
    assert!(e.contains("blocks 2..=3 on cpu") && e.contains("next expected: 1"), "{e}");
    let short = vec![BlockShare::new(CandleDevice::Cpu, 0, 2)];
    let e = CandleBackend::load(&dir, CandleOptions::default().with_split(short)).unwrap_err().to_string();
    assert!(e.contains("end at block 2") && e.contains("0..=3"), "{e}");
}

/// The plan over a fake inventory: `gpus` GPUs of `bytes` each and 64 GiB of RAM.
fn plan_placement(dir: &Path, gpus: usize, bytes: u64) -> Vec<Placement> {
    let spec = ModelSpec::from_path(&dir.join("config.json")).unwrap();
    let inventory = DeviceInventory::new((0..gpus).map(|i| Device::gpu(i, bytes)).collect(), 64 << 30);
    let plan = resolve_run(inventory, spec, &RunSettings::new(16).with_batch_size(Some(4))).unwrap();
    plan.extraction.expect("extraction planned").placement
}

/// Every plan device name runs on the CPU (this machine has no GPU).
fn on_cpu(name: &str) -> probe_core::Result<CandleDevice> {
    device_of(name).map(|_| CandleDevice::Cpu)
}

/// A placement in the plan's JSON form (`extraction.placement`).
fn placement_json(shares: &[(&str, usize, usize, usize)]) -> Vec<Placement> {
    let v: Vec<serde_json::Value> = shares
        .iter()
        .map(|&(device, first, last, worker)| {
            serde_json::json!({"device": device, "layers": [first, last], "worker": worker, "embedding": first == 0,
                "head": false, "weights_bytes": 0, "working_set_bytes": 0})
        })
        .collect();
    serde_json::from_value(serde_json::Value::Array(v)).expect("the plan's placement schema")
}

#[tokio::test]
async fn a_gpu_plus_cpu_placement_runs_its_blocks_on_both_and_gives_the_same_values() {
    let Some(dir) = model("llama") else { return };
    let one = CandleBackend::load(&dir, CandleOptions::default()).unwrap();
    for shares in
        [&[("cuda:0", 0, 2, 0), ("cpu", 3, 3, 0)][..], &[("cuda:0", 0, 0, 0), ("cuda:1", 1, 2, 0), ("cpu", 3, 3, 0)]]
    {
        let placement = placement_json(shares);
        let placed =
            open_placement(&CandleFolder::read(&dir).unwrap(), &CandleOptions::default(), &placement, &on_cpu).unwrap();
        assert_eq!(placed.replicas().len(), 1, "one worker split over devices");
        for positions in [Positions::Last, Positions::Mean] {
            same_bits(
                &extract(&one, positions, 3).await,
                &extract(&placed, positions, 3).await,
                &format!("{shares:?}"),
            );
        }
        assert_eq!(greedy(&one).await, greedy(placed.first()).await, "{shares:?}");
    }
    let bad = placement_json(&[("tpu:0", 0, 3, 0)]);
    let e = open_placement(&CandleFolder::read(&dir).unwrap(), &CandleOptions::default(), &bad, &on_cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tpu:0"), "{e}");
}

#[tokio::test]
async fn replicas_spread_micro_batches_and_give_one_devices_values_at_that_size() {
    let Some(dir) = model("llama") else { return };
    let placement = plan_placement(&dir, 2, 80 << 30);
    let workers: Vec<usize> = placement.iter().map(|p| p.worker).collect();
    assert_eq!(workers, [0, 1], "a model that fits one GPU: one replica per GPU: {placement:?}");
    let replicas =
        open_placement(&CandleFolder::read(&dir).unwrap(), &CandleOptions::default(), &placement, &on_cpu).unwrap();
    assert_eq!(replicas.replicas().len(), 2);
    let one = CandleBackend::load(&dir, CandleOptions::default()).unwrap();
    // 7 inputs over 2 replicas: micro-batches of min(batch, ⌈7/2⌉) = 4.
    for positions in [Positions::Last, Positions::Mean] {
        same_bits(&extract(&one, positions, 4).await, &extract(&replicas, positions, 16).await, "replicas, batch 16");
        same_bits(&extract(&one, positions, 2).await, &extract(&replicas, positions, 2).await, "replicas, batch 2");
    }
    let both = CandleReplicas::new(vec![one.clone(), one.clone()]).unwrap();
    same_bits(&extract(&one, Positions::All, 3).await, &extract(&both, Positions::All, 3).await, "all positions");
}

/// Issue 28: a model loaded for extraction up to block `n` (`CandleOptions::blocks`) gives the
/// whole model's values bit for bit at every layer it holds, at every site inside its blocks,
/// with and without the final norm (gemma2 ties its head; llama does not), and refuses, naming
/// the limit, deeper layers and generation.
#[tokio::test]
async fn a_model_loaded_up_to_a_block_reads_what_the_whole_model_reads_and_no_deeper() {
    for arch in ["llama", "gemma2"] {
        let Some(dir) = model(arch) else { return };
        let whole = CandleBackend::load(&dir, CandleOptions::default()).unwrap();
        let l = whole.model_info().num_layers;
        for n in [1, l - 1, l] {
            let part = CandleBackend::load(&dir, CandleOptions::default().with_blocks(Some(n))).unwrap();
            assert_eq!(part.model_info(), whole.model_info(), "{arch}: the same model, the same cache keys");
            let req = |layers: Vec<usize>| ActivationRequest::texts(texts(), layers).with_batch_size(3);
            let layers: Vec<usize> = (0..=n).collect();
            let (a, b) = (whole.extract(req(layers.clone())).await.unwrap(), part.extract(req(layers)).await.unwrap());
            same_bits(&a, &b, &format!("{arch}, blocks 0..{n}"));
            let site = |layers: Vec<usize>| req(layers).with_site(probe_core::Site::MlpOut);
            let (a, b) =
                (whole.extract(site(vec![n - 1])).await.unwrap(), part.extract(site(vec![n - 1])).await.unwrap());
            same_bits(&a, &b, &format!("{arch}, mlp_out of block {}", n - 1));
            if n < l {
                let e = part.extract(req(vec![n + 1])).await.unwrap_err().to_string();
                assert!(e.contains(&format!("blocks 0..{n} of {l}")), "{arch}: {e}");
                let e = part.extract(site(vec![n])).await.unwrap_err().to_string();
                assert!(e.contains(&format!("needs {} blocks", n + 1)), "{arch}: {e}");
            }
            let e = greedy_err(&part).await;
            assert!(e.contains("generation needs the whole model"), "{arch}: {e}");
        }
    }
}

async fn greedy_err(g: &dyn Generator) -> String {
    let req = GenerationRequest::new(g.model_id().id, texts()[..1].to_vec()).with_sampling(SamplingParams::greedy(2));
    g.generate(req).await.expect_err("generation refused").to_string()
}
