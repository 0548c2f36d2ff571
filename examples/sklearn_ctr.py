#!/usr/bin/env python3
"""fmcli's scikit-learn estimators on a small click log, end to end.

Needs the sklearn extra (pip install 'fm-ctr[sklearn]') and pandas.  Run
from the repository root:

    python examples/sklearn_ctr.py

It builds a DataFrame of categorical and numeric columns, then shows:
a field-aware FM fitted on the DataFrame (each column a field), early
stopping on a validation fraction, incremental training with partial_fit,
a grid search, calibration, a Pipeline with the raw-log encoder, and a
model saved for `fm predict` / `fm inspect` and loaded back.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline

from fmcli.estimators import FFMClassifier, FMClassifier, load
from fmcli.transformers import RawLogEncoder


def click_log(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of (site, app, device, hour, price) with clicks from a planted
    model in which site x device and app x hour interact."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, 40, n)
    app = rng.integers(0, 30, n)
    device = rng.integers(0, 5, n)
    hour = rng.integers(0, 24, n)
    price = rng.gamma(2.0, 1.5, n)
    logit = (-1.5 + 0.8 * np.sin(site * 1.3 + device * 2.1) + 0.6 * np.cos(app * 0.7 + hour * 0.5)
             - 0.15 * price)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"site": [f"s{v}" for v in site], "app": [f"a{v}" for v in app],
                          "device": pd.Categorical([f"d{v}" for v in device]),
                          "hour": hour.astype(str), "price": price})
    return frame, y


def main() -> None:
    X, y = click_log(20000)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

    # 1. Each DataFrame column is a field; strings and categories are hashed
    #    exactly as `fm train` hashes a wide Parquet file's columns.
    ffm = FFMClassifier(k=4, epochs=10, patience=2, validation_fraction=0.1).fit(X_tr, y_tr)
    p = ffm.predict_proba(X_te)[:, 1]
    print(f"FFM on the DataFrame: {ffm.n_iter_} epochs run, test logloss {log_loss(y_te, p):.4f}, "
          f"AUC {roc_auc_score(y_te, p):.4f}")

    # 2. Incremental training: partial_fit keeps the optimizer state.
    inc = FFMClassifier(k=4)
    for chunk in np.array_split(np.arange(len(X_tr)), 5):
        inc.partial_fit(X_tr.iloc[chunk], y_tr[chunk], classes=[0, 1])
    print(f"FFM, 5 partial_fit calls: test logloss {log_loss(y_te, inc.predict_proba(X_te)[:, 1]):.4f}")

    # 3. Hyperparameter search and calibration work as for any estimator.
    grid = GridSearchCV(FMClassifier(epochs=5), {"k": [2, 8], "learning_rate": [0.05, 0.2]},
                        scoring="neg_log_loss", cv=3).fit(X_tr, y_tr)
    print(f"grid search: best {grid.best_params_}, CV logloss {-grid.best_score_:.4f}")
    calibrated = CalibratedClassifierCV(FMClassifier(epochs=5), method="isotonic", cv=3).fit(X_tr, y_tr)
    print(f"calibrated FM: test logloss {log_loss(y_te, calibrated.predict_proba(X_te)[:, 1]):.4f}")

    # 4. Raw columns through the fm convert recipe (log-binned numbers, rare
    #    values pooled), then an FM on the encoded ids.
    pipe = make_pipeline(RawLogEncoder(), FMClassifier(k=4, epochs=5)).fit(X_tr, y_tr)
    print(f"RawLogEncoder + FM: test logloss {log_loss(y_te, pipe.predict_proba(X_te)[:, 1]):.4f}")

    # 5. The fitted model is an ordinary model file: fm predict and fm inspect
    #    read it, and it loads back as a fitted estimator.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ctr.fm")
        ffm.save(path)
        again = load(path)
        same = np.array_equal(again.predict_proba(X_te), ffm.predict_proba(X_te))
        print(f"saved {os.path.getsize(path):,} bytes to a model file; loaded back: {type(again).__name__}, "
              f"same predictions: {same}")


if __name__ == "__main__":
    main()
