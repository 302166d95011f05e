"""Is a text task learnable by the tiny model on a CPU? A self-contained GRPO check.

The demo (a later issue) must show success rising from <= 20 % to >= 80 % within 10 CPU minutes
on the tiny random model. This script runs the same task rule as src/producers/envs/text.ts
(answer = the first digit anywhere in the reply; reward = correct + format_reward x has-digit),
the demo's settings (LoRA r 8 / alpha 16 on q,k,v,o; lr 5e-3; G 8; 4 groups a step; 8 new tokens;
temperature 1), and a plain on-policy GRPO step (group-normalised advantages, token-mean
policy gradient), timing itself on `--threads` CPU threads. It is not the trainer: it answers
only "does the task give the tiny model a signal it can climb, fast enough".

    PYTHONPATH=engine engine/.venv/bin/python src/producers/tasks/text_learnability.py \
        --family copy_digit --digits 10 --minutes 10 --threads 2

Prints one JSON line per report interval and a final `RESULT {...}`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time

import torch

SYSTEM = "You are a helpful assistant. Answer with a single digit."
COPY_TRAIN = ["Reply with the digit {d}.", "Say the digit {d}.", "The answer is {d}. Repeat it."]


def make_task(rng: random.Random, family: str, digits: int, templates: str = "varied") -> tuple[str, int]:
    if family == "copy_digit":
        d = rng.randrange(digits)
        return rng.choice(COPY_TRAIN if templates == "varied" else COPY_TRAIN[:1]).replace("{d}", str(d)), d
    if family == "lucky":
        return "What is the lucky digit?", 7
    if family == "add":
        pairs = [(a, b) for a in range(digits) for b in range(digits) if a + b < digits and (a * 7 + b * 3) % 5 != 0]
        a, b = rng.choice(pairs)
        return f"What is {a} plus {b}?", a + b
    raise SystemExit(f"unknown family {family}")


PARSE = {"anywhere": r"[0-9]", "start": r"^\s*([0-9])"}


def first_digit(text: str, parse: str = "anywhere") -> int | None:
    m = re.search(PARSE[parse], text)
    return int(m.group(m.lastindex or 0)) if m else None


def report_ceiling(model) -> None:
    """The highest probability any single token can get while the output head (tied embeddings) and
    the final RMSNorm stay frozen, as they do under LoRA on attention: the normed hidden state has
    RMS 1, so a token's logit is at most sqrt(hidden) x |norm_weight * e_token|."""
    emb = model.get_output_embeddings().weight.detach()
    w = model.model.norm.weight.detach()
    best = 0.0
    for i in range(emb.shape[0]):
        u = w * emb[i]
        if u.norm() == 0:
            continue
        h = u / u.norm() * emb.shape[1] ** 0.5
        best = max(best, torch.softmax((h * w) @ emb.T, -1)[i].item())
    print(json.dumps({"max_single_token_probability": round(best, 4)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="copy_digit")
    ap.add_argument("--digits", type=int, default=10)
    ap.add_argument("--format-reward", type=float, default=0.1)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--groups-per-step", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--parse", choices=sorted(PARSE), default="anywhere", help="where the answer digit is read")
    ap.add_argument("--embed-scale", type=float, default=1.0, help="multiply the tied embeddings (a tiny model initialised at a larger scale)")
    ap.add_argument("--templates", choices=["varied", "fixed"], default="varied", help="fixed: one phrasing, the digit last")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trajstore_engine.tiny import make_tiny_model

    model_dir = args.model_dir or str(make_tiny_model(tempfile.mkdtemp() + "/tiny", seed=0))
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(args.embed_scale)
    report_ceiling(base)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    eos_ids = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    rng = random.Random(args.seed)

    started = time.time()
    history: list[float] = []
    step = 0
    first_80 = None
    while time.time() - started < args.minutes * 60:
        step += 1
        tasks = [make_task(rng, args.family, args.digits, args.templates) for _ in range(args.groups_per_step)]
        prompts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p, _ in tasks]
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        ids = enc.input_ids.repeat_interleave(args.group, 0)
        mask = enc.attention_mask.repeat_interleave(args.group, 0)
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, pad_token_id=pad, eos_token_id=list(eos_ids))
        comp = out[:, ids.shape[1]:]
        # Completion mask: tokens up to and including the first EOS.
        cmask = torch.ones_like(comp, dtype=torch.float32)
        for i in range(comp.shape[0]):
            for j, t in enumerate(comp[i].tolist()):
                if t in eos_ids:
                    cmask[i, j + 1:] = 0
                    break
        texts = [tok.decode([t for t, m in zip(comp[i].tolist(), cmask[i].tolist()) if m and t not in eos_ids]) for i in range(comp.shape[0])]
        answers = [a for _, a in tasks for _ in range(args.group)]
        correct = torch.tensor([1.0 if first_digit(t, args.parse) == a else 0.0 for t, a in zip(texts, answers)])
        has_digit = torch.tensor([1.0 if first_digit(t, args.parse) is not None else 0.0 for t in texts])
        reward = correct + args.format_reward * has_digit
        r = reward.view(args.groups_per_step, args.group)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1)
        history.append(correct.mean().item())

        if adv.abs().sum() > 0:
            model.train()
            full = torch.cat([ids, comp], 1)
            fmask = torch.cat([mask.float(), cmask], 1)
            logits = model(input_ids=full, attention_mask=fmask.long()).logits[:, ids.shape[1] - 1:-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
            loss = -(adv.unsqueeze(1) * logp * cmask).sum() / cmask.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        window = history[-10:]
        avg = sum(window) / len(window)
        if first_80 is None and len(history) >= 10 and avg >= 0.8:
            first_80 = time.time() - started
        if step % 20 == 0:
            print(json.dumps({"step": step, "s": round(time.time() - started, 1), "success_last10": round(avg, 3), "has_digit": round(has_digit.mean().item(), 3)}), flush=True)

    base = sum(history[:10]) / max(1, min(10, len(history)))
    final = sum(history[-10:]) / max(1, min(10, len(history)))
    print("RESULT " + json.dumps({"family": args.family, "digits": args.digits, "parse": args.parse, "templates": args.templates, "lr": args.lr, "max_new_tokens": args.max_new_tokens, "embed_scale": args.embed_scale, "threads": args.threads, "steps": step, "seconds": round(time.time() - started, 1),
                                   "success_first10_steps": round(base, 3), "success_last10_steps": round(final, 3),
                                   "seconds_to_80pct": None if first_80 is None else round(first_80, 1)}), flush=True)


if __name__ == "__main__":
    main()
