"""`canvaslab eval compare`: per-metric differences between runs on the same protocol, with bootstrap
confidence intervals over the cases and a count of wins.

The first run is the baseline. For every other run and every per-case metric both have, over the cases
both scored: the mean of each, the mean paired difference (other - baseline) with its bootstrap
confidence interval (scipy.stats.bootstrap, BCa, resampling cases; the percentile interval when the
differences are all equal, where BCa is undefined), and wins / ties / losses: the cases where the
other run is better / equal / worse by the metric's direction (or, for `detail`, its distance to
the ideal 1.0). A difference is "clear" when its interval leaves out 0. Set-level metrics (FID, KID,
IS, IDS) have one value per run, so they are listed side by side without an interval.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from canvaslab.errors import InputError

RESAMPLES = 2000
CONFIDENCE = 0.95


def check_same_protocol(runs: list[dict[str, Any]]) -> None:
    first = runs[0]["protocol"]
    for run in runs[1:]:
        if run["protocol"]["sha256"] != first["sha256"]:
            raise InputError(
                f"{run['_path']} was measured on other cases ({run['protocol']['name']}, {run['protocol']['sha256'][:12]}) "
                f"than {runs[0]['_path']} ({first['name']}, {first['sha256'][:12]}): compare runs of one protocol"
            )


def _seed(seed: int) -> dict[str, Any]:
    """scipy >= 1.15 takes `rng`; older releases (pyproject allows 1.10) only `random_state`."""
    import inspect

    from scipy.stats import bootstrap

    name = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def bootstrap_interval(differences: np.ndarray, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple[float, float] | None:
    """Confidence interval of the mean of `differences` (None for fewer than 2 cases)."""
    from scipy.stats import bootstrap

    if len(differences) < 2:
        return None
    if np.ptp(differences) == 0:
        return float(differences[0]), float(differences[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about near-degenerate resamples; the interval is still usable
        result = bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=confidence,
                           method="BCa", **_seed(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa can fail on very skewed, tiny samples
        result = bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=confidence,
                           method="percentile", **_seed(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return low, high


def _better(column: str, run: dict[str, Any]) -> tuple[bool | None, float | None]:
    """(higher is better?, ideal value) for a column of a run."""
    return run.get("columns", {}).get(column), run.get("ideal", {}).get(column)


def _wins(a: np.ndarray, b: np.ndarray, higher: bool | None, ideal: float | None) -> tuple[int, int, int]:
    if ideal is not None:
        a, b, higher = -np.abs(a - ideal), -np.abs(b - ideal), True
    if higher is None:
        return 0, 0, 0
    better = b > a if higher else b < a
    worse = b < a if higher else b > a
    return int(better.sum()), int((~better & ~worse).sum()), int(worse.sum())


def compare_pair(base: dict[str, Any], other: dict[str, Any], *, resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    by_id = {case["id"]: case for case in base["cases"]}
    pairs = [(by_id[case["id"]], case) for case in other["cases"] if case["id"] in by_id]
    metrics: dict[str, Any] = {}
    for column in base.get("columns", {}):
        rows = [(a[column], b[column]) for a, b in pairs if a.get(column) is not None and b.get(column) is not None]
        if not rows:
            continue
        a, b = (np.array(v, np.float64) for v in zip(*rows))
        higher, ideal = _better(column, base)
        interval = bootstrap_interval(b - a, resamples=resamples, confidence=confidence, seed=seed)
        wins, ties, losses = _wins(a, b, higher, ideal)
        clear = interval is not None and (interval[0] > 0 or interval[1] < 0)
        metrics[column] = {"baseline": float(a.mean()), "value": float(b.mean()), "diff": float((b - a).mean()),
                           "ci": list(interval) if interval else None, "clear": clear, "higher_is_better": higher,
                           "ideal": ideal, "wins": wins, "ties": ties, "losses": losses, "n": len(rows)}
    set_metrics = {name: {"baseline": base["set"][name], "value": value, "diff": value - base["set"][name],
                          "higher_is_better": base.get("columns", {}).get(name)}
                   for name, value in other.get("set", {}).items() if name in base.get("set", {})}
    return {"label": other["label"], "path": other["_path"], "paired_cases": len(pairs), "metrics": metrics, "set": set_metrics}


def compare_runs(runs: list[dict[str, Any]], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> dict[str, Any]:
    if len(runs) < 2:
        raise InputError("compare needs at least two runs: the baseline first, then the others")
    if not 0 < confidence < 1:
        raise InputError(f"--confidence must be between 0 and 1, got {confidence}")
    if resamples < 100:
        raise InputError(f"--resamples must be at least 100, got {resamples}")
    check_same_protocol(runs)
    return {
        "protocol": runs[0]["protocol"]["name"],
        "baseline": runs[0]["label"],
        "confidence": confidence,
        "resamples": resamples,
        "comparisons": [compare_pair(runs[0], run, resamples=resamples, confidence=confidence, seed=seed) for run in runs[1:]],
    }
