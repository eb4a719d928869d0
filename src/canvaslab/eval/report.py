"""`canvaslab eval report`: one self-contained HTML page (no scripts, no external files) for runs of a protocol.

- a table: each run's mean per metric with a 95 % bootstrap interval over the cases, the best in bold,
  seconds per case, failures; set-level metrics (FID, KID, IS, IDS) beside;
- plots (inline SVG): each hole metric against the hole's size (cases binned by hole fraction), and,
  for edit runs with CLIP metrics, InstructPix2Pix's trade-off plot: CLIP image similarity to the input
  (x) against directional CLIP similarity (y), one point per run, runs of one model joined in order
  of their image guidance scale (the sweep the paper draws);
- the best and worst cases by one metric (averaged over the runs), side by side: the reference with its
  hole painted white, the reference, and every run's output with its value (JPEG thumbnails, base64).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canvaslab.errors import InputError
from canvaslab.eval.compare import check_same_protocol

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
HOLE_METRICS = ("psnr_hole", "ssim_hole", "l1_hole", "lpips", "lpips_vgg", "seam")
RANK_PREFERENCE = ("lpips", "psnr_hole", "ssim_hole", "clip_dir", "clip_i", "psnr", "ssim", "clip_score")
THUMB = 224
LABELS = {
    "psnr_hole": "PSNR hole (dB)", "ssim_hole": "SSIM hole", "l1_hole": "L1 hole", "psnr": "PSNR (dB)", "ssim": "SSIM",
    "l1": "L1", "detail": "detail (1 = real)", "seam": "seam", "outside_changed": "outside changed", "outside_l1": "outside L1",
    "lpips": "LPIPS", "lpips_vgg": "LPIPS (VGG)", "clip_score": "CLIP score", "clip_t": "CLIP-T", "clip_i": "CLIP-I",
    "clip_img": "CLIP image sim.", "clip_dir": "CLIP direction", "fid": "FID", "kid": "KID", "is": "IS", "p_ids": "P-IDS",
    "u_ids": "U-IDS",
}


def _label(column: str) -> str:
    return LABELS.get(column, column)


def _fmt(value: float | None, column: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if column.startswith("psnr") or column in ("fid", "clip_score", "is"):
        return f"{value:.2f}"
    if column == "kid":
        return f"{value:.4f}"
    return f"{value:.3f}"


def mean_interval(values: list[float], *, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a 95 % percentile-bootstrap interval of the mean over cases (vectorised resampling)."""
    array = np.asarray(values, np.float64)
    if len(array) < 2:
        return float(array.mean()), float(array.mean()), float(array.mean())
    picks = np.random.default_rng(seed).integers(0, len(array), size=(resamples, len(array)))
    means = array[picks].mean(axis=1)
    return float(array.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


# --- plots -------------------------------------------------------------------------------------------


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + (abs(low) or 1) * 0.1
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= step * factor:
            step *= factor
            break
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int(math.ceil((high - start) / step)) + 1)]


