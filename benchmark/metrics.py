"""Test-set metrics (AUROC, AUPRC) with bootstrap confidence intervals, all replicates at once.

The point metrics equal scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(ties included). The bootstrap draws ONE matrix of resample indices (stays, with replacement)
that every label, metric and method shares, so macro averages and paired differences between
methods are computed inside every replicate and get real percentile intervals.

How the replicates are computed without a Python loop over them: a resample is fully described
by how many times it drew each stay (a count matrix, stays x replicates). Sorting a label's
scores once, the cumulative counts along the sorted stays give, for every replicate at once,
how many drawn stays score below each tie group. From those:

- AUROC is the Mann-Whitney statistic with mid-ranks: the rank sum of the drawn positives,
  minus ``P (P + 1) / 2``, over ``P N``. This equals sklearn's trapezoid over distinct thresholds.
- Average precision is sklearn's step sum over distinct thresholds: every drawn positive adds
  ``precision at its score / P``, where precision counts everything scoring at least as high.

Everything is integer counting until one final division, so replicate values match sklearn on
the resampled arrays to rounding (about 1e-16).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusebench.errors import FusebenchError

__all__ = [
    "auroc",
    "auroc_resampled",
    "average_precision",
    "average_precision_resampled",
    "bootstrap_indices",
    "format_ci",
    "score_predictions",
]

# Replicates are processed in blocks of about this many (stay, replicate) counts (2 MiB of
# int32) so that the per-label working arrays stay in cache; the result does not depend on it.
_BLOCK_COUNTS = 1 << 19


@dataclass(frozen=True)
class _RankedLabel:
    """One label's stays sorted by score once, with the tie structure every replicate needs.

    Positions refer to the ascending score order. Each positive stay belongs to a tie group
    ``[group_start, group_end)`` of sorted positions; ``first_positive`` is the index (among
    the positives, in sorted order) of the first positive of that group.
    """

    order: np.ndarray
    positive_positions: np.ndarray
    group_start: np.ndarray
    group_end: np.ndarray
    first_positive: np.ndarray


def _rank_label(y_true: np.ndarray, y_score: np.ndarray) -> _RankedLabel:
    order = np.argsort(y_score, kind="stable")
    sorted_score = y_score[order]
    opens_group = np.concatenate(([True], sorted_score[1:] != sorted_score[:-1]))
    group_of_position = np.cumsum(opens_group) - 1
    starts = np.flatnonzero(opens_group)
    ends = np.append(starts[1:], len(sorted_score))
    positive_positions = np.flatnonzero(y_true[order])
    group = group_of_position[positive_positions]
    opens_positive_run = np.concatenate(([True], group[1:] != group[:-1]))
    run_first = np.flatnonzero(opens_positive_run)
    return _RankedLabel(
        order=order,
        positive_positions=positive_positions,
        group_start=starts[group],
        group_end=ends[group],
        first_positive=run_first[np.cumsum(opens_positive_run) - 1],
    )


def _resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """Counts (n, B) int32: how many times each stay is drawn in each resample (row of indices)."""
    n_resamples = indices.shape[0]
    flat = indices * n_resamples + np.arange(n_resamples)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n * n_resamples)
    return counts.reshape(n, n_resamples).astype(np.int32, copy=False)


def _replicate_metrics(ranked: _RankedLabel, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision (each (B,), NaN where one class) for resample counts (n, B)."""
    sorted_counts = counts[ranked.order]
    n_resamples = counts.shape[1]
    # below[k] = drawn stays at sorted positions < k; positives_below likewise among positives.
    below = np.zeros((len(sorted_counts) + 1, n_resamples), dtype=np.int32)
    np.cumsum(sorted_counts, axis=0, out=below[1:])
    positive_counts = sorted_counts[ranked.positive_positions]
    positives_below = np.zeros((len(positive_counts) + 1, n_resamples), dtype=np.int32)
    np.cumsum(positive_counts, axis=0, out=positives_below[1:])

    n_positive = positives_below[-1].astype(np.float64)
    n_drawn = below[-1].astype(np.float64)
    n_negative = n_drawn - n_positive
    below_group = below[ranked.group_start]
    weights = positive_counts.astype(np.float64)
    # Twice the mid-rank (1-based) of a positive: below + through its group + 1.
    twice_rank_sum = np.einsum(
        "ib,ib->b", weights, (below_group + below[ranked.group_end] + 1).astype(np.float64)
    )
    # Everything from the positive's tie group up counts as predicted positive at its threshold.
    at_or_above = np.maximum(n_drawn - below_group, 1)  # 0 only where the weight is 0 too
    precision = (n_positive - positives_below[ranked.first_positive]) / at_or_above
    precision_sum = np.einsum("ib,ib->b", weights, precision)

    defined = (n_positive > 0) & (n_negative > 0)
    safe_positive = np.where(defined, n_positive, 1.0)
    safe_pairs = np.where(defined, n_positive * n_negative, 1.0)
    auroc_values = (twice_rank_sum / 2 - n_positive * (n_positive + 1) / 2) / safe_pairs
    precision_values = precision_sum / safe_positive
    return (np.where(defined, auroc_values, np.nan), np.where(defined, precision_values, np.nan))


