"""`canvaslab doctor`: what this environment is, in one report a bug report can carry.

Python, torch and its devices, every package canvaslab's extras name (from the installed package's own
metadata, so the list cannot drift from pyproject.toml) with its version, the known-incompatible pairs
(`core.compat`), where models are cached and which are there, optional tools, and one verdict.

Nothing here downloads or loads a model; torch is imported (its device facts need it) only when it is
installed, and a torch that fails to import is itself reported as a problem.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from canvaslab import __version__
from canvaslab.core.compat import installed_breaks, installed_version

CORE_EXTRA = "core"
# Extras a user installs for a feature (a missing one is worth a warning); "dev" and "bench" are ours.
USER_EXTRAS = (CORE_EXTRA, "diffusion", "train", "server")
# Packages whose import is tried (distribution -> module): an installed package that does not import
# (a torchvision built for another torch, a half-upgraded transformers) fails far from its cause.
IMPORT_CHECKS = {"torch": "torch", "torchvision": "torchvision", "diffusers": "diffusers",
                 "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
                 "av": "av", "onnxruntime": "onnxruntime", "torchmetrics": "torchmetrics"}
# Tools outside Python that some features use.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def report(*, warm: bool = False) -> dict[str, Any]:
    """The whole environment report as plain data (what `--json` prints)."""
    packages = package_table()
    data: dict[str, Any] = {
        "canvaslab": {"version": __version__, "location": str(Path(__file__).resolve().parents[1])},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform(), "virtualenv": sys.prefix != sys.base_prefix},
        "machine": machine(),
        "torch": torch_facts() if installed_version("torch") else {"installed": False},
        "packages": packages,
        "incompatible": [rule.message(versions) for rule, versions in installed_breaks()],
        "import_errors": import_errors(),
        "caches": caches(),
        "tools": tools(),
    }
    if warm:
        data["warm"] = warm_kernels()
    data["verdict"] = verdict(data)
    return data


# -- facts ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    facts: dict[str, Any] = {"cpus": os.cpu_count(), "arch": platform.machine()}
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return facts
    for key, name in (("MemTotal", "memory_gb"), ("MemAvailable", "memory_available_gb")):
        found = re.search(rf"^{key}:\s+(\d+) kB", meminfo, re.M)
        if found:
            facts[name] = round(int(found.group(1)) / 2**20, 1)
    return facts


def torch_facts() -> dict[str, Any]:
    """torch's version, build and devices; an import failure is a fact too (reported, not raised)."""
    facts: dict[str, Any] = {"installed": True, "version": installed_version("torch")}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch install is what doctor is for
        facts["import_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return facts
    facts["threads"] = torch.get_num_threads()
    facts["cuda_build"] = torch.version.cuda
    facts["cuda_available"] = torch.cuda.is_available()
    if facts["cuda_available"]:
        facts["cudnn"] = torch.backends.cudnn.version()
        facts["gpus"] = [
            {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
             "capability": f"{props.major}.{props.minor}"}
            for props in (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))
        ]
    facts["mps_available"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    facts["device"] = "cuda" if facts["cuda_available"] else "mps" if facts["mps_available"] else "cpu"
    return facts


def import_errors() -> dict[str, str]:
    """Installed packages from IMPORT_CHECKS that fail to import, with the first line of the error."""
    import importlib

    errors = {}
    for dist, module in IMPORT_CHECKS.items():
        if installed_version(dist) is None:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reporting a broken install is the point
            text = str(exc).strip()
            errors[dist] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    return errors


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0]


def declared_packages() -> dict[str, str]:
    """Every package canvaslab's metadata names, mapped to the extra that brings it ("core" for the base)."""
    try:
        requires = metadata.requires("canvaslab") or []
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        requires = []
    found: dict[str, str] = {}
    for requirement in requires:
        name = _requirement_name(requirement)
        extra = re.search(r"extra\s*==\s*['\"]([\w-]+)['\"]", requirement)
        if name.lower() == "canvaslab":
            continue
        label = extra.group(1) if extra else CORE_EXTRA
        # keep the lowest extra that brings it: core < diffusion < train < server < the rest
        if name not in found or found[name] != CORE_EXTRA and label == CORE_EXTRA:
            found[name] = label
    return found


