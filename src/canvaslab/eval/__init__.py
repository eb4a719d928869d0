"""Evaluation: standard mask protocols, weight-free and learned metrics, comparisons and reports.

    from canvaslab.eval.protocols import build_protocol
    from canvaslab.eval.run import RunSpec, run_eval
    protocol = build_protocol("lama-thick-256", "photos/", "protocols/thick256", per_image=2)
    # then `canvaslab eval run --protocol protocols/thick256 --engine telea -o runs/telea.json`

Layers: metrics/ (per-case and set-level metrics, weights from local files only), lama_masks.py and
protocols.py (the cases, fixed by a seed, written as a folder + manifest), run.py (outputs, scores,
run.json; resumable and sharded), compare.py (bootstrap intervals, wins), report.py (one HTML page).
eval sits above the tasks, whose batch runner makes the outputs. See docs/eval.md.
"""
