"""Metrics and bootstrap against scikit-learn, computed one resample at a time."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fusebench import metrics
from fusebench.errors import FusebenchError
from fusebench.metrics import (
    auroc,
    auroc_resampled,
    average_precision,
    average_precision_resampled,
    bootstrap_indices,
    format_ci,
    score_predictions,
)

EXACT = {"rtol": 1e-12, "atol": 1e-12}


def _random_case(seed: int, n: int, prevalence: float, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    y[:2] = [True, False]  # both classes present
    score = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=n))))
    if decimals is not None:  # coarse scores: many ties, also across classes
        score = np.round(score, decimals)
    return y, score


CASES = {
    "random": _random_case(0, 300, 0.3),
    "tied": _random_case(1, 300, 0.4, decimals=1),
    "all_tied": (np.array([0, 1, 0, 1, 1]), np.full(5, 0.5)),
    "imbalanced": _random_case(2, 500, 0.01),
    "one_negative": (np.array([1, 1, 0, 1, 1, 1]), np.array([0.9, 0.3, 0.3, 0.5, 0.2, 0.8])),
    "float32_outputs": (_random_case(3, 400, 0.2)[0],
                        _random_case(3, 400, 0.2)[1].astype(np.float32)),
}


@pytest.mark.parametrize("case", CASES)
def test_point_metrics_equal_sklearn(case):
    y, score = CASES[case]
    np.testing.assert_allclose(auroc(y, score), roc_auc_score(y, score), **EXACT)
    np.testing.assert_allclose(
        average_precision(y, score), average_precision_score(y, score), **EXACT
    )


def test_one_class_is_nan_not_an_error():
    assert np.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(average_precision([1, 1], [0.1, 0.2]))


@pytest.mark.parametrize("case", ["random", "tied", "imbalanced", "one_negative"])
def test_replicates_equal_sklearn_on_the_same_resamples(case):
    y, score = CASES[case]
    indices = bootstrap_indices(len(y), n_resamples=40, seed=5)
    auroc_values = auroc_resampled(y, score, indices)
    precision_values = average_precision_resampled(y, score, indices)
    checked = 0
    for b, rows in enumerate(indices):
        if len(np.unique(y[rows])) < 2:
            assert np.isnan(auroc_values[b]) and np.isnan(precision_values[b])
            continue
        np.testing.assert_allclose(auroc_values[b], roc_auc_score(y[rows], score[rows]), **EXACT)
        np.testing.assert_allclose(
            precision_values[b], average_precision_score(y[rows], score[rows]), **EXACT
        )
        checked += 1
    assert checked >= 10


def _sklearn_replicates(y, prob, indices):
    """(B, C) AUROC and AUPRC computed the slow way, NaN where a label has one class."""
    shape = (len(indices), y.shape[1])
    auroc_values, precision_values = np.full(shape, np.nan), np.full(shape, np.nan)
    for b, rows in enumerate(indices):
        for c in range(y.shape[1]):
            if len(np.unique(y[rows, c])) == 2:
                auroc_values[b, c] = roc_auc_score(y[rows, c], prob[rows, c])
                precision_values[b, c] = average_precision_score(y[rows, c], prob[rows, c])
    return auroc_values, precision_values


def _multilabel(seed: int, n: int = 150, n_labels: int = 4):
    columns = [_random_case(seed + c, n, 0.15 + 0.1 * c, decimals=2) for c in range(n_labels)]
    return np.stack([y for y, _ in columns], 1), np.stack([s for _, s in columns], 1)


LABELS = ["a", "b", "c", "d"]


def test_intervals_are_percentiles_of_sklearn_replicates_and_macro_is_per_replicate():
    y, prob = _multilabel(10)
    scores = score_predictions(y, prob, LABELS, n_resamples=60, seed=3,
                               label_groups={"first_two": ["a", "b"]})
    auroc_values, precision_values = _sklearn_replicates(y, prob, bootstrap_indices(150, 60, 3))
    for metric, replicates in (("auroc", auroc_values), ("auprc", precision_values)):
        block = scores[metric]
        for c, label in enumerate(LABELS):
            np.testing.assert_allclose(
                block["per_label"][label]["ci"], np.quantile(replicates[:, c], [0.025, 0.975]),
                **EXACT)
        macro_replicates = replicates.mean(axis=1)
        np.testing.assert_allclose(block["macro"]["ci"],
                                   np.quantile(macro_replicates, [0.025, 0.975]), **EXACT)
        np.testing.assert_allclose(block["groups"]["first_two"]["ci"],
                                   np.quantile(replicates[:, :2].mean(1), [0.025, 0.975]),
                                   **EXACT)
        # Averaging independent labels inside each replicate narrows the interval: the
        # original's mean of per-label bounds is a different (wider) interval.
        mean_of_bounds = np.mean([block["per_label"][label]["ci"] for label in LABELS], axis=0)
        low, high = block["macro"]["ci"]
        assert high - low < 0.8 * (mean_of_bounds[1] - mean_of_bounds[0])
    point = np.mean([roc_auc_score(y[:, c], prob[:, c]) for c in range(4)])
    np.testing.assert_allclose(scores["auroc"]["macro"]["value"], point, **EXACT)


def test_degenerate_resamples_are_nan_counted_and_left_out_of_the_macro():
    rng = np.random.default_rng(0)
    n = 12
    y = np.zeros((n, 2), dtype=int)
    y[:, 0] = rng.random(n) < 0.5
    y[[0, 1], 0] = [1, 0]
    y[3, 1] = 1  # label "rare": one positive, missing from about a third of resamples
    prob = rng.random((n, 2))
    indices = bootstrap_indices(n, 200, seed=1)
    missing = ~(indices == 3).any(axis=1)
    assert 0 < missing.sum() < 200

    scores = score_predictions(y, prob, ["common", "rare"], n_resamples=200, seed=1)
    assert scores["ci"]["degenerate_resamples"]["rare"] == missing.sum()
    assert scores["ci"]["partial_macro_resamples"] >= missing.sum()
    assert np.isnan(auroc_resampled(y[:, 1], prob[:, 1], indices)[missing]).all()
    # Where "rare" is undefined the replicate's macro is "common" alone.
    auroc_values, _ = _sklearn_replicates(y, prob, indices)
    with warnings.catch_warnings():  # rows where both labels are undefined: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = np.nanmean(auroc_values, axis=1)
    assert np.array_equal(np.isnan(auroc_values[:, 1]), missing)
    np.testing.assert_allclose(scores["auroc"]["macro"]["ci"],
                               np.nanquantile(macro, [0.025, 0.975]), **EXACT)


def test_label_with_one_class_in_the_test_set_is_null_and_excluded():
    y, prob = _multilabel(20, n_labels=2)
    y[:, 1] = 0
    scores = score_predictions(y, prob, ["a", "b"], n_resamples=50)
    assert scores["auroc"]["per_label"]["b"] == {"value": None, "ci": None}
    assert scores["ci"]["degenerate_resamples"]["b"] == 50
    assert scores["auroc"]["macro"]["value"] == scores["auroc"]["per_label"]["a"]["value"]


def test_seed_fixes_the_interval():
    y, prob = _multilabel(30)
    first = score_predictions(y, prob, LABELS, n_resamples=100, seed=7)
    again = score_predictions(y, prob, LABELS, n_resamples=100, seed=7)
    other = score_predictions(y, prob, LABELS, n_resamples=100, seed=8)
    assert first == again
    assert first["auroc"]["macro"]["ci"] != other["auroc"]["macro"]["ci"]
    assert first["auroc"]["macro"]["value"] == other["auroc"]["macro"]["value"]


def test_difference_uses_the_same_resamples():
    y, prob = _multilabel(40)
    rng = np.random.default_rng(0)
    reference = np.clip(prob + rng.normal(scale=0.2, size=prob.shape), 0, 1)

    itself = score_predictions(y, prob, LABELS, n_resamples=80, reference_prob=prob)
    for metric in ("auroc", "auprc"):
        assert itself["difference"][metric]["macro"] == {"value": 0.0, "ci": [0.0, 0.0]}

    scores = score_predictions(y, prob, LABELS, n_resamples=80, reference_prob=reference)
    indices = bootstrap_indices(len(y), 80, 0)
    method_values, _ = _sklearn_replicates(y, prob, indices)
    reference_values, _ = _sklearn_replicates(y, reference, indices)
    paired = method_values.mean(1) - reference_values.mean(1)
    np.testing.assert_allclose(scores["difference"]["auroc"]["macro"]["ci"],
                               np.quantile(paired, [0.025, 0.975]), **EXACT)
    # Paired resampling: the difference interval is narrower than either method's own.
    width = np.diff(scores["difference"]["auroc"]["macro"]["ci"])[0]
    assert width < np.diff(scores["auroc"]["macro"]["ci"])[0]


def test_indices_match_pandas_sample_with_the_same_generator():
    frame = pd.DataFrame({"position": np.arange(37)})
    generator = np.random.default_rng(11)
    drawn = [frame.sample(frac=1, replace=True, random_state=generator)["position"].to_numpy()
             for _ in range(5)]
    assert np.array_equal(bootstrap_indices(37, 5, seed=11), np.stack(drawn))


def test_blocks_of_resamples_do_not_change_the_result(monkeypatch):
    y, prob = _multilabel(50)
    whole = score_predictions(y, prob, LABELS, n_resamples=70)
    monkeypatch.setattr(metrics, "_BLOCK_COUNTS", 150 * 8)  # blocks of 8 resamples
    assert score_predictions(y, prob, LABELS, n_resamples=70) == whole


def test_result_is_json_able():
    y, prob = _multilabel(60)
    scores = score_predictions(y, prob, LABELS, n_resamples=20, reference_prob=prob,
                               label_groups={"g": ["c", "d"]})
    assert json.loads(json.dumps(scores)) == scores
    assert set(scores) == {"auroc", "auprc", "difference", "ci"}


def test_format_ci():
    assert format_ci({"value": 0.8123, "ci": [0.79, 0.8342]}) == "0.812 [0.790, 0.834]"
    assert format_ci({"value": -0.01, "ci": [-0.031, 0.012]}, digits=2) == "-0.01 [-0.03, 0.01]"
    assert format_ci({"value": None, "ci": None}) == "n/a"
    assert format_ci({"value": 0.5, "ci": None}) == "0.500 [n/a]"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: auroc([0, 2, 1], [0.1, 0.2, 0.3]), "0/1"),
        (lambda: auroc([0, 1], [0.1, np.nan]), "NaN"),
        (lambda: auroc([0, 1, 1], [0.1, 0.2]), "equal length"),
        (lambda: score_predictions([[0], [1]], [[0.1], [0.2]], ["a", "b"]), "2 label names"),
        (lambda: score_predictions([[0], [1]], [[0.1, 0.2], [0.2, 0.1]], ["a"]), "shape"),
        (lambda: score_predictions([[0], [1]], [[0.1], [0.2]], ["a"],
                                   label_groups={"g": ["z"]}), "unknown labels"),
        (lambda: score_predictions([[0], [1]], [[0.1], [0.2]], ["a"], n_resamples=0),
         "n_resamples"),
        (lambda: auroc_resampled([0, 1], [0.1, 0.2], np.array([[0, 2]])), "bootstrap_indices"),
    ],
)
def test_bad_input_is_a_one_line_error(call, message):
    with pytest.raises(FusebenchError, match=message):
        call()
