//! Unit tests of the probes.

use super::folds::SplitMix;
use super::*;
use crate::Tensor;

fn blobs(n: usize, d: usize, sep: f32, seed: u64) -> (Tensor, Vec<usize>) {
    let mut rng = SplitMix(seed);
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % 2;
        for j in 0..d {
            let noise = (rng.next() % 10_000) as f32 / 10_000.0 - 0.5;
            data.push(noise + if j == 0 && c == 1 { sep } else { 0.0 });
        }
        labels.push(c);
    }
    (Tensor::new(vec![n, d], data), labels)
}

fn classes(labels: Vec<usize>, n_classes: usize) -> Targets {
    Targets::Classes { labels, n_classes }
}

fn cv(x: &Tensor, t: &Targets, cfg: &ProbeConfig) -> crate::sweep::LayerScore {
    let fold = stratified_folds(&t.strata(cfg.folds), cfg.folds, cfg.seed).unwrap();
    evaluate_layer(3, x, t, &fold, cfg).unwrap()
}

#[test]
fn separable_data_is_perfect_and_the_control_is_near_chance() {
    let (x, y) = blobs(200, 16, 3.0, 1);
    let s = cv(&x, &classes(y, 2), &ProbeConfig::default());
    assert_eq!((s.layer, s.accuracy, s.auc, s.accuracy_std), (3, 1.0, 1.0, Some(0.0)));
    assert_eq!((s.n_train, s.n_test, s.c), (160, 40, 1.0));
    assert_eq!(s.dom_accuracy, Some(1.0));
    let control = s.control_accuracy.unwrap();
    assert!((control - 0.5).abs() < 0.12, "control accuracy {control}");
    assert!((s.selectivity.unwrap() - (1.0 - control)).abs() < 1e-12);
    assert!(s.ci95[0] <= 1.0 && s.ci95[1] == 1.0);
}

#[test]
fn random_labels_are_near_chance_with_an_interval_around_them() {
    let (x, _) = blobs(1000, 8, 0.0, 2);
    let mut rng = SplitMix(99);
    let y: Vec<usize> = (0..1000).map(|_| (rng.next() % 2) as usize).collect();
    let s = cv(&x, &classes(y, 2), &ProbeConfig::default());
    assert!((s.accuracy - 0.5).abs() < 0.06, "accuracy {}", s.accuracy);
    assert!((s.auc - 0.5).abs() < 0.06, "auc {}", s.auc);
    assert!(s.ci95[0] < s.accuracy && s.accuracy < s.ci95[1] && s.ci95[1] - s.ci95[0] < 0.1, "{:?}", s.ci95);
}

#[test]
fn three_classes_are_multinomial() {
    let mut data = Vec::new();
    let mut y = Vec::new();
    let mut rng = SplitMix(3);
    for i in 0..150 {
        let c = i % 3;
        for j in 0..3 {
            let noise = (rng.next() % 1000) as f32 / 1000.0 - 0.5;
            data.push(noise + if j == c { 4.0 } else { 0.0 });
        }
        y.push(c);
    }
    let x = Tensor::new(vec![150, 3], data);
    let s = cv(&x, &classes(y, 3), &ProbeConfig::default());
    assert_eq!((s.accuracy, s.auc, s.dom_accuracy), (1.0, 1.0, Some(1.0)));
}

#[test]
fn the_c_grid_is_chosen_by_inner_cross_validation() {
    // Few informative rows in many noisy features: a strong penalty generalises better.
    let (x, y) = blobs(60, 200, 0.6, 5);
    let cfg = ProbeConfig::default().with_c_grid(vec![100.0, 0.001]);
    let s = cv(&x, &classes(y, 2), &cfg);
    assert!(s.c == 0.001 || s.c == 100.0, "c {}", s.c);
    assert_eq!(ProbeConfig::default().with_c_grid(vec![1.0, 0.1, 1.0]).grid(), vec![0.1, 1.0]);
    assert_eq!(parse_c_grid("0.01, 0.1,1,10").unwrap(), vec![0.01, 0.1, 1.0, 10.0]);
    let e = parse_c_grid("0.1,x").unwrap_err().to_string();
    assert!(e.contains("\"x\""), "{e}");
    assert!(parse_c_grid("0").is_err());
    let e = ProbeConfig::default().with_folds(1).validate().unwrap_err().to_string();
    assert!(e.contains("folds: 1"), "{e}");
}

