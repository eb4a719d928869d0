"""`canvaslab models list|info|pull`: the model aliases, what a model is, and fetching one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from canvaslab.cli import console
from canvaslab.engines.diffusion.models import ALIASES, cached_snapshot, detect, resolve_source
from canvaslab.errors import InputError, ModelNotAvailableError

app = typer.Typer(help="Models: diffusion aliases, eraser files, mask models and preprocessors; inspection, download.",
                  no_args_is_help=True)

CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Hugging Face cache folder \\[default: HF_HOME]")]

# Weight formats we never load, and duplicates of the safetensors we do.
_SKIP_PATTERNS = ["*.ckpt", "*.bin", "*.msgpack", "*.onnx", "*.onnx_data", "*.pb", "*.h5", "*.pt", "*non_ema*", "*.fp16.*"]


@app.command("list")
def list_models(cache_dir: CacheOpt = None) -> None:
    """Known aliases, eraser files (LaMa, MI-GAN), mask models (SAM, CLIPSeg, detectors) and the depth
    preprocessor's model, and whether each is already on this machine."""
    with console.friendly_errors():
        rows = []
        for alias in ALIASES.values():
            cached = cached_snapshot(alias.hub_id, str(cache_dir) if cache_dir else None) is not None
            rows.append({"alias": alias.name, "hub_id": alias.hub_id, "family": alias.family, "kind": alias.kind,
                         "resolution": alias.native_resolution, "cached": cached, "description": alias.description})
        erasers = eraser_rows()
        others = weight_rows(str(cache_dir) if cache_dir else None)
        if console.settings.json:
            console.emit_json(rows + erasers + others)
            return
        table = Table("alias", "hub id", "kind", "px", "cached", "what")
        for row in rows:
            table.add_row(row["alias"], row["hub_id"], f"{row['family']} {row['kind']}", str(row["resolution"]),
                          "yes" if row["cached"] else "no", row["description"])
        console.out.print(table)
        table = Table("name", "file", "engine", "px", "found", "licence", "what", title=f"Erasers (--engine lama/migan "
                      f"--model NAME), looked for in {erasers[0]['folder']}")
        for row in erasers:
            table.add_row(row["alias"], row["file"], row["family"], str(row["resolution"]), "yes" if row["cached"] else "no",
                          row["licence"], row["description"])
        console.out.print(table)
        table = Table("alias", "hub id", "kind", "cached", "what", title="Mask models and preprocessors (from the "
                      "Hugging Face cache, never downloaded: `hf download HUB_ID` on a connected machine)")
        for row in others:
            table.add_row(row["alias"], row["hub_id"], row["family"], "yes" if row["cached"] else "no", row["description"])
        console.out.print(table)
        console.out.print("ControlNets and IP-Adapters have no aliases: give a hub id in the cache, a folder or a file "
                          "(--control, --ip-adapter; see docs/control.md).", markup=False, highlight=False)


def eraser_rows() -> list[dict[str, object]]:
    """The learned erasers' known files (engines/learned/files.py), as rows beside the aliases: where they
    would be (torch hub's cache, IOPaint's), whether they are, and their licences."""
    from canvaslab.engines.learned.files import KNOWN_FILES, find_known, hub_checkpoints

    return [{"alias": entry.name, "hub_id": None, "family": entry.engine, "kind": "eraser", "resolution": entry.resolution,
             "cached": find_known(entry) is not None, "description": entry.description, "file": entry.filename,
             "licence": entry.licence, "folder": str(hub_checkpoints())} for entry in KNOWN_FILES]


def weight_rows(cache_dir: str | None) -> list[dict[str, object]]:
    """The transformers models other commands find by alias in the Hugging Face cache: `canvaslab mask`'s
    SAM / CLIPSeg / detector aliases (masks/models.py) and the depth preprocessor's model."""
    from huggingface_hub import try_to_load_from_cache

    from canvaslab.engines.diffusion.preprocessors import DEPTH_MODEL
    from canvaslab.masks.models import ALIASES as MASK_ALIASES

    def cached(hub_id: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(hub_id, "config.json", cache_dir=cache_dir), str)
        except (ValueError, OSError):
            return False

    rows: list[dict[str, object]] = []
    for alias, hub_id in MASK_ALIASES.items():
        family = "sam" if alias.startswith("sam") else "clipseg" if alias == "clipseg" else "detector"
        use = {"sam": "mask --model (clicks, boxes, detector boxes)", "clipseg": "mask --text (per-pixel scores)",
               "detector": "mask --text --text-model (boxes for SAM)"}[family]
        rows.append({"alias": alias, "hub_id": hub_id, "family": family, "kind": "mask", "resolution": None,
                     "cached": cached(hub_id), "description": use})
    rows.append({"alias": "depth", "hub_id": DEPTH_MODEL, "family": "depth", "kind": "preprocessor", "resolution": None,
                 "cached": cached(DEPTH_MODEL), "description": "ControlNet preprocessor depth (control preview -p depth, "
                 "--control ...,preprocessor=depth)"})
    return rows


