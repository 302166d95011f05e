#!/usr/bin/env bash
# Creates the engine's own virtual environment, engine/.venv, and installs the pinned dependencies
# of engine/requirements.txt into it. Idempotent: a re-run with nothing changed takes seconds (the
# venv keeps a hash of requirements.txt, pyproject.toml and the Python version; a mismatch, or a
# venv that cannot import torch and trajstore_engine, means install again).
#
#   bash engine/setup.sh            create or update engine/.venv
#   bash engine/setup.sh --force    reinstall even when the hash matches
#   bash engine/setup.sh --relock   re-resolve requirements.in into requirements.txt (needs PyPI)
#
# Environment:
#   TRAJSTORE_PYTHON         the interpreter to build the venv from (default: the newest of
#                            python3.13/3.12/3.11/python3 that is >= 3.11)
#   TRAJSTORE_TORCH_VARIANT  auto (default) | cpu | pypi
#       pypi: torch from PyPI. On Linux x86_64 PyPI has only the CUDA build, which pulls about
#             4 GB of NVIDIA libraries (cuBLAS, cuDNN, NCCL, ...); it runs fine on a CPU-only
#             machine, the libraries are simply never used.
#       cpu:  torch's CPU-only build (same version, "+cpu", about 200 MB) from PyTorch's own
#             index, TRAJSTORE_TORCH_CPU_INDEX (default https://download.pytorch.org/whl/cpu).
#             PyPI does not host it. The real torch, minus CUDA.
#       auto: cpu when there is no NVIDIA GPU (no working nvidia-smi) and the CPU index answers
#             within 5 s; otherwise pypi. Where only PyPI can be reached, auto means pypi.
#   A `torch` without its NVIDIA libraries does not import (libtorch_cuda.so links them), so
#   there is no leaner install from PyPI alone.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.trajstore-setup-hash"
req="$here/requirements.txt"
t0=$(date +%s)

say() { echo "[engine/setup] $*"; }
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

force=0
case "${1:-}" in
  --force) force=1 ;;
  --relock) relock=1 ;;
  "") ;;
  *) echo "usage: bash engine/setup.sh [--force|--relock]" >&2; exit 2 ;;
esac

pick_python() {
  if [[ -n "${TRAJSTORE_PYTHON:-}" ]]; then echo "$TRAJSTORE_PYTHON"; return; fi
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$cand"; return
    fi
  done
  echo "[engine/setup] no Python >= 3.11 found; set TRAJSTORE_PYTHON to one" >&2
  exit 1
}
py="$(pick_python)"
pyver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"

if [[ "${relock:-0}" == 1 ]]; then
  tmp="$(mktemp -d)"
  say "re-resolving requirements.in with $py ($pyver) in $tmp"
  "$py" -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install --disable-pip-version-check -r "$here/requirements.in"
  {
    sed -n '1,4p' "$req"
    "$tmp/venv/bin/pip" freeze --disable-pip-version-check | grep -v -E '^(nvidia-|cuda-|triton)'
  } > "$req.new"
  mv "$req.new" "$req"
  rm -rf "$tmp"
  say "wrote $req in $(elapsed); run setup.sh again to install it"
  exit 0
fi

want="$(cat "$req" "$here/pyproject.toml" | sha256sum | cut -c1-16)-py$pyver"

if [[ $force == 0 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
   "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in ("torch", "transformers", "peft", "safetensors", "pytest", "trajstore_engine")) else 1)' 2>/dev/null; then
  say "up to date: $venv (python $pyver, requirements $want); checked in $(elapsed)"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]] ||
   [[ "$("$venv/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" != "$pyver" ]]; then
  say "creating $venv with $py ($pyver)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

torch_pin="$(grep -E '^torch==' "$req" | head -1)"
variant="${TRAJSTORE_TORCH_VARIANT:-auto}"
cpu_index="${TRAJSTORE_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
if [[ "$variant" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    variant=pypi
    say "NVIDIA GPU found: torch from PyPI (CUDA build)"
  elif "$venv/bin/python" - "$cpu_index" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5).read(1)
EOF
  then
    variant=cpu
    say "no GPU and $cpu_index answers: torch's CPU-only build"
  else
    variant=pypi
    say "no GPU, but $cpu_index cannot be reached: torch from PyPI (CUDA build, ~4 GB; runs on CPU)"
  fi
fi
if [[ "$variant" == cpu ]]; then
  say "installing $torch_pin (CPU build) from $cpu_index"
  "${pip[@]}" install --index-url "$cpu_index" "$torch_pin"
elif [[ "$variant" != pypi ]]; then
  echo "[engine/setup] TRAJSTORE_TORCH_VARIANT must be auto, cpu or pypi, not '$variant'" >&2
  exit 2
fi

say "installing $(grep -c -E '^[A-Za-z]' "$req") pinned packages from $req"
"${pip[@]}" install --progress-bar on -r "$req"

# The engine itself goes in as a path entry (what an editable install amounts to), so that
# `python -m trajstore_engine` works from any directory without a build step.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$here" > "$site/trajstore_engine.pth"
"$venv/bin/python" -c 'import torch, trajstore_engine; print("[engine/setup] torch", torch.__version__, "| trajstore_engine", trajstore_engine.__version__)'
echo "$want" > "$stamp"
say "done in $(elapsed): $venv"
