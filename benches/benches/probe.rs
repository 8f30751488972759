//! Probe training per layer: everything a sweep does for one layer after extraction
//! (`sweep::evaluate_layer` with the default settings: 5 stratified folds, C = 1, the
//! control task, the difference-of-means probe, the bootstrap interval), on activation-like
//! rows (shared low-rank structure, a class direction, noise). Sizes: 2,000 × 1,024 and a
//! realistic layer, 10,000 × 4,096 (a 7–8B model's hidden size); one logistic fit alone at the
//! large size as well (the outer fold's training rows).
//!
//! Probes per head (`sweep::evaluate_heads`, what `probe sweep --site heads` runs per block):
//! one block of Llama-3.1-8B's shape, 3,000 prompts × 32 heads × head_dim 128, the same
//! defaults; its time / 32 is the time per head, × 1,024 the whole model's 32 × 32 heads.
//!
//! `cargo bench -p probe-benches --bench probe` (`-- 2000x1024` for the small size only,
//! `-- heads` for the heads only)

use criterion::{Criterion, criterion_group, criterion_main};
use probe_core::Tensor;
use probe_core::sweep::{LogisticProbe, ProbeConfig, Targets, evaluate_heads, evaluate_layer, stratified_folds};

/// `n` rows of width `d` with labels 0/1 (one in three positive) linearly readable but noisy.
fn layer(n: usize, d: usize) -> (Tensor, Targets) {
    let mut state = 0x1234_5678_u64;
    let mut uniform = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let labels: Vec<usize> = (0..n).map(|i| usize::from(i % 3 == 0)).collect();
    let rank = 8;
    let basis: Vec<f32> = (0..rank * d).map(|_| uniform()).collect();
    let direction: Vec<f32> = (0..d).map(|_| uniform() * 0.1).collect();
    let mut data = Vec::with_capacity(n * d);
    for &y in &labels {
        let z: Vec<f32> = (0..rank).map(|_| uniform() * 4.0).collect();
        for j in 0..d {
            let shared: f32 = (0..rank).map(|r| z[r] * basis[r * d + j]).sum();
            data.push(shared + if y == 1 { direction[j] } else { 0.0 } + uniform());
        }
    }
    (Tensor::new(vec![n, d], data), Targets::Classes { labels, n_classes: 2 })
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("probe");
    group.sample_size(10);
    // `cargo test --benches` runs each benchmark once as a test: small sizes there.
    let measuring = std::env::args().any(|a| a == "--bench");
    let sizes: &[(usize, usize)] = if measuring { &[(2_000, 1_024), (10_000, 4_096)] } else { &[(120, 16)] };
    for &(n, d) in sizes {
        let (x, targets) = layer(n, d);
        let config = ProbeConfig::default();
        let folds = stratified_folds(&targets.strata(config.folds), config.folds, 0).expect("folds");
        group.bench_function(format!("layer {n}x{d}, 5 folds + control"), |b| {
            b.iter(|| evaluate_layer(0, &x, &targets, &folds, &config).expect("probe"))
        });
        let rows: Vec<usize> = (0..n).filter(|&r| folds[r] != 0).collect();
        let Targets::Classes { labels, .. } = &targets else { unreachable!() };
        group.bench_function(format!("one logistic fit {}x{d}", rows.len()), |b| {
            b.iter(|| LogisticProbe::fit(&x, labels, &rows, 2, 1.0, &config).expect("fit"))
        });
    }
    // One block of heads: Llama-3.1-8B has 32 heads of 128 per block, 32 blocks.
    let (n, heads, head_dim) = if measuring { (3_000, 32, 128) } else { (120, 2, 8) };
    let (x, targets) = layer(n, heads * head_dim);
    let config = ProbeConfig::default();
    let folds = stratified_folds(&targets.strata(config.folds), config.folds, 0).expect("folds");
    group.bench_function(format!("heads {n}x{heads}x{head_dim} (one block), 5 folds + control"), |b| {
        b.iter(|| evaluate_heads(0, &x, (heads, head_dim), &targets, &folds, &config).expect("heads"))
    });
    // The same probes one head at a time, each with its folds in parallel (what a heads sweep
    // did before `evaluate_heads` ran the heads in parallel): the baseline of the line above.
    let columns: Vec<Tensor> = (0..heads)
        .map(|h| {
            let data = (0..n).flat_map(|r| x.row(r)[h * head_dim..(h + 1) * head_dim].iter().copied()).collect();
            Tensor::new(vec![n, head_dim], data)
        })
        .collect();
    group.bench_function(format!("heads {n}x{heads}x{head_dim} one at a time, folds in parallel"), |b| {
        b.iter(|| {
            columns.iter().map(|c| evaluate_layer(0, c, &targets, &folds, &config).expect("head")).collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group!(probe_benches, benches);
criterion_main!(probe_benches);