@app.command("info")
def info(
    model: Annotated[str, typer.Argument(help="alias, hub id, diffusers folder or .safetensors/.ckpt/.gguf file", show_default=False)],
    config: Annotated[Optional[str], typer.Option("--config", "--base", help="configs for an SD single file, or the base folder a transformer-only file joins")] = None,
    cache_dir: CacheOpt = None,
) -> None:
    """What a model is: family, kind (inpaint/edit/text-to-image), what it runs, its defaults, what else it needs."""
    with console.friendly_errors():
        data = describe_model(model, config, str(cache_dir) if cache_dir else None)
        if console.settings.json:
            console.emit_json(data)
            return
        for key, value in data.items():
            console.out.print(f"{key:>18}: {value}", markup=False)


def describe_model(model: str, config: str | None, cache_dir: str | None) -> dict[str, object]:
    from canvaslab.engines.diffusion.families import family
    from canvaslab.engines.diffusion.models import SINGLE_FILE_SUFFIXES, checkpoint_family, read_checkpoint_header

    path = Path(model).expanduser()
    try:
        source = resolve_source(model, config=config, cache_dir=cache_dir)
    except ModelNotAvailableError:
        if not (path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES):
            raise
        # A transformer alone: say what it is and what it needs instead of failing
        fam = checkpoint_family(read_checkpoint_header(path), path)
        if fam.denoiser != "transformer":
            raise  # an SD checkpoint missing its standard configs: the error says how to provide them
        return {"model": model, "format": "single_file", "location": str(path.resolve()), "family": fam.name,
                "label": fam.label, "needs": fam.needs_base_message(path)}
    found = detect(source)
    fam = family(found.family)
    runs = sorted({task for (kind, task) in fam.pipelines if kind == found.kind})
    steps, guidance = fam.defaults(found)
    return {
        "model": model, "format": source.format, "location": source.location, "family": found.family,
        "label": fam.label, "kind": found.kind, "variant": found.variant or None, "runs": ", ".join(runs),
        f"{fam.denoiser}_in_channels": found.in_channels, "prediction_type": found.prediction_type,
        "native_resolution": found.native_resolution, "size_multiple": fam.multiple,
        "default_steps": steps, "default_guidance": guidance, "guidance": GUIDANCE_WORDS[fam.guidance],
        "schedulers": "flow-matching: euler, euler-karras, euler-beta, lcm" if fam.scheduler_kind == "flow" else "all",
    }


GUIDANCE_WORDS = {
    "cfg": "classifier-free guidance (a negative pass)",
    "distilled": "distilled guidance value (one pass; --opt true_cfg_scale for real CFG)",
    "true-cfg": "true CFG scale (with the negative prompt, ' ' when none)",
    "none": "none",
}


@app.command("pull")
def pull(
    model: Annotated[str, typer.Argument(help="alias (a diffusion model's, a mask model's, or depth) or hub id", show_default=False)],
    cache_dir: CacheOpt = None,
) -> None:
    """Download a model into the Hugging Face cache (run on a connected machine; copy HF_HOME to offline ones)."""
    with console.friendly_errors():
        others = {str(row["alias"]): str(row["hub_id"]) for row in weight_rows(None)}  # mask models, depth
        hub_id = ALIASES[model].hub_id if model in ALIASES else others.get(model, model)
        if Path(model).exists():
            raise InputError(f"{model} is a local path: nothing to pull")
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(hub_id, cache_dir=str(cache_dir) if cache_dir else None, ignore_patterns=_SKIP_PATTERNS)
        except Exception as exc:  # network, auth, missing repo: one line naming the model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotAvailableError(f"could not download {hub_id!r}: {first}") from None
        print(folder)
