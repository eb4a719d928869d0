"""`canvaslab eval protocol|run|compare|report`: measure fills and edits the standard way.

Heavy modules (torch, the metric networks) load only inside `run`, and only for learned metrics, so
`canvaslab eval --help` stays as light as the rest of the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from canvaslab.cli import console
from canvaslab.errors import InputError

app = typer.Typer(
    help="Evaluate: standard mask protocols, image and editing metrics (PSNR/SSIM/LPIPS/FID/KID/IS/IDS/CLIP), comparisons with confidence intervals, an HTML report.",
    no_args_is_help=True,
)

_PROTOCOL_EXAMPLES = """
    canvaslab eval protocol lama-thick-512 --data photos/ -o protocols/thick512 --per-image 4

    canvaslab eval protocol band-right --data photos/ --size 512 --band 0.25 -o protocols/right

    canvaslab eval protocol masks --data lama-test/random_thick_512/ -o protocols/lama-released

    canvaslab eval protocol edit --data edits/ --captions captions.jsonl -o protocols/edits
"""

_RUN_EXAMPLES = """
    canvaslab eval run --protocol protocols/thick512 --engine patchmatch -o runs/patchmatch.json --workers 2

    canvaslab eval run --protocol lama-thin-256 --data photos/ --engine telea -o runs/telea.json

    canvaslab eval run --protocol protocols/thick512 --predictions lama-outputs/ -o runs/lama.json --metrics pixels,lpips,fid

    canvaslab eval run --protocol protocols/edits --model ip2p --set image_guidance_scale=1.5 -o runs/ig1.5.json --metrics pixels,clip

    accelerate launch --num_processes 4 -m canvaslab eval run --protocol p/ --model sd15-inpaint --prompt "" -o runs/sd.json
"""


@app.command("protocol", epilog=_PROTOCOL_EXAMPLES)
def protocol(
    name: Annotated[Optional[str], typer.Argument(help="lama-{thin,medium,thick,box}-{256,512}, band-{left,right,top,bottom}, masks, edit", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="folder of images (edit: an edit dataset)")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="new folder for the protocol (inputs/, masks/, references/, protocol.json)")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="fixes every mask and crop")] = 0,
    per_image: Annotated[int, typer.Option("--per-image", min=1, max=1000, help="cases (masks) per image (lama protocols)")] = 1,
    size: Annotated[Optional[int], typer.Option("--size", min=16, max=8192, help="square side for band protocols (512), or resize user masks' images")] = None,
    band: Annotated[float, typer.Option("--band", help="band protocols: band depth as a fraction of the side")] = 0.25,
    masks: Annotated[Optional[Path], typer.Option("--masks", help="masks protocol: folder of masks paired by name (default: LaMa's layout in --data)")] = None,
    captions: Annotated[Optional[Path], typer.Option("--captions", help="edit protocol: JSON lines {key, input_caption, output_caption}")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the protocols and exit")] = False,
) -> None:
    """Write a protocol: the (input, mask, reference) cases every run of it is measured on, fixed by a seed."""
    from canvaslab.eval.protocols import PROTOCOLS, build_protocol

    if list_:
        for spec in PROTOCOLS.values():
            print(f"{spec.name:18s} {spec.task:8s} {spec.description}")
        return
    with console.friendly_errors():
        if name is None or data is None or output is None:
            raise InputError("give a protocol NAME, --data DIR and -o OUT (or --list)")
        manifest = build_protocol(name, data, output, seed=seed, per_image=per_image, size=size, band=band,
                                  masks=masks, captions=captions)
    if console.settings.json:
        console.emit_json({"protocol": str(manifest.path), "name": manifest.name, "cases": len(manifest.cases),
                           "sha256": manifest.sha256})
    else:
        holes = [c.hole for c in manifest.cases if c.hole is not None]
        extra = f"; hole {min(holes):.0%}-{max(holes):.0%}, mean {sum(holes) / len(holes):.0%}" if holes else ""
        console.info(f"{len(manifest.cases)} cases{extra}")
        print(manifest.path)


def _request(task: str, engine: Optional[str], model: Optional[str], prompt: Optional[str], seed: int,
             options: list[str], settings: list[str]) -> Any:
    from canvaslab.tasks.requests import REQUESTS, build_request, parse_key_values

    try:
        values: dict[str, Any] = parse_key_values(settings)
        opts = parse_key_values(options)
    except ValueError as exc:
        raise InputError(f"--set/--opt: {exc}") from None
    for fixed in ("prompt", "instruction", "seed", "engine", "model", "options"):
        if fixed in values:
            raise InputError(f"--set {fixed}=... is not for eval run: use --{fixed if fixed != 'options' else 'opt'} (edit instructions come from the protocol)")
    values.update(seed=seed, options=opts)
    if engine is not None:
        values["engine"] = engine
    if model is not None:
        values["model"] = model
    if task == "edit":
        if prompt:
            raise InputError("--prompt is for inpainting protocols; an edit protocol gives each case its instruction")
        values["instruction"] = "(from each case)"
    elif prompt:
        values["prompt"] = prompt
    return build_request(REQUESTS[task], values)


def _manifest_for(protocol: str, data: Optional[Path], work: Path, seed: int, per_image: int) -> Any:
    """A protocol folder or file; or a protocol name + --data, drawn into the run's folder (kept for reruns)."""
    from canvaslab.eval.protocols import MANIFEST, PROTOCOLS, build_protocol, load_manifest

    path = Path(protocol)
    if path.exists():
        if data is not None:
            raise InputError("--data is for drawing a protocol by name; this protocol is already drawn")
        return load_manifest(path)
    if protocol not in PROTOCOLS:
        raise InputError(f"--protocol {protocol!r} is neither a protocol folder nor a protocol name ({', '.join(PROTOCOLS)})")
    if data is None:
        raise InputError(f"--protocol {protocol} needs --data DIR: the images to draw its cases from")
    folder = work / "protocol"
    if (folder / MANIFEST).exists():
        manifest = load_manifest(folder)
        if manifest.name != protocol or manifest.seed != seed or manifest.params.get("per_image") != per_image:
            raise InputError(f"{folder} holds another protocol ({manifest.name}, seed {manifest.seed}); use another -o or --work")
        return manifest
    return build_protocol(protocol, data, folder, seed=seed, per_image=per_image)


