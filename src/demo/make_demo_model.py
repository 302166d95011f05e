"""The demo's base model: the engine's tiny model with a sharper output head.

Why not the tiny model as is: it is initialised like a large model (weights ~ N(0, 0.02)), so
with hidden size 64 its logits span about +-1.3 and no token can get more than ~1 % probability
while the final RMSNorm and the (tied) output embeddings stay frozen, as they do under LoRA on
the attention and MLP projections. A policy that can never be more than 1 % sure of the right
digit cannot reach 80 % success. Multiplying the final norm's weight by `--output-scale` is the
same as a lower softmax temperature at the head: the hidden states, the residual stream and
what LoRA can change stay exactly as they were, but a learned direction can now make one token
near-certain (a pretrained LM has this range; a random init of this size does not).

    engine/.venv/bin/python src/demo/make_demo_model.py OUT_DIR [--seed 0] [--output-scale 8]

Deterministic: the same seed and scale give the same bytes. Prints the directory and the
highest probability a single token can reach (the ceiling argued above).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path


def ceiling(model) -> float:
    """Highest softmax probability any token can get from a unit-RMS hidden state, head frozen."""
    import torch

    emb = model.get_output_embeddings().weight.detach()
    w = model.model.norm.weight.detach()
    u = w * emb  # direction in normed-hidden space that favours each token most
    h = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12) * emb.shape[1] ** 0.5
    probs = torch.softmax((h * w) @ emb.T, dim=-1)
    return probs.diagonal().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-scale", type=float, default=8.0)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trajstore_engine.tiny import make_tiny_model

    out = Path(args.out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        make_tiny_model(work / "base", seed=args.seed)
        model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32)
        with torch.no_grad():
            model.model.norm.weight.mul_(args.output_scale)
        model.save_pretrained(work / "model")
        AutoTokenizer.from_pretrained(work / "base").save_pretrained(work / "model")
        shutil.copy(work / "base" / "generation_config.json", work / "model" / "generation_config.json")
        for path in (work / "model").glob("*.json"):
            data = json.loads(path.read_text())
            path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        top = ceiling(model)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work / "model", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"model_dir": str(out), "output_scale": args.output_scale, "max_single_token_probability": round(top, 4)}))


if __name__ == "__main__":
    main()
