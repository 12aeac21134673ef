"""Outside yardsticks for bench/text.ts, on graft's own split: run by the bench (child_process), never by tests.

    /usr/bin/python3 bench/text_baselines.py DIR

DIR (written by the bench) holds
  split.json     {"texts": [...], "labels": [...], "train": [...], "val": [...], "classes": [...], "dim": D,
                  "positive": "spam", "scoring": "accuracy", "folds": 5, "seed": 0}
  features.f32   the backbone's pooled features as graft computed them, raw float32 little-endian [N, D]
                 (row i = texts[i]; rows outside train/val are not read)

Prints one JSON object:
  tfidf           word uni+bigram TF-IDF + LogisticRegression, C by stratified k-fold CV on the train rows
  tfidfDefaults   the same pipeline with sklearn's defaults (C = 1), no search
  embeddings      StandardScaler + LogisticRegression on graft's features, C by stratified k-fold CV on the train rows
each with accuracy, the positive class's F1, macro-F1, the chosen C and the CV score.
"""
import json
import os
import sys
import time

import numpy as np
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_cv import embeddings_probe, scores, search  # noqa: E402


def main():
    d = sys.argv[1]
    meta = json.load(open(os.path.join(d, "split.json")))
    texts = meta["texts"]
    y = np.array(meta["labels"])
    tr, va = np.array(meta["train"]), np.array(meta["val"])
    positive = meta["classes"].index(meta["positive"])
    common = {"scoring": meta["scoring"], "folds": meta["folds"], "sklearn": sklearn.__version__}

    tfidf = lambda: TfidfVectorizer(ngram_range=(1, 2))  # word uni+bigrams, lowercased, sklearn's token pattern
    lr = lambda: LogisticRegression(max_iter=10000)  # lbfgs, L2
    result = {"common": common}
    result["tfidf"] = search(make_pipeline(tfidf(), lr()), "logisticregression__C", texts, y, tr, va, positive, meta)
    t0 = time.perf_counter()
    pipe = make_pipeline(tfidf(), lr()).fit([texts[i] for i in tr], y[tr])
    result["tfidfDefaults"] = {**scores(y[va], pipe.predict([texts[i] for i in va]), positive), "C": 1.0, "seconds": round(time.perf_counter() - t0, 2)}

    X = np.fromfile(os.path.join(d, "features.f32"), dtype="<f4").reshape(-1, meta["dim"])
    result["embeddings"] = embeddings_probe(X, y, tr, va, positive, meta)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
