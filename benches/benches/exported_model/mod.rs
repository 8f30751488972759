//! The model the tch and ort benches share: a random Llama of the candle bench's shape
//! (8 layers, hidden 512, 8 heads, 2 kv heads, intermediate 1408, vocab 4096) made with the
//! venv's transformers ($PROBE_PYTHON) and exported with the project's export script.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const LAYERS: usize = 8;
pub const VOCAB: usize = 4096;
pub const BATCH: usize = 16;
pub const SEQ: usize = 128;

const MAKE: &str = r#"
import sys, torch, transformers
torch.manual_seed(0)
c = transformers.LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
    num_attention_heads=8, num_key_value_heads=2, head_dim=64, vocab_size=4096,
    max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=True)
transformers.LlamaForCausalLM(c).eval().save_pretrained(sys.argv[1])
"#;

const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
    "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
    "model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;

/// Makes the model in `root/model` and exports it with `script` into `root/export`; None (with
/// a message) when PROBE_PYTHON is unset.
pub fn exported(root: &Path, script: &str) -> Option<PathBuf> {
    let Ok(python) = std::env::var("PROBE_PYTHON") else {
        eprintln!("SKIPPED: set PROBE_PYTHON to the venv's python (scripts/venv) to run this bench");
        return None;
    };
    let model = root.join("model");
    let status = Command::new(&python).arg("-c").arg(MAKE).arg(&model).status().expect("run python");
    assert!(status.success(), "making the random model failed");
    std::fs::write(model.join("tokenizer.json"), TOKENIZER).expect("tokenizer");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python");
    let out = root.join("export");
    let status = Command::new(&python).arg(scripts.join(script)).arg(&model).arg(&out).status().expect("export");
    assert!(status.success(), "{script} failed");
    Some(out)
}

/// Deterministic token ids, BATCH × SEQ.
pub fn token_ids() -> Vec<Vec<u32>> {
    let mut state = 7u64;
    (0..BATCH)
        .map(|_| {
            (0..SEQ)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % VOCAB as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// Benchmarks `model` capturing 1 layer vs all layers of the shared model, in a criterion
/// group named `group`; tokens/s is criterion's throughput.
pub fn bench_capture(c: &mut criterion::Criterion, group: String, model: &dyn probe_core::ActivationExtractor) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ids = token_ids();
    let mut group = c.benchmark_group(group);
    group.sample_size(10);
    group.throughput(criterion::Throughput::Elements((BATCH * SEQ) as u64));
    for (name, layers) in [("capture_1_layer", vec![LAYERS]), ("capture_all_layers", (0..=LAYERS).collect())] {
        let req = probe_core::ActivationRequest::token_ids(ids.clone(), layers).with_batch_size(BATCH);
        // extract returns after the values are copied to the host: the device is synced.
        group.bench_function(name, |b| b.iter(|| rt.block_on(model.extract(req.clone())).expect("extract")));
    }
    group.finish();
}