#[test]
fn numeric_labels_give_ridge_r2() {
    let mut rng = SplitMix(4);
    let (n, d) = (300, 10);
    let data: Vec<f32> = (0..n * d).map(|_| (rng.next() % 10_000) as f32 / 10_000.0).collect();
    let y: Vec<f64> = (0..n).map(|i| 3.0 * f64::from(data[i * d]) - f64::from(data[i * d + 1])).collect();
    let x = Tensor::new(vec![n, d], data);
    let s = cv(&x, &Targets::Numeric(y), &ProbeConfig::default());
    let r2 = s.r2.unwrap();
    assert!(r2 > 0.99, "r2 {r2}");
    assert!(s.control_r2.unwrap() < 0.1, "control {:?}", s.control_r2);
    assert!(s.accuracy.is_nan() && s.auc.is_nan() && s.dom_accuracy.is_none());
    let json = serde_json::to_value(s).unwrap();
    assert!(json.get("accuracy").is_none() && json["r2"].as_f64().is_some(), "{json}");
}

#[test]
fn labels_are_read_as_declared_or_detected() {
    let cls = |v: &[&str]| {
        let mut c: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
        c.sort();
        c.dedup();
        c
    };
    let ints = ["0", "1", "1", "0"];
    assert!(matches!(Targets::from_labels(&ints, &cls(&ints), LabelKind::Auto).unwrap(), Targets::Classes { .. }));
    let t = Targets::from_labels(&ints, &cls(&ints), LabelKind::Numeric).unwrap();
    assert_eq!(t, Targets::Numeric(vec![0.0, 1.0, 1.0, 0.0]));
    let reals = ["0.5", "1", "2.25", "3"];
    assert_eq!(t.task(), "regression");
    assert!(matches!(Targets::from_labels(&reals, &cls(&reals), LabelKind::Auto).unwrap(), Targets::Numeric(_)));
    let words = ["yes", "no"];
    let e = Targets::from_labels(&words, &cls(&words), LabelKind::Numeric).unwrap_err().to_string();
    assert!(e.contains("\"yes\" is not a number"), "{e}");
    assert_eq!("numeric".parse::<LabelKind>().unwrap(), LabelKind::Numeric);
    assert!("num".parse::<LabelKind>().is_err());
    assert_eq!(Targets::Numeric(vec![5.0, 1.0, 3.0, 2.0]).strata(2), vec![1, 0, 1, 0]);
}

#[test]
fn auc_handles_ties_and_order() {
    assert_eq!(roc_auc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]), 1.0);
    assert_eq!(roc_auc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]), 0.0);
    assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), 0.5);
    assert!(roc_auc(&[0.5], &[true]).is_nan());
}

#[test]
fn each_head_is_a_layer_probe_on_its_columns() {
    // Two heads of 4: the first carries the class in its column 0, the second is noise.
    let (signal, y) = blobs(120, 4, 3.0, 1);
    let (noise, _) = blobs(120, 4, 0.0, 2);
    let data = (0..120).flat_map(|r| signal.row(r).iter().chain(noise.row(r)).copied()).collect();
    let x = Tensor::new(vec![120, 8], data);
    let (t, cfg) = (classes(y, 2), ProbeConfig::default());
    let fold = stratified_folds(&t.strata(cfg.folds), cfg.folds, cfg.seed).unwrap();
    let heads = evaluate_heads(5, &x, (2, 4), &t, &fold, &cfg).unwrap();
    assert_eq!(heads.iter().map(|s| (s.layer, s.head)).collect::<Vec<_>>(), [(5, Some(0)), (5, Some(1))]);
    for (h, alone) in [signal, noise].iter().enumerate() {
        let want = evaluate_layer(5, alone, &t, &fold, &cfg).unwrap();
        assert_eq!((heads[h].accuracy, heads[h].auc, heads[h].ci95), (want.accuracy, want.auc, want.ci95), "head {h}");
    }
    assert_eq!(heads[0].accuracy, 1.0);
    let err = evaluate_heads(5, &x, (3, 4), &t, &fold, &cfg).unwrap_err().to_string();
    assert!(err.contains("[120, 8]") && err.contains("3 heads × 4"), "{err}");
}
