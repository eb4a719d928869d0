#!/usr/bin/env bash
# Set up (idempotently) and run canvaslab's two README jobs on a fresh machine.
#
#   scripts/dev.sh demo   install the runtime and run the weight-free demo on examples/
#   scripts/dev.sh test   install everything the tests need and run the whole suite
#   scripts/dev.sh bench  install the test and benchmark extras and run benchmarks/classical.py
#
# Environment:
#   CANVASLAB_VENV    venv to create/use (default: .venv in the repo; an already active venv is used as is)
#   CANVASLAB_TORCH   pip requirement for torch when none is installed (default: torch==2.13.0, the CPU
#                     build); set it to your CUDA build's spec, or to "skip" to never install torch
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
  *) echo "usage: scripts/dev.sh demo|test|bench [args...]" >&2; exit 2 ;;
esac

# 1. the virtual environment
if [[ -n "${VIRTUAL_ENV:-}" && -z "${CANVASLAB_VENV:-}" ]]; then
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

# 2. torch, only when the tests need it and none is installed (users with a CUDA build keep theirs)
if [[ "$job" != "demo" && "${CANVASLAB_TORCH:-}" != "skip" ]]; then
  if ! "$py" -c 'import torch' >/dev/null 2>&1; then
    spec="${CANVASLAB_TORCH:-torch==2.13.0}"
    echo "==> installing $spec"
    "$py" -m pip install --disable-pip-version-check -q "$spec"
  fi
fi

# 3. a browser for the UI test: Debian's chromium, when it can be installed without asking (root + apt).
#    CANVASLAB_BROWSER=skip leaves it out; the browser test then skips and says why.
if [[ "$job" == "test" && ! -x /usr/bin/chromium && "${CANVASLAB_BROWSER:-auto}" != "skip" ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "==> installing chromium (Debian) for the browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      >/dev/null 2>&1 || echo "==> chromium could not be installed: the browser test will be skipped"
  fi
fi

# 4. canvaslab itself (editable), re-installed only when pyproject.toml changed
stamp="$venv/.canvaslab-$job-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "==> installing canvaslab$extras"
  "$py" -m pip install --disable-pip-version-check -q -e ".$extras"
  touch "$stamp"
fi

# 5. the job
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
case "$job" in
  demo) exec "$py" "$here/scripts/demo.py" "$@" ;;
  test) exec "$py" -m pytest -q -p no:cacheprovider -n "${CANVASLAB_TEST_WORKERS:-2}" "$@" ;;
  bench) exec "$py" "$here/benchmarks/classical.py" "$@" ;;
esac
