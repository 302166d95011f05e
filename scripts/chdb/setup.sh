#!/usr/bin/env bash
# Creates the venv with current ClickHouse's engine (chdb, pinned in requirements.txt here) that
# test/clickhouse/current-clickhouse.test.ts runs statements in, at $TRAJSTORE_HOME/chdb-venv
# (default .trajstore/chdb-venv, git-ignored). Separate from engine/.venv, which goes to GPU hosts.
# Idempotent: a venv whose stamp matches requirements.txt and the interpreter, and that imports
# chdb, is kept (a re-run takes a second). The last line printed is the venv's python.
#
#   bash scripts/chdb/setup.sh            create or update the venv
#   bash scripts/chdb/setup.sh --force    reinstall even when the stamp matches
#
# Environment: TRAJSTORE_HOME (as for the services); TRAJSTORE_PYTHON, the interpreter to build
# the venv from (default python3.11, else python3; 3.9 or newer).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
home="${TRAJSTORE_HOME:-$root/.trajstore}"
[[ $home == /* ]] || home="$PWD/$home"   # relative to the caller's directory, as for the services
venv="$home/chdb-venv"
stamp="$venv/.trajstore-setup-hash"
req="$here/requirements.txt"

say() { echo "[chdb/setup] $*" >&2; }

python="${TRAJSTORE_PYTHON:-}"
if [[ -z $python ]]; then
  if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null; then
  say "need Python 3.9 or newer (found: $("$python" --version 2>&1 || echo none)); set TRAJSTORE_PYTHON"
  exit 1
fi

want="$( (cat "$req"; "$python" -c 'import sys, platform; print(sys.version, platform.machine())') | sha256sum | cut -d' ' -f1)"
if [[ ${1:-} != --force && -f $stamp && $(cat "$stamp") == "$want" ]] && "$venv/bin/python" -c 'import chdb' 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi

say "installing chdb into $venv (first time: about 350 MB from PyPI)"
rm -rf "$venv"
mkdir -p "$home"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
"$venv/bin/python" -c 'import chdb; print("[chdb/setup] chdb", chdb.__version__, "ClickHouse", chdb.query("SELECT version()", "TSVRaw").bytes().decode().strip())' >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"
