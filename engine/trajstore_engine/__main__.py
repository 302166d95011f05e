"""Command line: ``python -m trajstore_engine {serve,make-tiny-model,make-tiny-vl-model,bench} ...``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trajstore_engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny Qwen3-style model + tokenizer (deterministic)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("make-tiny-vl-model",
                       help="write a tiny Qwen3-VL-style model + processor (deterministic)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)

    sub.add_parser("serve", help="speak the JSON-lines protocol (PROTOCOL.md) on stdin/stdout")

    p = sub.add_parser("bench", help="time the engine's step against a naive loop (GPU)")
    p.add_argument("--quick", action="store_true", help="tiny model, few steps (CPU smoke test)")
    p.add_argument("--out", help="also write the RESULT json to this file")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-long", action="store_true")
    p.add_argument("--variants", default="", help="comma list of engine variants to time (default: all)")
    p.add_argument("--model", default="1.7b", choices=["1.7b", "8b"], help="Qwen3 shape to build (random weights)")
    p.add_argument("--group", type=int, default=8, help="trajectories per group (per GPU)")
    p.add_argument("--seq-len", type=int, default=2000, help="mean trajectory length")
    p.add_argument("--reps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    p.add_argument("--micro-batch-tokens", type=int, default=16384)
    p.add_argument("--check-checkpoint", action="store_true", help="save/step/load/step round trip")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step")
    p.add_argument("--vl", choices=["2b", "8b", "32b"],
                   help="Qwen3-VL shape instead: episodes of 1280x720 screenshots (bench_vl.py)")
    p.add_argument("--vl-episodes", type=int, default=0, help="with --vl: episodes per step (default: the preset's)")
    p.add_argument("--vl-compile", default="auto", choices=["auto", "layers", "kernels", "none"],
                   help="with --vl: the engine's training.compile")

    args = parser.parse_args(argv)
    if args.command == "make-tiny-model":
        from .tiny import directory_digest, make_tiny_model

        out = make_tiny_model(args.out_dir, seed=args.seed)
        print(f"wrote {out} (sha256 {directory_digest(out)[:16]})")
        return 0
    if args.command == "make-tiny-vl-model":
        from .tiny import directory_digest
        from .tiny_vl import make_tiny_vl_model

        out = make_tiny_vl_model(args.out_dir, seed=args.seed)
        print(f"wrote {out} (sha256 {directory_digest(out)[:16]})")
        return 0
    if args.command == "serve":
        from .server import serve

        return serve()
    if args.command == "bench" and args.vl:
        from .bench_vl import run_bench_vl

        return run_bench_vl(args)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
