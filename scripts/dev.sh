#!/usr/bin/env bash
# Set up (idempotently) and run canvaslab's two README jobs on a fresh machine.
#
#   scripts/dev.sh demo   install the runtime and run the weight-free demo on examples/
#   scripts/dev.sh test   install everything the tests need and run the whole suite
#   scripts/dev.sh bench  install the test and benchmark extras and run benchmarks/classical.py
#   scripts/dev.sh lock   regenerate constraints.txt (scripts/lock.py, with uv installed into the venv)
#   scripts/dev.sh test-latest
#                         the whole suite against the newest releases pyproject.toml allows (own venv,
#                         .venv-latest, no constraints): shows the next dependency break before users see it
#
# demo, test and bench install the exact versions in constraints.txt (pip -c), the set the tests passed
# with; regenerate it with `python scripts/lock.py` after changing pyproject.toml.
#
# Environment:
#   CANVASLAB_VENV    venv to create/use (default: .venv in the repo; an already active venv is used as is)
#   CANVASLAB_TORCH   pip requirement for torch when none is installed (default: torch==2.13.0, the CPU
#                     build); set it to your CUDA build's spec, or to "skip" to never install torch
#   CANVASLAB_CONSTRAINTS  constraints file to install with (default: constraints.txt; "none": newest releases)
#   CANVASLAB_BROWSER "skip": do not install Debian's chromium for the browser test (it then skips)
#   PYTHON            interpreter that creates the venv (default: python3)
set -euo pipefail

job="${1:-}"
shift || true
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

case "$job" in
  demo) extras="" ;;
  test) extras="[dev]" ;;
  bench) extras="[dev,bench]" ;;
  lock) extras="" ;;
  test-latest)
    extras="[dev]"
    export CANVASLAB_VENV="${CANVASLAB_VENV:-$here/.venv-latest}" CANVASLAB_CONSTRAINTS=none ;;
  *) echo "usage: scripts/dev.sh demo|test|test-latest|lock|bench [args...]" >&2; exit 2 ;;
esac
constraints="${CANVASLAB_CONSTRAINTS:-$here/constraints.txt}"

# 1. the virtual environment
if [[ -n "${VIRTUAL_ENV:-}" && -z "${CANVASLAB_VENV:-}" && "$job" != "test-latest" ]]; then
  venv="$VIRTUAL_ENV"
else
  venv="${CANVASLAB_VENV:-$here/.venv}"
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "==> creating $venv"
    "${PYTHON:-python3}" -m venv "$venv"
  fi
fi
py="$venv/bin/python"
"$py" -c 'import sys; assert sys.version_info >= (3, 10), "canvaslab needs Python >= 3.10"'
if [[ "$job" == lock ]]; then
  "$py" -m pip install --disable-pip-version-check -q uv
  exec "$py" "$here/scripts/lock.py" "$@"
fi

# 2. torch, only when the tests need it and none is installed (users with a CUDA build keep theirs)
if [[ "$job" != demo && "${CANVASLAB_TORCH:-}" != skip ]]; then
  if ! "$py" -c 'import torch' >/dev/null 2>&1; then
    spec="${CANVASLAB_TORCH:-torch==2.13.0}"
    echo "==> installing $spec"
    "$py" -m pip install --disable-pip-version-check -q "$spec"
  fi
fi

# 3. a browser for the UI test: Debian's chromium, when it can be installed without asking (root + apt).
#    CANVASLAB_BROWSER=skip leaves it out; the browser test then skips and says why.
if [[ "$job" == test* && ! -x /usr/bin/chromium && "${CANVASLAB_BROWSER:-auto}" != "skip" ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "==> installing chromium (Debian) for the browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      >/dev/null 2>&1 || echo "==> chromium could not be installed: the browser test will be skipped"
  fi
fi

# 4. canvaslab itself (editable) with the locked versions, re-installed only when pyproject.toml or the
#    constraints changed; test-latest upgrades everything to the newest releases every time
pip_args=(--disable-pip-version-check -q)
if [[ "$constraints" == none ]]; then
  # everything to its newest release but torch, which stays the build step 2 installed (CANVASLAB_TORCH):
  # an eager upgrade would swap the CPU build for a multi-GB CUDA one
  keep_torch="$venv/.torch-constraint.txt"
  "$py" -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > "$keep_torch" 2>/dev/null || : > "$keep_torch"
  pip_args+=(--upgrade --upgrade-strategy eager -c "$keep_torch")
  stamp="$venv/.canvaslab-$job-latest-$(date +%F)"
else
  [[ -f "$constraints" ]] || { echo "constraints file not found: $constraints" >&2; exit 2; }
  pip_args+=(-c "$constraints")
  stamp="$venv/.canvaslab-$job-$(cat pyproject.toml "$constraints" | sha256sum | cut -c1-16)"
fi
if [[ ! -f "$stamp" ]]; then
  if [[ "$constraints" == none ]]; then how="newest releases"; else how="pinned by $(basename "$constraints")"; fi
  echo "==> installing canvaslab$extras ($how)"
  "$py" -m pip install "${pip_args[@]}" -e ".$extras"
  touch "$stamp"
fi

# 5. the job
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
case "$job" in
  demo) exec "$py" "$here/scripts/demo.py" "$@" ;;
  test|test-latest)
    [[ "$job" == test-latest ]] && "$py" -m pip list --disable-pip-version-check 2>/dev/null \
      | grep -iE '^(torch|diffusers|transformers|peft|accelerate|huggingface.hub|numpy|pillow) '
    exec "$py" -m pytest -q -p no:cacheprovider -n "${CANVASLAB_TEST_WORKERS:-2}" --durations=15 "$@" ;;
  bench) exec "$py" "$here/benchmarks/classical.py" "$@" ;;
esac