def line_chart(series: list[tuple[str, list[tuple[float, float, str]]]], x_label: str, y_label: str, *,
               lines: bool = True, width: int = 380, height: int = 250) -> str:
    """An SVG chart: each series is (name, [(x, y, point label)]), joined in order when `lines`."""
    points = [(x, y) for _, pts in series for x, y, _ in pts]
    if not points:
        return ""
    left, right, top, bottom = 56, 12, 12, 40
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xt, yt = _ticks(min(xs), max(xs)), _ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0 or 1) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0 or 1) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#ccc"/>']
    for t in xt:
        parts.append(f'<text x="{px(t):.1f}" y="{height - bottom + 14}" text-anchor="middle">{t:g}</text>')
    for t in yt:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + height - bottom) / 2:.0f})">{html.escape(y_label)}</text>')
    for k, (_, pts) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        if lines and len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, text in pts:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>')
            if text:
                parts.append(f'<text x="{px(x) + 5:.1f}" y="{py(y) - 5:.1f}" class="point">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(names: list[str]) -> str:
    items = "".join(f'<span><i style="background:{COLORS[k % len(COLORS)]}"></i>{html.escape(n)}</span>' for k, n in enumerate(names))
    return f'<div class="legend">{items}</div>'


def hole_size_plots(runs: list[dict[str, Any]]) -> str:
    holes = [c["hole"] for c in runs[0]["cases"] if c.get("hole") is not None]
    if not holes:
        return ""
    width = 0.1 if max(holes) <= 0.6 else 0.2
    charts = []
    for column in HOLE_METRICS:
        if not any(column in run.get("summary", {}) for run in runs):
            continue
        series = []
        for run in runs:
            bins: dict[int, list[float]] = {}
            for case in run["cases"]:
                if case.get("hole") is not None and case.get(column) is not None:
                    bins.setdefault(min(int(case["hole"] / width), int(round(1 / width)) - 1), []).append(case[column])
            series.append((run["label"], [((b + 0.5) * width * 100, float(np.mean(v)), "") for b, v in sorted(bins.items())]))
        charts.append(f"<figure>{line_chart(series, 'hole (% of the image, bin centre)', _label(column))}</figure>")
    if not charts:
        return ""
    return f"<h2>Against hole size</h2>{_legend([r['label'] for r in runs])}<div class='charts'>{''.join(charts)}</div>"


def ip2p_plot(runs: list[dict[str, Any]]) -> str:
    usable = [r for r in runs if "clip_img" in r.get("summary", {}) and "clip_dir" in r.get("summary", {})]
    if not usable:
        return ""
    groups: dict[str, list[tuple[float, float, str]]] = {}
    for run in usable:
        request = run.get("system", {}).get("request", {})
        key = run["label"] if not request else f"{run['system'].get('model') or run['system'].get('engine')} (text {request.get('guidance_scale')})"
        scale = request.get("image_guidance_scale")
        groups.setdefault(key, []).append((run["summary"]["clip_img"]["mean"], run["summary"]["clip_dir"]["mean"],
                                           f"{scale:g}" if isinstance(scale, (int, float)) else run["label"]))
    series = [(name, sorted(points, key=lambda p: float(p[2]) if _is_number(p[2]) else 0.0)) for name, points in groups.items()]
    chart = line_chart(series, "CLIP image similarity to the input", "directional CLIP similarity", width=460, height=300)
    return (f"<h2>Edit strength trade-off (InstructPix2Pix)</h2><p>One point per run, labelled with its image "
            f"guidance scale; runs of one model are joined.</p>{_legend(list(groups))}<figure>{chart}</figure>")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --- table -------------------------------------------------------------------------------------------


def summary_table(runs: list[dict[str, Any]]) -> str:
    columns = [c for c in runs[0].get("columns", {}) if any(c in r.get("summary", {}) for r in runs)]
    set_columns = [c for c in runs[0].get("columns", {}) if any(c in r.get("set", {}) for r in runs)]
    best = {}
    for column in columns + set_columns:
        higher = runs[0]["columns"].get(column)
        ideal = runs[0].get("ideal", {}).get(column)
        values = [(_value(r, column), k) for k, r in enumerate(runs) if _value(r, column) is not None]
        if len({v for v, _ in values}) > 1 and (higher is not None or ideal is not None):  # no bold for a tie
            key = (lambda v: -abs(v[0] - ideal)) if ideal is not None else (lambda v: v[0] if higher else -v[0])
            best[column] = max(values, key=key)[1]
    head = "".join(f"<th>{html.escape(_label(c))}{_arrow(runs[0], c)}</th>" for c in columns + set_columns)
    rows = []
    for k, run in enumerate(runs):
        cells = []
        for column in columns:
            values = [c[column] for c in run["cases"] if c.get(column) is not None]
            if not values:
                cells.append("<td>–</td>")
                continue
            mean, low, high = mean_interval(values)
            strong = best.get(column) == k
            text = f"{_fmt(mean, column)}<small> ±{_fmt((high - low) / 2, column)}</small>"
            cells.append(f"<td>{'<b>' + text + '</b>' if strong else text}</td>")
        for column in set_columns:
            text = _fmt(run.get("set", {}).get(column), column)
            cells.append(f"<td>{'<b>' + text + '</b>' if best.get(column) == k else text}</td>")
        seconds = run.get("seconds")
        rows.append(f"<tr><th>{html.escape(run['label'])}</th>{''.join(cells)}"
                    f"<td>{_fmt(seconds['mean']) if seconds else '–'}</td><td>{len(run['cases'])}</td><td>{len(run.get('failed', []))}</td></tr>")
    return (f"<table><tr><th>run</th>{head}<th>s/case</th><th>cases</th><th>failed</th></tr>{''.join(rows)}</table>"
            "<p class='note'>Means over cases with a 95 % bootstrap interval (±, half its width); best in bold; ↑ higher is better, "
            "↓ lower, → 1 closest to 1. Set-level metrics (FID, KID, IS, IDS) have one value per run.</p>")


def _value(run: dict[str, Any], column: str) -> float | None:
    if column in run.get("summary", {}):
        return run["summary"][column]["mean"]
    return run.get("set", {}).get(column)


def _arrow(run: dict[str, Any], column: str) -> str:
    if column in run.get("ideal", {}):
        return f" →{run['ideal'][column]:g}"
    return {True: " ↑", False: " ↓"}.get(run["columns"].get(column), "")


# --- cases ---------------------------------------------------------------------------------------------


def _thumb(image: np.ndarray) -> str:
    picture = Image.fromarray(image)
    picture.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def rank_metric(runs: list[dict[str, Any]], requested: str | None) -> str | None:
    available = [c for c in runs[0].get("columns", {}) if c in runs[0].get("summary", {}) and runs[0]["columns"][c] is not None]
    if requested is not None:
        if requested not in available:
            raise InputError(f"--metric {requested!r} is not a per-case metric of these runs: choose from {', '.join(available)}")
        return requested
    return next((c for c in RANK_PREFERENCE if c in available), available[0] if available else None)


def case_grid(runs: list[dict[str, Any]], column: str | None, count: int) -> str:
    from canvaslab.core.grid import mask_overlay
    from canvaslab.eval.protocols import load_manifest
    from canvaslab.eval.run import read_hole, read_rgb

    if column is None or count == 0:
        return ""
    try:
        manifest = load_manifest(runs[0]["protocol"]["path"])
    except InputError:
        return f"<p class='note'>The protocol folder {html.escape(runs[0]['protocol']['path'])} is not here: no case images.</p>"
    higher = runs[0]["columns"][column]
    values: dict[str, list[float]] = {}
    for run in runs:
        for case in run["cases"]:
            if case.get(column) is not None:
                values.setdefault(case["id"], []).append(case[column])
    ranked = sorted((cid for cid, v in values.items() if len(v) == len(runs)), key=lambda cid: float(np.mean(values[cid])),
                    reverse=bool(higher))
    chosen = [("best", cid) for cid in ranked[:count]] + [("worst", cid) for cid in ranked[-count:][::-1] if cid not in ranked[:count]]
    cases = {c.id: c for c in manifest.cases}
    by_run = [{c["id"]: c for c in run["cases"]} for run in runs]
    rows = []
    for which, case_id in chosen:
        case = cases[case_id]
        reference = read_rgb(manifest.file(case.reference)) if case.reference else None  # type: ignore[arg-type]
        given = read_rgb(manifest.file(case.input))  # type: ignore[arg-type]
        shown = mask_overlay(reference, read_hole(manifest.file(case.mask))) if case.mask and reference is not None else given  # type: ignore[arg-type]
        cells = [f"<figure><img src='{_thumb(shown)}'><figcaption>{'hole' if case.mask else 'input'}</figcaption></figure>"]
        if reference is not None:
            cells.append(f"<figure><img src='{_thumb(reference)}'><figcaption>reference</figcaption></figure>")
        for run, cases_of_run in zip(runs, by_run):
            record = cases_of_run[case_id]
            try:
                image = _thumb(read_rgb(Path(record["output"])))
            except (InputError, OSError):
                cells.append(f"<figure><div class='missing'>output missing</div><figcaption>{html.escape(run['label'])}</figcaption></figure>")
                continue
            cells.append(f"<figure><img src='{image}'><figcaption>{html.escape(run['label'])}: "
                         f"{_fmt(record[column], column)}</figcaption></figure>")
        hole = f", hole {case.hole:.0%}" if case.hole is not None else ""
        text = f" — “{html.escape(case.instruction)}”" if case.instruction else ""
        rows.append(f"<div class='case'><h3>{which}: {html.escape(case_id)}{hole}{text}</h3><div class='row'>{''.join(cells)}</div></div>")
    return (f"<h2>Best and worst cases by {html.escape(_label(column))} (mean over the runs)</h2>{''.join(rows)}")


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} h3{font-size:13px;margin:14px 0 4px;font-weight:600}
table{border-collapse:collapse;font-variant-numeric:tabular-nums} th,td{padding:4px 9px;border-bottom:1px solid #e4e4e4;text-align:right}
tr>th:first-child{text-align:left} small{color:#888} .note{color:#666;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0} svg.chart text{font-size:11px;fill:#444} svg text.point{font-size:10px}
.legend span{margin-right:16px;font-size:12px} .legend i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px}
.row{display:flex;gap:8px;flex-wrap:wrap} .row img{display:block;max-width:224px;max-height:224px}
figcaption{font-size:11px;color:#444;max-width:224px} .missing{width:160px;height:120px;background:#eee;color:#999;display:flex;align-items:center;justify-content:center}
"""


def render_report(runs: list[dict[str, Any]], *, metric: str | None = None, cases: int = 3) -> str:
    if not runs:
        raise InputError("report needs at least one run.json")
    check_same_protocol(runs)
    protocol = runs[0]["protocol"]
    params = ", ".join(f"{k} {v}" for k, v in protocol.get("params", {}).items())
    title = f"canvaslab eval: {protocol['name']}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='note'>{protocol['cases']} cases, seed {protocol['seed']}{', ' + html.escape(params) if params else ''}; "
            f"protocol {protocol['sha256'][:12]}; runs: {', '.join(html.escape(r['label']) for r in runs)}.</p>",
            "<h2>Summary</h2>", summary_table(runs), hole_size_plots(runs), ip2p_plot(runs),
            case_grid(runs, rank_metric(runs, metric), cases)]
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
