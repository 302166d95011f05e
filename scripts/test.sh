#!/usr/bin/env bash
# The README's test command (`npm test`): type-check, start the local services once for the
# whole suite, run the TypeScript tests against them, then the engine's Python tests.
#   --node-only    skip the engine's tests      --engine-only   only the engine's tests
# Services that this script started are stopped at the end; ones already running are left up.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=all
case "${1:-}" in
  --node-only) mode=node ;;
  --engine-only) mode=engine ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--node-only|--engine-only]" >&2; exit 64 ;;
esac

phase_start=$SECONDS
phase() { echo "== $1 (+$((SECONDS - phase_start)) s)"; }

status=0
# The engine's venv first: the TypeScript tests drive the engine and the CPU policy server too.
phase "engine environment"
bash engine/setup.sh

if [[ $mode != engine ]]; then
  phase "type-check"
  npx --no-install tsc --noEmit -p tsconfig.json

  phase "schema compatibility"
  node bin/trajstore.mjs schemas check

  phase "local services"
  # Stop at the end only what this script started: all of them, or the S3 store alone.
  to_stop=""
  if ! node bin/trajstore.mjs services status >/dev/null 2>&1; then
    to_stop="all"
  elif ! node bin/trajstore.mjs services status --json | grep -q '"name": "s3"'; then
    to_stop="s3"
  fi
  trap 'case $to_stop in all) node bin/trajstore.mjs services down ;; s3) node bin/trajstore.mjs services down s3 ;; esac' EXIT
  node bin/trajstore.mjs services up --s3

  phase "TypeScript tests"
  mapfile -t files < <(find test -name '*.test.ts' | sort)
  node --import tsx --test --test-timeout=1200000 "${files[@]}" || status=$?
fi

if [[ $mode != node ]]; then
  phase "engine tests"
  (cd engine && .venv/bin/python -m pytest tests -q -p no:cacheprovider) || status=$?
fi

phase "done (exit $status)"
exit $status
