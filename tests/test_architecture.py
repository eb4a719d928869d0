"""Layering rules: imports point downwards only, and `canvaslab --help` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import canvaslab.cli.main
from canvaslab.tasks.requests import REQUESTS

SRC = Path(__file__).resolve().parent.parent / "src" / "canvaslab"
# Lowest first. Packages on one rank are siblings and must not import each other: training builds on
# the engines' model loading but never on the inference tasks, and the reverse. The CLI sits above the
# server because `canvaslab serve` starts it. Masks (SAM, CLIPSeg, rule masks) sit between the engines,
# whose device handling they use, and the tasks, which make masks (`canvaslab mask`, replay, the
# server's Select tool) but which masks never need: mask sources take arrays, not requests. Video runs
# the image tasks on key frames (any engine through the inpaint task), so it sits above them, and the server
# (its HTTP job) and the CLI above it; nothing below knows about clips. Eval runs engines through the
# inpaint/edit tasks' batch runner and draws protocols from data's mask rules, so it sits beside video.
RANKS = {"core": 0, "data": 1, "engines": 2, "masks": 3, "tasks": 4, "train": 4, "video": 5, "eval": 5, "server": 6,
         "cli": 7}
# Sub-packages ranked below their package: eval's metrics (numbers from arrays, networks from weight
# files) need nothing above core, so training validation scores with them; the rest of eval (protocols,
# runs through the tasks) stays above the tasks.
SUBLAYERS = {"eval.metrics": 0.5}
LAYERS = list(RANKS)
FORBIDDEN_IN_CORE = {"torch", "cv2", "numba", "diffusers", "transformers", "scipy", "skimage"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def layer_of(module: str) -> tuple[str, float] | None:
    """(layer, rank) of a canvaslab module, its sub-layer when it has one; None outside the layers."""
    if not module.startswith("canvaslab."):
        return None
    rest = module.removeprefix("canvaslab.")
    for sub, rank in SUBLAYERS.items():
        if rest == sub or rest.startswith(f"{sub}."):
            return sub, rank
    top = rest.split(".")[0]
    return (top, RANKS[top]) if top in RANKS else None


@pytest.mark.parametrize("layer", LAYERS + list(SUBLAYERS))
def test_imports_point_down(layer):
    rank = {**RANKS, **SUBLAYERS}[layer]
    for path in (SRC / layer.replace(".", "/")).rglob("*.py"):
        own = layer_of("canvaslab." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        if own is None or own[0] != layer:
            continue  # a sub-layer's file, checked as that layer
        for name in imports_of(path):
            target = layer_of(name)
            assert target is None or target[0] == layer or target[1] < rank, f"{path.relative_to(SRC)} imports {name}"


def test_core_needs_only_numpy_and_pillow():
    for path in (SRC / "core").rglob("*.py"):
        roots = {name.split(".")[0] for name in imports_of(path)}
        assert not roots & FORBIDDEN_IN_CORE, f"{path.name} imports {roots & FORBIDDEN_IN_CORE}"


def test_help_does_not_load_heavy_modules():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from canvaslab.cli.main import app\n"
        "for args in (['--help'], ['inpaint', '--help'], ['outpaint', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'numba', 'cv2', 'diffusers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("task", list(REQUESTS))
def test_cli_options_match_the_request_model(task):
    import typer

    command = typer.main.get_command(canvaslab.cli.main.app).commands[task]
    cli_names = {p.name for p in command.params}
    missing = set(REQUESTS[task].model_fields) - cli_names
    assert not missing, f"request fields without a CLI flag: {missing}"