def _binary_labels(y_true: Any, name: str) -> np.ndarray:
    labels = np.asarray(y_true)
    if labels.dtype == bool:
        return labels
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise FusebenchError(f"{name} must hold only 0/1 labels; binarise the labels first")
    return labels.astype(bool)


def _finite_scores(y_score: Any, name: str) -> np.ndarray:
    scores = np.asarray(y_score, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise FusebenchError(f"{name} contains NaN or infinite scores; check the model outputs")
    return scores


def _one_label(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = _binary_labels(y_true, "y_true")
    scores = _finite_scores(y_score, "y_score")
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise FusebenchError(
            f"y_true {labels.shape} and y_score {scores.shape} must be 1-D and of equal length"
        )
    return labels, scores


def _point_metrics(y_true: Any, y_score: Any) -> tuple[float, float]:
    labels, scores = _one_label(y_true, y_score)
    ones = np.ones((len(labels), 1), dtype=np.int32)
    auroc_value, precision_value = _replicate_metrics(_rank_label(labels, scores), ones)
    return float(auroc_value[0]), float(precision_value[0])


def auroc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score`` (ties included).

    Args:
        y_true: 0/1 or boolean labels, shape (n,).
        y_score: scores (higher = more likely positive), shape (n,).

    Returns:
        The AUROC, or NaN when ``y_true`` has one class (sklearn raises instead).

    Example:
        >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    return _point_metrics(y_true, y_score)[0]


def average_precision(y_true: Any, y_score: Any) -> float:
    """Average precision (AUPRC), equal to ``sklearn.metrics.average_precision_score``.

    The step sum over distinct thresholds: ``sum_k (R_k - R_{k-1}) P_k``, tied scores forming one
    threshold, as sklearn computes it.

    Args:
        y_true: 0/1 or boolean labels, shape (n,).
        y_score: scores (higher = more likely positive), shape (n,).

    Returns:
        The average precision, or NaN when ``y_true`` has one class (sklearn returns a
        warning-laden 0 or 1 there; an interval over such values would mean nothing).

    Example:
        >>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
        0.8333
    """
    return _point_metrics(y_true, y_score)[1]


def bootstrap_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The resample-index matrix shared by every label, metric and method of a test set.

    Row ``b`` is the ``b``-th resample of ``n`` stays drawn with replacement by
    ``np.random.default_rng(seed)``; it is exactly what the ``b``-th call of pandas'
    ``DataFrame.sample(frac=1, replace=True, random_state=rng)`` draws with that generator.

    Args:
        n: number of stays in the test set.
        n_resamples: number of bootstrap replicates B.
        seed: seed of the generator.

    Returns:
        int64 array (B, n) of positions into the test set.

    Example:
        >>> bootstrap_indices(5, n_resamples=2, seed=0).shape
        (2, 5)
    """
    if n < 1 or n_resamples < 1:
        raise FusebenchError(
            f"bootstrap needs at least one stay and one resample (got n={n}, "
            f"n_resamples={n_resamples}); pass --n-resamples 1 or more"
        )
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _check_indices(indices: Any, n: int) -> np.ndarray:
    matrix = np.asarray(indices)
    if matrix.ndim != 2 or matrix.shape[1] != n or not np.issubdtype(matrix.dtype, np.integer):
        raise FusebenchError(
            f"indices must be an integer (B, {n}) matrix from bootstrap_indices({n}, ...), "
            f"got {matrix.dtype} {matrix.shape}"
        )
    if matrix.size and (matrix.min() < 0 or matrix.max() >= n):
        raise FusebenchError(f"indices must lie in [0, {n}); draw them with bootstrap_indices")
    return matrix


def _resampled(
    y_true: np.ndarray, y_prob: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision, each (B, C), for labels (n, C) on every resample."""
    n, n_labels = y_true.shape
    ranked = [_rank_label(y_true[:, c], y_prob[:, c]) for c in range(n_labels)]
    auroc_values = np.empty((len(indices), n_labels))
    precision_values = np.empty((len(indices), n_labels))
    block = max(1, _BLOCK_COUNTS // n)
    for first in range(0, len(indices), block):
        rows = slice(first, first + block)
        counts = _resample_counts(indices[rows], n)
        for c, label in enumerate(ranked):
            auroc_values[rows, c], precision_values[rows, c] = _replicate_metrics(label, counts)
    return auroc_values, precision_values


def auroc_resampled(y_true: Any, y_score: Any, indices: Any) -> np.ndarray:
    """AUROC on every resample at once: ``out[b] == roc_auc_score(y_true[i], y_score[i])``.

    Args:
        y_true: 0/1 labels, shape (n,).
        y_score: scores, shape (n,).
        indices: (B, n) resample indices from :func:`bootstrap_indices`.

    Returns:
        float64 (B,), NaN for resamples in which the label has one class.

    Example:
        >>> rows = bootstrap_indices(4, n_resamples=3, seed=1)
        >>> auroc_resampled([0, 1, 0, 1], [0.2, 0.9, 0.4, 0.7], rows).shape
        (3,)
    """
    labels, scores = _one_label(y_true, y_score)
    matrix = _check_indices(indices, len(labels))
    return _resampled(labels[:, None], scores[:, None], matrix)[0][:, 0]


def average_precision_resampled(y_true: Any, y_score: Any, indices: Any) -> np.ndarray:
    """Average precision on every resample at once (see :func:`auroc_resampled`).

    Example:
        >>> rows = bootstrap_indices(4, n_resamples=3, seed=1)
        >>> average_precision_resampled([0, 1, 0, 1], [0.2, 0.9, 0.4, 0.7], rows).shape
        (3,)
    """
    labels, scores = _one_label(y_true, y_score)
    matrix = _check_indices(indices, len(labels))
    return _resampled(labels[:, None], scores[:, None], matrix)[1][:, 0]


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where every entry is NaN (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-1)


def _interval(point: float, replicates: np.ndarray, level: float) -> dict[str, Any]:
    """{"value", "ci"}: percentile interval over the defined replicates; None when undefined."""
    defined = replicates[~np.isnan(replicates)]
    if np.isnan(point):
        return {"value": None, "ci": None}
    if defined.size == 0:
        return {"value": float(point), "ci": None}
    tail = (1 - level) / 2
    low, high = np.quantile(defined, [tail, 1 - tail])
    return {"value": float(point), "ci": [float(low), float(high)]}


def _summaries(
    point: np.ndarray,
    replicates: np.ndarray,
    labels: Sequence[str],
    groups: Mapping[str, list[int]],
    level: float,
) -> dict[str, Any]:
    """Macro, per-label and group intervals from per-label points (C,) and replicates (B, C)."""
    return {
        "macro": _interval(_nanmean_rows(point), _nanmean_rows(replicates), level),
        "per_label": {
            label: _interval(point[c], replicates[:, c], level) for c, label in enumerate(labels)
        },
        "groups": {
            name: _interval(_nanmean_rows(point[columns]), _nanmean_rows(replicates[:, columns]),
                            level)
            for name, columns in groups.items()
        },
    }


def _predictions_matrix(values: Any, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    matrix = np.asarray(values)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or (shape is not None and matrix.shape != shape):
        expected = f"{shape}" if shape is not None else "(stays, labels)"
        raise FusebenchError(f"{name} has shape {np.shape(values)}, expected {expected}")
    return matrix


def _group_columns(
    label_groups: Mapping[str, Sequence[str]] | None, labels: Sequence[str]
) -> dict[str, list[int]]:
    position = {label: c for c, label in enumerate(labels)}
    columns: dict[str, list[int]] = {}
    for name, members in (label_groups or {}).items():
        unknown = [label for label in members if label not in position]
        if unknown or not members:
            raise FusebenchError(
                f"label group {name!r} names unknown labels {unknown or '(none given)'}; "
                "use the task's label names"
            )
        columns[name] = [position[label] for label in members]
    return columns


def _score_matrix(
    y_true: np.ndarray, y_prob: np.ndarray, indices: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric: point values (C,) on the full test set and replicates (B, C)."""
    full = np.arange(len(y_true))[None, :]
    auroc_point, precision_point = _resampled(y_true, y_prob, full)
    auroc_reps, precision_reps = _resampled(y_true, y_prob, indices)
    return {"auroc": (auroc_point[0], auroc_reps), "auprc": (precision_point[0], precision_reps)}


def score_predictions(
    y_true: Any,
    y_prob: Any,
    labels: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    label_groups: Mapping[str, Sequence[str]] | None = None,
    reference_prob: Any | None = None,
) -> dict[str, Any]:
    """AUROC and AUPRC per label, macro and per group, with percentile bootstrap intervals.

    The unit of resampling is the stay: one index matrix (:func:`bootstrap_indices`) serves all
    labels, both metrics and the reference. Macro (and group) values are the unweighted mean over
    labels computed inside every replicate, so their interval is a real bootstrap interval. A
    label with one class in a replicate is undefined there (NaN); that replicate's macro averages
    the labels defined in it, and ``ci.degenerate_resamples`` counts such replicates per label
    (``ci.partial_macro_resamples`` counts replicates whose macro missed a label). Intervals are
    percentiles of the defined replicates. A label with one class in the whole test set has
    ``{"value": None, "ci": None}`` and is left out of the macro.

    Args:
        y_true: 0/1 labels (N, C) (or (N,) for one label).
        y_prob: predicted probabilities (N, C).
        labels: the C label names, in column order.
        n_resamples: bootstrap replicates B.
        seed: seed of the resample indices.
        level: coverage of the percentile interval.
        label_groups: optional named subsets of ``labels`` summarised like the macro.
        reference_prob: optional probabilities (N, C) of a reference method on the same stays;
            adds ``difference`` = this method minus the reference, per replicate, on the same
            resamples.

    Returns:
        A JSON-able dict: ``{"auroc": {"macro", "per_label", "groups"}, "auprc": {...},
        "difference": {"auroc": {...}, "auprc": {...}}`` (with a reference), ``"ci": {...}}``
        where every entry is ``{"value": float, "ci": [low, high]}``.

    Example:
        >>> scores = score_predictions([[0], [1], [0], [1]], [[0.1], [0.8], [0.3], [0.6]],
        ...                            ["death"], n_resamples=200)
        >>> scores["auroc"]["macro"]["value"]
        1.0
    """
    truth = _predictions_matrix(_binary_labels(y_true, "y_true"), "y_true", None)
    probabilities = _predictions_matrix(_finite_scores(y_prob, "y_prob"), "y_prob", truth.shape)
    if len(labels) != truth.shape[1]:
        raise FusebenchError(
            f"{len(labels)} label names given for {truth.shape[1]} prediction columns"
        )
    if not 0 < level < 1:
        raise FusebenchError(f"confidence level must lie in (0, 1), got {level}")
    groups = _group_columns(label_groups, labels)
    indices = bootstrap_indices(len(truth), n_resamples, seed)

    scores = _score_matrix(truth, probabilities, indices)
    result: dict[str, Any] = {
        metric: _summaries(point, replicates, labels, groups, level)
        for metric, (point, replicates) in scores.items()
    }
    if reference_prob is not None:
        reference = _predictions_matrix(
            _finite_scores(reference_prob, "reference_prob"), "reference_prob", truth.shape
        )
        reference_scores = _score_matrix(truth, reference, indices)
        result["difference"] = {
            metric: _difference(scores[metric], reference_scores[metric], labels, groups, level)
            for metric in scores
        }
    auroc_replicates = scores["auroc"][1]
    defined_in_test_set = ~np.isnan(scores["auroc"][0])
    result["ci"] = {
        "method": "percentile",
        "level": level,
        "n_resamples": n_resamples,
        "seed": seed,
        "unit": "stay",
        "degenerate_resamples": {
            label: int(np.isnan(auroc_replicates[:, c]).sum()) for c, label in enumerate(labels)
        },
        "partial_macro_resamples": int(
            np.isnan(auroc_replicates[:, defined_in_test_set]).any(axis=1).sum()
        ),
    }
    return result


def _difference(
    method: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    labels: Sequence[str],
    groups: Mapping[str, list[int]],
    level: float,
) -> dict[str, Any]:
    """Method minus reference: macro/group means are taken per replicate before subtracting."""
    (point, replicates), (reference_point, reference_replicates) = method, reference

    def summary(columns: Any) -> dict[str, Any]:
        point_difference = _nanmean_rows(point[columns]) - _nanmean_rows(reference_point[columns])
        replicate_difference = _nanmean_rows(replicates[:, columns]) - _nanmean_rows(
            reference_replicates[:, columns]
        )
        return _interval(point_difference, replicate_difference, level)

    return {
        "macro": summary(slice(None)),
        "per_label": {label: summary([c]) for c, label in enumerate(labels)},
        "groups": {name: summary(columns) for name, columns in groups.items()},
    }


def format_ci(entry: Mapping[str, Any], digits: int = 3) -> str:
    """An interval entry as table text, e.g. ``"0.812 [0.790, 0.834]"``.

    Args:
        entry: ``{"value": float | None, "ci": [low, high] | None}`` from
            :func:`score_predictions`.
        digits: decimals shown.

    Returns:
        ``"value [low, high]"``; ``"n/a"`` for an undefined value, ``"value [n/a]"`` when no
        replicate defined an interval.

    Example:
        >>> format_ci({"value": 0.8123, "ci": [0.79, 0.8342]})
        '0.812 [0.790, 0.834]'
    """
    value, interval = entry.get("value"), entry.get("ci")
    if value is None:
        return "n/a"
    if interval is None:
        return f"{value:.{digits}f} [n/a]"
    low, high = interval
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
