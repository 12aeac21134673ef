"""The outside yardstick for a backbone's features: StandardScaler + L2 LogisticRegression (lbfgs), C by stratified
k-fold cross-validation on the training rows only (sklearn's GridSearchCV), scored on graft's validation rows.
Run by the benches (child_process), never by tests.

    /usr/bin/python3 bench/probe_cv.py DIR

DIR (written by the bench) holds
  split.json     {"labels": [...], "train": [...], "val": [...], "dim": D, "scoring": "accuracy", "folds": 5, "seed": 0,
                  "grid": [C, ...] (optional; default GRID)}
  features.f32   the backbone's pooled features as graft computed them, raw float32 little-endian [N, D]

Prints one JSON object: accuracy, macroF1, the chosen C, the CV score and the seconds taken.
"""
import json
import os
import sys
import time

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000]


def scores(y, p, positive=None):
    out = {"accuracy": float(accuracy_score(y, p)), "macroF1": float(f1_score(y, p, average="macro", zero_division=0))}
    if positive is not None:
        out["positiveF1"] = float(f1_score(y, p, pos_label=positive, zero_division=0))
    return out


def search(pipe, param, X, y, tr, va, positive, meta, grid=GRID):
    t0 = time.perf_counter()
    cv = StratifiedKFold(meta["folds"], shuffle=True, random_state=meta["seed"])
    g = GridSearchCV(pipe, {param: grid}, cv=cv, scoring=meta["scoring"], n_jobs=1)
    g.fit(X[tr] if not isinstance(X, list) else [X[i] for i in tr], y[tr])
    Xv = X[va] if not isinstance(X, list) else [X[i] for i in va]
    out = scores(y[va], g.predict(Xv), positive)
    out.update({"C": float(g.best_params_[param]), "cvScore": float(g.best_score_), "grid": grid, "seconds": round(time.perf_counter() - t0, 2)})
    return out


def embeddings_probe(X, y, tr, va, positive, meta):
    grid = meta.get("grid", GRID)
    return search(make_pipeline(StandardScaler(), LogisticRegression(max_iter=10000)), "logisticregression__C", X, y, tr, va, positive, meta, grid)


def main():
    d = sys.argv[1]
    meta = json.load(open(os.path.join(d, "split.json")))
    y = np.array(meta["labels"])
    tr, va = np.array(meta["train"]), np.array(meta["val"])
    X = np.fromfile(os.path.join(d, "features.f32"), dtype="<f4").reshape(-1, meta["dim"])
    out = embeddings_probe(X, y, tr, va, None, meta)
    out["sklearn"] = sklearn.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
