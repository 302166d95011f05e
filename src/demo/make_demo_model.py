"""The demos' base models: the engine's tiny models with a sharper output head.

Why not the tiny model as is: it is initialised like a large model (weights ~ N(0, 0.02)), so
with hidden size 64 its logits span about +-1.3 and no token can get more than ~1 % probability
while the final RMSNorm and the (tied) output embeddings stay frozen, as they do under LoRA on
the attention and MLP projections. A policy that can never be more than 1 % sure of the right
digit cannot reach 80 % success. Multiplying the final norm's weight by `--output-scale` is the
same as a lower softmax temperature at the head: the hidden states, the residual stream and
what LoRA can change stay exactly as they were, but a learned direction can now make one token
near-certain (a pretrained LM has this range; a random init of this size does not).

    engine/.venv/bin/python src/demo/make_demo_model.py OUT_DIR [--seed 0] [--output-scale 8]

`--vl` makes the vision demo's model (`npm run demo -- --vision`) from the tiny Qwen3-VL model
(trajstore_engine.tiny_vl) the same way, then gives it the answer format, not the answer: a
short supervised warm start of its decoder layers on read_digit pages drawn here (the grid of
src/producers/tasks/browser-pages.ts, DIGIT_GRID), where every page is paired with both "0"
and "1" as the reply, equally often. The best it can learn is to say "0" or "1" half the time
each, whatever the page shows: a guesser at chance (~50 % success), not a reader. Without it the
untrained model answers a digit in under 1 % of replies, and on a CPU the vision demo cannot
afford the minutes the text demo spends finding "0"; the reading itself is left to GRPO.

    engine/.venv/bin/python src/demo/make_demo_model.py OUT_DIR --vl [--output-scale 8] \
        [--system "..."] [--instruction "..."]    # the prompt the browser environment sends

The vision tower, the embeddings and the norms stay as made; `--warm-steps 0` skips the warm
start. Deterministic: the same arguments give the same bytes (one CPU thread while training).
Prints the directory, the highest probability a single token can reach (the ceiling argued
above) and, for `--vl`, the reply probabilities of "0" and "1" on pages of each digit; the
arguments and those figures are also kept in OUT_DIR/demo_model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

# The browser environment's prompt for read_digit (ANSWER_SYSTEM, READ_DIGIT_INSTRUCTION in
# src/producers/tasks/browser-pages.ts); the demo passes them, these are the fallbacks.
SYSTEM = "You see a web page. Reply with the answer only."
INSTRUCTION = "Type the digit shown on the page."
# DIGIT_GRID and VIEWPORT of browser-pages.ts, and its page style (header bar, background).
GRID = dict(font_px=100, columns=8, rows=5, pitch_x=84, pitch_y=88, top=50)
VIEWPORT = (640, 480)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def final_norm(model):
    """The final RMSNorm before the head: `model.norm` of a causal LM, `language_model.norm` of a VL one."""
    inner = model.model
    return inner.language_model.norm if hasattr(inner, "language_model") else inner.norm


def ceiling(model) -> float:
    """Highest softmax probability any token can get from a unit-RMS hidden state, head frozen."""
    import torch

    emb = model.get_output_embeddings().weight.detach()
    w = final_norm(model).weight.detach()
    u = w * emb  # direction in normed-hidden space that favours each token most
    h = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12) * emb.shape[1] ** 0.5
    probs = torch.softmax((h * w) @ emb.T, dim=-1)
    return probs.diagonal().max().item()


def draw_page(digit: int, x: int, y: int, instruction: str):
    """A read_digit page as chromium renders it, near enough for a warm start (PIL, no browser)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", VIEWPORT, "#fafafa")
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, VIEWPORT[0], 47], fill="#1f3a5f")
    try:
        big, small = ImageFont.truetype(FONT, GRID["font_px"]), ImageFont.truetype(FONT, 17)
    except OSError:  # no DejaVu: Pillow's own scalable font
        big, small = ImageFont.load_default(GRID["font_px"]), ImageFont.load_default(17)
    d.text((20, 14), instruction, fill="#ffffff", font=small)
    for row in range(GRID["rows"]):
        for col in range(GRID["columns"]):
            d.text((x + col * GRID["pitch_x"], GRID["top"] + y + row * GRID["pitch_y"]), str(digit), fill="#000000", font=big)
    return img


