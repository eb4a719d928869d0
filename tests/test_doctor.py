"""`canvaslab doctor` and the known-incompatible dependency check (core.compat)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from canvaslab.core.compat import KNOWN_BREAKS, DependencyError, check_compatible, find_breaks, satisfies

# What a fresh install resolved on 2026-12-01 before the upper bound: transformers 5.24.0 with peft 0.21.2.
BROKEN = {"transformers": "5.24.0", "peft": "0.21.2"}


@pytest.mark.parametrize(("version", "spec", "expected"), [
    ("5.24.0", ">=5.24", True), ("5.23.0", ">=5.24", False), ("5.24.0.dev0", ">=5.24", True),
    ("0.21.2", "<0.22", True), ("0.22.0", "<0.22", False), ("0.22", "<0.22.0", False),
    ("1.2.3", ">=1.0,<1.2", False), ("1.1.9", ">=1.0,<1.2", True), ("2.13.0+cpu", "==2.13", True),
])
def test_specifiers(version, spec, expected):
    assert satisfies(version, spec) is expected


def test_the_transformers_peft_break_is_found_only_in_its_range():
    (rule,) = find_breaks(BROKEN)
    message = rule.message(BROKEN)
    assert message.startswith("transformers 5.24.0 does not work with peft 0.21.2")
    assert "pip install 'transformers<5.24'" in message and "\n" not in message
    assert find_breaks({"transformers": "5.23.0", "peft": "0.21.2"}) == []
    assert find_breaks({"transformers": "5.24.0", "peft": "0.22.0"}) == []
    assert find_breaks({"transformers": "5.24.0", "peft": None}) == []  # no peft: no LoRA path to break


def test_this_environment_is_compatible():
    check_compatible()  # the constraints file must never pin a known-broken pair
    assert all(rule.fix.startswith("pip install") for rule in KNOWN_BREAKS)


def fake_distribution(root: Path, name: str, version: str) -> Path:
    """A dist-info folder that makes importlib.metadata report `version` for `name` (first on sys.path wins)."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "canvaslab", *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.slow
def test_doctor_reports_the_environment_as_json():
    result = run("doctor", "--json", "--warm")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["python"]["version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert data["torch"]["installed"] and data["torch"]["device"] == "cpu"
    names = {row["name"].lower(): row for row in data["packages"]}
    # the list comes from the installed metadata, so every extra's packages are there
    assert {"numpy", "diffusers", "transformers", "peft", "pyarrow", "fastapi"} <= set(names)
    assert names["diffusers"]["extra"] == "diffusion" and names["numpy"]["extra"] == "core"
    assert data["verdict"]["ok"] and data["incompatible"] == [] and data["import_errors"] == {}
    assert {"hub_cache", "models", "offline"} <= set(data["caches"]["huggingface"])
    warm = data["warm"]  # every PatchMatch kernel is compiled or loaded now, and cached where doctor says
    assert len(warm["compiled"]) + len(warm["loaded"]) + len(warm["ready"]) >= 5
    assert warm["cache_dir"] == data["caches"]["numba"]["cache_dir"] and warm["cache_dir"]


@pytest.mark.slow
def test_doctor_names_the_fix_for_an_incompatible_pair(tmp_path):
    """With transformers 5.24.0 installed beside peft 0.21.2, the verdict is one line naming the pip command."""
    fake = fake_distribution(tmp_path, "transformers", "5.24.0")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    result = run("doctor", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = [line for line in result.stdout.splitlines() if line.startswith("verdict:")]
    assert len(verdict) == 1
    assert "transformers 5.24.0 does not work with peft" in verdict[0]
    assert "pip install 'transformers<5.24'" in verdict[0]
    data = json.loads(run("--json", "doctor", env=env).stdout)
    assert not data["verdict"]["ok"] and len(data["incompatible"]) == 1


def test_check_compatible_raises_one_line_for_a_broken_pair(tmp_path):
    fake = fake_distribution(tmp_path, "transformers", "5.24.0")
    code = ("from canvaslab.core.compat import check_compatible, DependencyError\n"
            "try:\n    check_compatible('peft')\nexcept DependencyError as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip().endswith("pip install 'transformers<5.24' (or a peft >= 0.22 once it is released)")
    assert issubclass(DependencyError, Exception)


def test_doctor_says_video_needs_pyav_not_an_ffmpeg_program():
    """doctor printed "ffmpeg  not found" as if video needed it; video uses PyAV's own FFmpeg libraries."""
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert "video" in lines["PyAV"]
    assert shutil.which("ffmpeg") or "not needed" in lines["ffmpeg"]