@app.command("run", epilog=_RUN_EXAMPLES)
def run(
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="a protocol folder (or its protocol.json), or a protocol name with --data", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="the run record (JSON)", show_default=False)],
    data: Annotated[Optional[Path], typer.Option("--data", help="images to draw a named protocol from (kept in the run's folder)")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", "-e", help="engine to run on every case (default: patchmatch, or the model's)", rich_help_panel="System")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="model for diffusion/unified engines", rich_help_panel="System")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="prompt for every inpainting case", rich_help_panel="System")] = None,
    opt: Annotated[Optional[list[str]], typer.Option("--opt", metavar="KEY=VALUE", help="engine option (repeatable)", rich_help_panel="System")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="FIELD=VALUE", help="any other request field, as `canvaslab inpaint/edit` names it (repeatable), e.g. steps=20", rich_help_panel="System")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed of every case (engines); also the protocol's seed with --data", rich_help_panel="System")] = 0,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", help="score another tool's outputs instead: <DIR>/<case id>.png", rich_help_panel="System")] = None,
    metrics: Annotated[str, typer.Option("--metrics", "-m", help="comma-separated: pixels, lpips, lpips-vgg, fid, kid, is, ids, clip (or all)", rich_help_panel="Metrics")] = "pixels",
    weights: Annotated[Optional[Path], typer.Option("--weights", envvar="CANVASLAB_EVAL_WEIGHTS", help="folder with the metric weight files (else torch's hub cache)", rich_help_panel="Metrics")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="CLIP model folder or cached hub id \\[default: openai/clip-vit-large-patch14]", rich_help_panel="Metrics")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="device for the metric networks \\[default: cuda:LOCAL_RANK if CUDA, else cpu]", rich_help_panel="Metrics")] = None,
    work: Annotated[Optional[Path], typer.Option("--work", help="folder for outputs, scores and features \\[default: beside -o, named after it]")] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="name of this run in comparisons and reports")] = None,
    per_image: Annotated[int, typer.Option("--per-image", min=1, max=1000, help="cases per image when drawing a named protocol")] = 1,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="worker processes for the engine (inpaint), threads for scoring")] = 1,
    shard: Annotated[Optional[str], typer.Option("--shard", metavar="I/N", help="this process's part \\[default: RANK/WORLD_SIZE under accelerate launch or torchrun]")] = None,
) -> None:
    """Run an engine on every case of a protocol (or take another tool's outputs) and score them: resumable and shardable."""
    from canvaslab.eval.metrics import Weights, parse_metrics
    from canvaslab.eval.run import RunSpec, device_for_rank, run_eval
    from canvaslab.tasks.batch import launcher_shard, parse_shard

    with console.friendly_errors():
        names = parse_metrics(metrics)
        run_folder = work or output.with_suffix("")
        manifest = _manifest_for(protocol, data, run_folder, seed, per_image)
        system = None
        if predictions is None:
            system = _request(manifest.task, engine, model, prompt, seed, opt or [], set_ or [])
        elif engine or model or prompt or opt or set_:
            raise InputError("--predictions scores existing outputs: drop --engine/--model/--prompt/--opt/--set")
        learned = [n for n in names if n != "pixels"]
        spec = RunSpec(manifest, output, names, system, predictions, run_folder, label,
                       Weights(weights, clip, device or (device_for_rank() if learned else "cpu"), seed),
                       workers, parse_shard(shard) if shard else launcher_shard())
        with _Progress(len(manifest.cases[spec.shard[0] :: spec.shard[1]])) as progress:
            result = run_eval(spec, progress)
    _report_run(result, spec)