def tested_versions() -> dict[str, str]:
    """Pins from constraints.txt beside a source checkout (editable installs), for this Python; else {}."""
    path = Path(__file__).resolve().parents[3] / "constraints.txt"
    if not path.is_file():
        return {}
    try:
        from packaging.markers import Marker
    except ImportError:
        return {}
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        requirement, _, marker = line.partition(";")
        name, _, version = requirement.strip().partition("==")
        if version and (not marker.strip() or Marker(marker.strip()).evaluate()):
            pins[name.strip().lower()] = version.strip()
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_table() -> list[dict[str, Any]]:
    tested = {_normal(name): version for name, version in tested_versions().items()}
    rows = []
    def order(item: tuple[str, str]) -> tuple[int, str]:
        rank = USER_EXTRAS.index(item[1]) if item[1] in USER_EXTRAS else len(USER_EXTRAS)
        return rank, item[0].lower()

    for name, extra in sorted(declared_packages().items(), key=order):
        version = installed_version(name)
        row: dict[str, Any] = {"name": name, "extra": extra, "version": version}
        pin = tested.get(_normal(name))
        if pin and version and pin != version:
            row["tested"] = pin
        rows.append(row)
    return rows


def _folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for file in files:
            try:
                total += (Path(root) / file).stat().st_size
            except OSError:
                pass
    return total


def caches() -> dict[str, Any]:
    """Model caches: the Hugging Face hub cache (and which models are in it), torch hub's checkpoints."""
    result: dict[str, Any] = {}
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or str(Path(hf_home) / "hub")
    models = []
    if Path(hub).is_dir():
        for repo in sorted(Path(hub).glob("models--*")):
            models.append({"id": repo.name[len("models--"):].replace("--", "/"),
                           "size_gb": round(_folder_size(repo) / 2**30, 2)})
    result["huggingface"] = {
        "hub_cache": hub, "exists": Path(hub).is_dir(), "models": models,
        "offline": os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"},
    }
    torch_home = os.environ.get("TORCH_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch")
    checkpoints = Path(torch_home) / "hub" / "checkpoints"
    result["torch_hub"] = {
        "checkpoints": str(checkpoints),
        "files": sorted(p.name for p in checkpoints.iterdir()) if checkpoints.is_dir() else [],
    }
    result["numba"] = {"cache_dir": numba_cache()}
    return result


def numba_cache() -> str | None:
    """Where numba keeps PatchMatch's compiled kernels (None: nowhere writable, every process compiles)."""
    try:
        from canvaslab.engines.classical.warm import cache_dir
    except Exception:  # noqa: BLE001 - a broken numba is reported by the package table, not here
        return None
    return cache_dir()


def tools() -> dict[str, Any]:
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    return {
        "chromium": browser,  # the web UI's browser test
        "ffmpeg": shutil.which("ffmpeg"),
        "av": installed_version("av"),  # PyAV: video files
    }


def warm_kernels() -> dict[str, Any]:
    """Compile (or load from cache) the PatchMatch kernels now, so the first inpaint does not wait."""
    from canvaslab.engines.classical.warm import warm

    return warm()


# -- verdict -------------------------------------------------------------------------------------


def verdict(data: dict[str, Any]) -> dict[str, Any]:
    problems: list[str] = list(data["incompatible"])
    warnings: list[str] = []
    for dist, error in data["import_errors"].items():
        problems.append(f"{dist} {installed_version(dist)} is installed but does not import ({error})")
    missing: dict[str, list[str]] = {}
    for row in data["packages"]:
        if row["version"] is None and row["extra"] in USER_EXTRAS:
            missing.setdefault(row["extra"], []).append(row["name"])
    if CORE_EXTRA in missing:
        problems.append(f"missing required packages {', '.join(missing.pop(CORE_EXTRA))}: pip install canvaslab")
    for extra, names in missing.items():
        warnings.append(f"canvaslab[{extra}] is not (fully) installed (no {', '.join(names)})")
    drift = [f"{row['name']} {row['version']} (tested {row['tested']})" for row in data["packages"] if "tested" in row]
    if drift:
        warnings.append("versions differ from constraints.txt: " + ", ".join(drift))
    if problems:
        line = f"{len(problems)} problem{'s' * (len(problems) > 1)}: " + "; ".join(problems)
    elif warnings:
        line = f"usable, {len(warnings)} warning{'s' * (len(warnings) > 1)}: " + "; ".join(warnings)
    else:
        line = "ok: every package canvaslab uses is installed and known to work together"
    return {"ok": not problems, "problems": problems, "warnings": warnings, "line": line}
