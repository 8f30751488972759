"""Reference probe accuracies from scikit-learn, for probe-core/tests/probe_sklearn.rs.

Reads activations (a safetensors file with one f32 tensor `layer_<L>` of shape [n, hidden] per
layer) and a JSON file {"labels": [...], "folds": [...], "c": C}; for every layer and fold,
standardises the features on the training folds (StandardScaler) and fits
LogisticRegression(C, l1_ratio=0) (the L2 penalty; `penalty="l2"` is deprecated since
scikit-learn 1.8) with lbfgs run to convergence, then prints {"<L>": mean held-out accuracy}
as JSON on stdout.

    python sklearn_probes.py activations.safetensors meta.json
"""

import json
import sys
import warnings

import numpy as np
from safetensors.numpy import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def main() -> None:
    tensors = load_file(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        meta = json.load(f)
    labels = np.asarray(meta["labels"])
    folds = np.asarray(meta["folds"])
    c = float(meta["c"])
    warnings.simplefilter("error", ConvergenceWarning)
    out = {}
    for name, x in sorted(tensors.items()):
        layer = name.removeprefix("layer_")
        accuracies = []
        for k in range(int(folds.max()) + 1):
            train, test = folds != k, folds == k
            scaler = StandardScaler().fit(x[train].astype(np.float64))
            model = LogisticRegression(C=c, l1_ratio=0.0, max_iter=100_000, tol=1e-10)
            model.fit(scaler.transform(x[train].astype(np.float64)), labels[train])
            pred = model.predict(scaler.transform(x[test].astype(np.float64)))
            accuracies.append(float(np.mean(pred == labels[test])))
        out[layer] = float(np.mean(accuracies))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