def _report_run(result: Any, spec: Any) -> None:
    if console.settings.json:
        console.emit_json({"run": str(result.path) if result.path else None, "scored": result.done,
                           "failed": [{"id": i, "error": e} for i, e in result.failed], "missing": result.missing,
                           "summary": result.record["summary"] if result.record else None,
                           "set": result.record["set"] if result.record else None})
    else:
        for case_id, why in result.failed[:20]:
            console.info(f"[yellow]failed[/] {case_id}: {why}")
        if result.path is None:
            console.info(f"shard {spec.shard[0]}/{spec.shard[1]} done; {result.missing} cases of other shards not scored "
                         f"yet: the last shard to finish writes {spec.output} (or run the same command again without --shard)")
        else:
            _print_summary(result.record)
            print(result.path)
    if result.failed:
        raise typer.Exit(1)


def _print_summary(record: dict[str, Any]) -> None:
    if console.settings.quiet:
        return
    table = Table("metric", "mean", "std", "n", title=f"{record['label']} on {record['protocol']['name']}", title_style="bold")
    for column, stats in record["summary"].items():
        table.add_row(column, f"{stats['mean']:.4f}", f"{stats['std']:.4f}", str(stats["n"]))
    for column, value in record["set"].items():
        table.add_row(column, f"{value:.4f}", "", str(len(record["cases"])))
    console.err.print(table)


class _Progress:
    """Two bars (generate, score) on stderr; silent with --quiet or --json."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.total = total
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=console.err, transient=True, disable=console.settings.quiet or console.settings.json)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        def advance(stage: str, case_id: str, status: str) -> None:
            if not self.tasks:  # started with the first case: an error before any work stays one line
                self.bar.start()
            if stage not in self.tasks:
                self.tasks[stage] = self.bar.add_task(stage, total=self.total)
            self.bar.update(self.tasks[stage], advance=1, description=f"{stage} {status}: {case_id}")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.tasks:  # rich prints a blank line when a bar that never started is stopped
            self.bar.stop()


@app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="run.json files of one protocol; the first is the baseline", show_default=False)],
    confidence: Annotated[float, typer.Option("--confidence", help="confidence level of the intervals")] = 0.95,
    resamples: Annotated[int, typer.Option("--resamples", help="bootstrap resamples")] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="bootstrap seed")] = 0,
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="comma-separated columns to show (default: all)")] = None,
) -> None:
    """Per-metric differences from the first run: means, bootstrap confidence interval over cases, wins/ties/losses."""
    from canvaslab.eval.compare import compare_runs
    from canvaslab.eval.run import load_run

    with console.friendly_errors():
        result = compare_runs([load_run(p) for p in runs], resamples=resamples, confidence=confidence, seed=seed)
        shown = None if metrics is None else [m.strip() for m in metrics.split(",") if m.strip()]
    if console.settings.json:
        console.emit_json(result)
        return
    for comparison in result["comparisons"]:
        table = Table("metric", result["baseline"], comparison["label"], "difference",
                      f"{result['confidence']:.0%} interval", "wins / ties / losses",
                      title=f"{comparison['label']} vs {result['baseline']} on {result['protocol']} ({comparison['paired_cases']} cases)",
                      title_style="bold")
        for column, m in comparison["metrics"].items():
            if shown is not None and column not in shown:
                continue
            interval = f"[{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}]" if m["ci"] else "–"
            mark = "[bold]" if m["clear"] else ""
            table.add_row(column, f"{m['baseline']:.4f}", f"{m['value']:.4f}", f"{mark}{m['diff']:+.4f}",
                          f"{mark}{interval}", f"{m['wins']} / {m['ties']} / {m['losses']}" if m["higher_is_better"] is not None or m["ideal"] is not None else "–")
        for column, m in comparison["set"].items():
            if shown is None or column in shown:
                table.add_row(column, f"{m['baseline']:.4f}", f"{m['value']:.4f}", f"{m['diff']:+.4f}", "(one value per set)", "–")
        console.out.print(table)
    if not console.settings.quiet:
        console.info("bold: the interval leaves out 0. Intervals: bootstrap (BCa) over cases of the mean paired difference.")


@app.command("report")
def report(
    runs: Annotated[list[Path], typer.Argument(help="run.json files of one protocol", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path("report.html"),
    metric: Annotated[Optional[str], typer.Option("--metric", help="rank the best/worst cases by this metric \\[default: lpips, else psnr_hole, ...]")] = None,
    cases: Annotated[int, typer.Option("--cases", min=0, max=50, help="best and worst cases shown")] = 3,
) -> None:
    """Write a self-contained HTML page: the table, metric-vs-hole-size plots, the IP2P trade-off plot, best/worst cases."""
    from canvaslab.core.image import atomic_write_bytes
    from canvaslab.eval.report import render_report
    from canvaslab.eval.run import load_run

    with console.friendly_errors():
        page = render_report([load_run(p) for p in runs], metric=metric, cases=cases)
        atomic_write_bytes(output, page.encode("utf-8"))
    if console.settings.json:
        console.emit_json({"report": str(output)})
    else:
        print(output)
