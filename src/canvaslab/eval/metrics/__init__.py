"""Metric registry: what `--metrics` accepts -> the family that computes it, imported when used.

Adding a metric means one line here and one class (`base.Metric`). Names of one family are computed
together (one network pass): lpips and lpips-vgg; fid, kid, is and ids (one Inception pass).
"""

from __future__ import annotations

import importlib

from canvaslab.errors import InputError
from canvaslab.eval.metrics.base import Metric, Sample
from canvaslab.eval.metrics.weights import Weights

# name -> "module:Class"
METRICS: dict[str, str] = {
    "pixels": "canvaslab.eval.metrics.pixels:PixelMetrics",
    "lpips": "canvaslab.eval.metrics.lpips:LPIPSMetrics",
    "lpips-vgg": "canvaslab.eval.metrics.lpips:LPIPSMetrics",
    "fid": "canvaslab.eval.metrics.inception:InceptionMetrics",
    "kid": "canvaslab.eval.metrics.inception:InceptionMetrics",
    "is": "canvaslab.eval.metrics.inception:InceptionMetrics",
    "ids": "canvaslab.eval.metrics.inception:InceptionMetrics",
    "clip": "canvaslab.eval.metrics.clip:CLIPMetrics",
}
LEARNED = ("lpips", "lpips-vgg", "fid", "kid", "is", "ids", "clip")
# the fid/kid/is/ids family needs features of every case, so its numbers exist only for the whole set
SET_LEVEL = ("fid", "kid", "is", "ids")


def parse_metrics(text: str | list[str]) -> list[str]:
    """"pixels,lpips" (or "all") -> checked, ordered, without duplicates."""
    items = text if isinstance(text, list) else [part.strip() for part in text.split(",")]
    names: list[str] = []
    for item in items:
        if not item:
            continue
        for name in (list(METRICS) if item == "all" else [item]):
            if name not in METRICS:
                raise InputError(f"unknown metric {name!r}: choose from {', '.join(METRICS)} (or all)")
            if name not in names:
                names.append(name)
    if not names:
        raise InputError("--metrics needs at least one metric, e.g. pixels")
    return names


def load_metrics(names: list[str], weights: Weights) -> list[Metric]:
    """One instance per family, built with the names asked of it (loading its weights now, so a
    missing file fails before any work)."""
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(METRICS[name], []).append(name)
    metrics = []
    for target, wanted in families.items():
        module, _, cls = target.partition(":")
        try:  # the family's packages (torch, torchmetrics, ...) are checked here, before any work
            metrics.append(getattr(importlib.import_module(module), cls)(wanted, weights))
        except ImportError as exc:
            raise InputError(f"--metrics {','.join(wanted)} needs {exc.name or 'a package'}, which is not installed: "
                             "pip install 'canvaslab[eval]'") from None
    return metrics


def directions(metrics: list[Metric]) -> dict[str, bool | None]:
    return {column: better for metric in metrics for column, better in metric.columns.items()}


__all__ = ["LEARNED", "METRICS", "Metric", "Sample", "Weights", "load_metrics", "parse_metrics"]