def warm_start(model, processor, *, system: str, instruction: str, steps: int, lr: float, seed: int) -> dict:
    """Teaches the reply format ("0" or "1", then end of turn) with both answers right on every page."""
    import random

    import torch

    tok = processor.tokenizer
    ids = {d: tok.convert_tokens_to_ids(str(d)) for d in (0, 1)}
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rand = random.Random(seed)
    pages = [(d, draw_page(d, rand.randint(-30, 30), rand.randint(0, 30), instruction)) for d in (0, 1) for _ in range(8)]

    def encode(img):
        msgs = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": instruction}]}]
        return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")

    data = [(d, encode(img)) for d, img in pages]
    params = [p for n, p in model.named_parameters() if ".language_model.layers." in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        for _, x in data:
            n = x["input_ids"].shape[1]
            for target in ids.values():
                full = torch.cat([x["input_ids"], torch.tensor([[target, eos]])], dim=1)
                mm = torch.cat([x["mm_token_type_ids"], torch.zeros(1, 2, dtype=torch.long)], dim=1)
                logits = model(input_ids=full, pixel_values=x["pixel_values"], image_grid_thw=x["image_grid_thw"], mm_token_type_ids=mm).logits
                logp = torch.log_softmax(logits[0, n - 1:n + 1].float(), dim=-1)
                loss = -(logp[0, target] + logp[1, eos]) / (2 * len(data))
                loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # What version 0 will do: the reply's first-token probabilities on pages of each digit.
    probs = {}
    with torch.no_grad():
        for shown in (0, 1):
            p = torch.stack([torch.softmax(model(**x).logits[0, -1].float(), -1) for d, x in data if d == shown]).mean(0)
            probs[f"page_{shown}"] = {f"p_{d}": round(p[i].item(), 3) for d, i in ids.items()}
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-scale", type=float, default=8.0)
    ap.add_argument("--vl", action="store_true", help="the vision demo's model (tiny Qwen3-VL, answer-format warm start)")
    ap.add_argument("--system", default=SYSTEM)
    ap.add_argument("--instruction", default=INSTRUCTION)
    ap.add_argument("--warm-steps", type=int, default=40)
    ap.add_argument("--warm-lr", type=float, default=1e-3)
    args = ap.parse_args()

    import torch

    out = Path(args.out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    report: dict = {}
    try:
        if args.vl:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            from trajstore_engine.tiny_vl import make_tiny_vl_model

            make_tiny_vl_model(work / "base", seed=args.seed)
            model = AutoModelForImageTextToText.from_pretrained(work / "base", dtype=torch.float32, local_files_only=True)
            processor = AutoProcessor.from_pretrained(work / "base", local_files_only=True)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from trajstore_engine.tiny import make_tiny_model

            make_tiny_model(work / "base", seed=args.seed)
            model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32)
            processor = AutoTokenizer.from_pretrained(work / "base")
        with torch.no_grad():
            final_norm(model).weight.mul_(args.output_scale)
        if args.vl and args.warm_steps > 0:
            threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
            torch.set_num_threads(1)  # the same bytes on every machine: one thread, one order of sums
            torch.manual_seed(args.seed)
            try:
                report["version_0_reply"] = warm_start(model, processor, system=args.system, instruction=args.instruction,
                                                       steps=args.warm_steps, lr=args.warm_lr, seed=args.seed)
            finally:
                torch.set_num_threads(threads)
                torch.random.set_rng_state(rng)
        model.save_pretrained(work / "model")
        processor.save_pretrained(work / "model")
        shutil.copy(work / "base" / "generation_config.json", work / "model" / "generation_config.json")
        for path in (work / "model").glob("*.json"):
            data = json.loads(path.read_text())
            path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        top = ceiling(model)
        # What made this directory, so a caller can tell a cached model from a stale one.
        made = {"seed": args.seed, "output_scale": args.output_scale, "vl": args.vl}
        if args.vl:
            made.update(system=args.system, instruction=args.instruction, warm_steps=args.warm_steps, warm_lr=args.warm_lr)
        (work / "model" / "demo_model.json").write_text(json.dumps({"made_with": made, **report}, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work / "model", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"model_dir": str(out), "output_scale": args.output_scale, "max_single_token_probability": round(top, 4), **report}))


if __name__ == "__main__":
    main()
