"""`canvaslab doctor`: the environment report (paste it into bug reports) and one verdict line."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rich.markup import escape

from canvaslab.cli import console


def register(app: typer.Typer) -> None:
    app.command("doctor", rich_help_panel="Tools")(doctor)


def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON (same as the global --json)")] = False,
    warm: Annotated[bool, typer.Option("--warm", help="also compile the PatchMatch kernels now, so the first inpaint does not wait")] = False,
) -> None:
    """Python, torch and devices, package versions and known-bad pairs, model caches, tools; exit 1 on problems."""
    with console.friendly_errors():
        from canvaslab.tasks.doctor import report

        data = report(warm=warm)
        if json_out or console.settings.json:
            console.emit_json(data)
        else:
            print_report(data)
        if not data["verdict"]["ok"]:
            raise typer.Exit(1)


def _line(key: str, value: Any) -> None:
    console.out.print(f"  {key:<24} {value}", markup=False, highlight=False)


def print_report(data: dict[str, Any]) -> None:
    out = console.out
    py, torch, mach = data["python"], data["torch"], data["machine"]
    out.print(f"[bold]canvaslab {data['canvaslab']['version']}[/] ({data['canvaslab']['location']})")
    _line("python", f"{py['version']} {py['executable']}{' (venv)' if py['virtualenv'] else ''}")
    _line("platform", py["platform"])
    memory = f", {mach['memory_gb']} GB RAM ({mach.get('memory_available_gb', '?')} free)" if "memory_gb" in mach else ""
    _line("machine", f"{mach['arch']}, {mach['cpus']} CPUs{memory}")
    if not torch["installed"]:
        _line("torch", "not installed (diffusion, unified and training need it: pip install 'canvaslab[diffusion]')")
    elif "import_error" in torch:
        _line("torch", f"{torch['version']} DOES NOT IMPORT: {torch['import_error']}")
    else:
        device = torch["device"]
        if torch["cuda_available"]:
            gpus = "; ".join(f"{g['name']} {g['memory_gb']} GB (sm {g['capability']})" for g in torch["gpus"])
            device = f"cuda {torch['cuda_build']}, cuDNN {torch['cudnn']}: {gpus}"
        elif torch["cuda_build"]:
            device = f"cpu (CUDA {torch['cuda_build']} build, but no GPU visible)"
        _line("torch", f"{torch['version']}, device {device}, {torch['threads']} threads")

    out.print("[bold]packages[/] (extra that brings them)")
    for row in data["packages"]:
        version = row["version"] or "-- not installed"
        tested = f", tested with {row['tested']}" if "tested" in row else ""
        _line(row["name"], f"{version:<14} ({row['extra']}{tested})")
    for message in data["incompatible"]:
        out.print(f"  [red]incompatible:[/] {escape(message)}", highlight=False)
    for dist, error in data["import_errors"].items():
        out.print(f"  [red]does not import:[/] {dist}: {escape(error)}", highlight=False)

    out.print("[bold]caches[/]")
    hf = data["caches"]["huggingface"]
    state = "offline (HF_HUB_OFFLINE)" if hf["offline"] else "downloads allowed"
    _line("hugging face hub", f"{hf['hub_cache']} ({state}; {len(hf['models'])} models)")
    for model in hf["models"]:
        _line("", f"{model['id']}  {model['size_gb']} GB")
    hub = data["caches"]["torch_hub"]
    _line("torch hub", f"{hub['checkpoints']} ({', '.join(hub['files']) or 'empty'})")
    _line("PatchMatch kernels", data["caches"]["numba"]["cache_dir"] or "no writable cache (set NUMBA_CACHE_DIR)")
    if "warm" in data:
        _line("warmed", data["warm"]["summary"])

    out.print("[bold]tools[/]")
    tools = data["tools"]
    _line("chromium (UI test)", tools["chromium"] or "not found")
    _line("ffmpeg", tools["ffmpeg"] or "not found (not needed: video goes through PyAV's own FFmpeg libraries)")
    _line("PyAV", f"{tools['av']} (video inpaint / track)" if tools["av"] else
          "not installed (video inpaint / track need it: pip install 'canvaslab[video]')")

    colour = "green" if data["verdict"]["ok"] and not data["verdict"]["warnings"] else "yellow" if data["verdict"]["ok"] else "red"
    out.print(f"[bold {colour}]verdict:[/] {escape(data['verdict']['line'])}", highlight=False)
