"""Bootstrap of a phenotyping test set: 25 labels x 2,166 stays x 1,000 resamples, AUROC and AUPRC.

Run: ``.venv/bin/pytest tests/benchmarks/bench_bootstrap.py --benchmark-only``

``test_original_loop`` times a re-implementation of MedFuse's evaluation (per label: point
metrics, then for every resample ``DataFrame.sample(frac=1, replace=True)`` of the
(label, prediction) frame and sklearn's ``roc_auc_score`` / ``average_precision_score``, then
its delta-percentile interval). The full loop takes about two minutes on 2 cores, so by default it
runs once on ``FUSEBENCH_BENCH_ORIGINAL_RESAMPLES`` (100) resamples and the 1,000-resample time
is extrapolated linearly (the loop's cost is proportional to the number of resamples); set the
variable to 1000 to time it in full. It then checks that our replicates and intervals equal the
original's on the same resamples and prints the speed-up.
"""

import os
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fusebench.metrics import (
    auroc_resampled,
    average_precision_resampled,
    bootstrap_indices,
    score_predictions,
)

N_STAYS = 2166
N_LABELS = 25
N_RESAMPLES = 1000
SEED = 0
ORIGINAL_RESAMPLES = int(os.environ.get("FUSEBENCH_BENCH_ORIGINAL_RESAMPLES", "100"))
LABELS = [f"phenotype_{c}" for c in range(N_LABELS)]


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    """Labels with phenotyping-like prevalences (3-35%) and float32 sigmoid outputs (some ties)."""
    rng = np.random.default_rng(2022)
    prevalence = rng.uniform(0.03, 0.35, N_LABELS)
    y_true = (rng.random((N_STAYS, N_LABELS)) < prevalence).astype(int)
    logits = 1.5 * y_true + rng.normal(size=(N_STAYS, N_LABELS)) - 1.0
    y_prob = (1 / (1 + np.exp(-logits))).astype(np.float32).astype(np.float64)
    return y_true, y_prob


def _original_interval(replicates: list[float], true_value: float) -> tuple[float, float]:
    """MedFuse's interval: percentiles of (true - replicate), mapped back; returns (lower, upper)."""
    delta = true_value - np.asarray(replicates)
    return true_value - np.percentile(delta, 97.5), true_value - np.percentile(delta, 2.5)


def original_bootstrap(y_true: np.ndarray, y_prob: np.ndarray, n_resamples: int, seed: int):
    """The original per-label loop; returns per label (AUROC list, AUPRC list, AUROC CI, AUPRC CI).

    MedFuse draws from the global RNG; here every label gets a generator seeded with ``seed``,
    so its b-th ``DataFrame.sample`` draws row b of ``bootstrap_indices(n, B, seed)``.
    """
    per_label = []
    for c in range(y_true.shape[1]):
        frame = pd.DataFrame({"y_truth": y_true[:, c], "y_pred": y_prob[:, c]})
        test_auroc = roc_auc_score(frame["y_truth"], frame["y_pred"])
        test_auprc = average_precision_score(frame["y_truth"], frame["y_pred"])
        generator = np.random.default_rng(seed)
        auroc_list, auprc_list = [], []
        for _ in range(n_resamples):
            sample = frame.sample(frac=1, replace=True, random_state=generator)
            auprc_list.append(average_precision_score(sample["y_truth"], sample["y_pred"]))
            auroc_list.append(roc_auc_score(sample["y_truth"], sample["y_pred"]))
        per_label.append((auroc_list, auprc_list, _original_interval(auroc_list, test_auroc),
                          _original_interval(auprc_list, test_auprc)))
    return per_label


def _ours(y_true: np.ndarray, y_prob: np.ndarray, n_resamples: int) -> dict:
    return score_predictions(y_true, y_prob, LABELS, n_resamples=n_resamples, seed=SEED)


def test_ours(benchmark, test_set):
    scores = benchmark(_ours, *test_set, N_RESAMPLES)
    assert sum(scores["ci"]["degenerate_resamples"].values()) == 0


def test_original_loop(benchmark, test_set, capsys):
    y_true, y_prob = test_set
    original = benchmark.pedantic(original_bootstrap, args=(y_true, y_prob, ORIGINAL_RESAMPLES,
                                                            SEED), rounds=1, iterations=1)

    # Equal values on equal resamples: replicates and per-label intervals.
    indices = bootstrap_indices(N_STAYS, ORIGINAL_RESAMPLES, SEED)
    ours = _ours(y_true, y_prob, ORIGINAL_RESAMPLES)
    for c, (auroc_list, auprc_list, auroc_ci, auprc_ci) in enumerate(original):
        np.testing.assert_allclose(auroc_resampled(y_true[:, c], y_prob[:, c], indices),
                                   auroc_list, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(average_precision_resampled(y_true[:, c], y_prob[:, c], indices),
                                   auprc_list, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours["auroc"]["per_label"][LABELS[c]]["ci"], auroc_ci,
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours["auprc"]["per_label"][LABELS[c]]["ci"], auprc_ci,
                                   rtol=1e-12, atol=1e-12)

    original_full_s = benchmark.stats.stats.mean * N_RESAMPLES / ORIGINAL_RESAMPLES
    ours_s = min(_timed(_ours, y_true, y_prob, N_RESAMPLES) for _ in range(5))
    benchmark.extra_info.update(original_resamples=ORIGINAL_RESAMPLES,
                                original_1000_resamples_s=original_full_s,
                                ours_1000_resamples_s=ours_s, speedup=original_full_s / ours_s)
    with capsys.disabled():
        print(f"\noriginal loop: {benchmark.stats.stats.mean:.1f} s for {ORIGINAL_RESAMPLES} "
              f"resamples -> {original_full_s:.1f} s for {N_RESAMPLES} (linear); "
              f"ours: {ours_s:.3f} s for {N_RESAMPLES}; speed-up {original_full_s / ours_s:.0f}x")


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start
