"""Write a PEFT LoRA adapter with random weights, for tests of adapter loading and use.

    python -m trajstore_engine.policy_server.make_test_adapter OUT_DIR --model MODEL_DIR --seed 1 --rank 8

PEFT initialises ``lora_B`` to zero, which makes a fresh adapter a no-op; here both A and B are
drawn from the seed (B scaled by ``--scale``), so the adapter visibly changes the model's outputs.
The result is an ordinary PEFT directory (adapter_config.json + adapter_model.safetensors) that
PEFT, the engine and vLLM load. Same seed, rank and model: same bytes.

For a vision-language model (Qwen3-VL) the adapter covers the language model's layers only
(``target_modules`` becomes a regex over ``model.language_model.layers.*``): vLLM applies LoRA to the
language model of a multimodal model unless ``--enable-tower-connector-lora`` is set
(``LoRAModelManager``, ``vllm/lora/model_manager.py``; ``get_mm_mapping`` in
``vllm/model_executor/models/qwen3_vl.py`` names the tower ``visual.``). Qwen3-VL's vision blocks
name their projections ``qkv``/``proj``, so the plain names would match the same modules; the regex
says so explicitly and stays right for towers that reuse ``q_proj`` names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def make_test_adapter(out_dir: str | Path, model_dir: str | Path, *, seed: int = 1, rank: int = 8,
                      alpha: float | None = None, scale: float = 0.5,
                      target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from ..model import is_vision_language, load_base_model

    out = Path(out_dir)
    base = load_base_model(model_dir, device="cpu")
    targets: list[str] | str = list(target_modules)
    if is_vision_language(base.config):
        targets = language_model_targets(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=0.0,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if "lora_A" in name or "lora_B" in name:
                    std = (1.0 / param.shape[1]) ** 0.5 * (scale if "lora_B" in name else 1.0)
                    param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * std)
    finally:
        torch.random.set_rng_state(rng_state)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def language_model_targets(names) -> str:
    """A PEFT ``target_modules`` regex (full match) for ``names`` inside the language model's layers only."""
    import re

    alternatives = "|".join(re.escape(n) for n in names)
    return rf"(.*\.)?language_model\.layers\.\d+\..*\.({alternatives})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trajstore_engine.policy_server.make_test_adapter",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--model", required=True, help="the base model directory the adapter is for")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=None, help="lora_alpha (default 2 x rank)")
    parser.add_argument("--scale", type=float, default=0.5, help="size of B relative to A")
    args = parser.parse_args(argv)
    out = make_test_adapter(args.out_dir, args.model, seed=args.seed, rank=args.rank, alpha=args.alpha,
                            scale=args.scale)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
