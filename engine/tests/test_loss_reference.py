"""The engine's loss and gradient against a float64 reference written plainly.

The reference runs the model in float64 with eager attention, one sequence at a time (no packing),
takes log_softmax over full-vocabulary logits, and sums the per-token loss in a Python loop with
the formulas of the docs. The engine runs packed, chunked, in float32.
"""

import math

import pytest
import torch

from helpers import lora_state, make_engine, random_batch, randomize_lora, save_batch
from trajstore_engine.model import LoraSettings, apply_lora, load_base_model


def reference_loss(model_dir, engine, batch, loss_cfg, lora_weights=None):
    """Plain float64 loss over ``batch`` with LoRA weights ``lora_weights`` (default: the engine's
    current ones). Returns (loss, {name: grad}, per-sequence logprobs)."""
    base = load_base_model(model_dir, "cpu", torch.float64, attn_implementation="eager")
    lora = engine.cfg.lora
    ref = apply_lora(base, LoraSettings(r=lora.r, alpha=lora.alpha, dropout=0.0,
                                        target_modules=lora.target_modules))
    engine_params = lora_weights or dict(engine.model.named_parameters())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.requires_grad:
                p.data = engine_params[name].detach().double().clone()
                p.requires_grad_(True)
    ref.eval()

    def seq_logprobs(model, ids, use_adapter=True):
        ctx = model.disable_adapter() if not use_adapter else torch.enable_grad()
        with ctx:
            logits = model(input_ids=ids[None]).logits[0].double() / loss_cfg.temperature
        logp = torch.log_softmax(logits, dim=-1)
        out = torch.zeros(ids.numel(), dtype=torch.float64)
        out[1:] = logp[:-1].gather(1, ids[1:, None])[:, 0]
        return out

    cu = batch.cu_seqlens.tolist()
    n_seq = batch.num_sequences
    mask = batch.loss_mask
    per_seq = []
    for i in range(n_seq):
        s, e = cu[i], cu[i + 1]
        lp = seq_logprobs(ref, batch.input_ids[s:e])
        with torch.no_grad():
            base_lp = seq_logprobs(ref, batch.input_ids[s:e], use_adapter=False) if loss_cfg.kl_coef else None
        per_seq.append((s, e, lp, base_lp))

    n_tokens = int(mask.sum())
    n_seqs_with_tokens = sum(1 for s, e, _, _ in per_seq if mask[s:e].any())
    total = torch.zeros((), dtype=torch.float64)
    for s, e, lp, base_lp in per_seq:
        n_here = int(mask[s:e].sum())
        for j in range(e - s):
            if not mask[s + j]:
                continue
            a = float(batch.advantages[s + j])
            b = float(batch.behavior_logprobs[s + j])
            cur = lp[j]
            prox = cur.detach()
            denom = prox if loss_cfg.decoupled else b
            ratio = torch.exp(cur - denom)
            unclipped = -a * ratio
            clipped = -a * torch.clamp(ratio, 1 - loss_cfg.eps_low, 1 + loss_cfg.eps_high)
            term = torch.maximum(unclipped, clipped)
            if loss_cfg.decoupled:
                w = math.exp(float(prox) - b)
                cap = loss_cfg.behavior_weight_cap
                if cap is not None and w > cap:
                    w = 0.0 if loss_cfg.behavior_weight_mode == "mask" else cap
                term = term * w
            if loss_cfg.kl_coef:
                d = base_lp[j] - cur
                term = term + loss_cfg.kl_coef * (torch.exp(d) - d - 1)
            if loss_cfg.normalization == "token":
                weight = 1.0 / n_tokens
            else:
                weight = 1.0 / (n_here * n_seqs_with_tokens)
            total = total + weight * term
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in ref.named_parameters() if p.requires_grad}
    return float(total.detach()), grads, per_seq


CASES = {
    "ppo_token": dict(loss={}, training={}),
    "ppo_sequence_clip_higher": dict(loss={"normalization": "sequence", "eps_low": 0.1, "eps_high": 0.3},
                                     training={"micro_batch_tokens": 48}),
    "decoupled_mask_cap": dict(loss={"decoupled": True, "behavior_weight_cap": 1.5}, training={"micro_batch_tokens": 64}),
    "decoupled_truncate_kl_temperature": dict(
        loss={"decoupled": True, "behavior_weight_cap": 1.2, "behavior_weight_mode": "truncate",
              "kl_coef": 0.3, "temperature": 0.7, "normalization": "sequence"},
        training={"micro_batch_tokens": 30, "logprob_chunk_tokens": 7}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_match_a_float64_reference(tiny_model_dir, tmp_path, case):
    spec = CASES[case]
    engine = make_engine(tiny_model_dir, loss=spec["loss"], training=spec["training"])
    randomize_lora(engine, seed=3)
    # Behavior logprobs near the model's own, so ratios land on both sides of the clip range.
    batch = random_batch(n_seq=5, seed=11)
    lp_now = engine.compute_logprobs(save_batch(tmp_path, batch, "probe"), None)["logprobs"]
    g = torch.Generator().manual_seed(5)
    batch.behavior_logprobs = (lp_now + torch.randn(lp_now.shape, generator=g) * 0.4).clamp(max=0.0)
    batch.behavior_logprobs[~batch.loss_mask] = 0.0
    path = save_batch(tmp_path, batch)

    captured = {}
    step = engine.optimizer_step

    def capture():
        captured.update({n: p.grad.detach().clone() for n, p in engine.model.named_parameters() if p.requires_grad})
        return step()

    engine.optimizer_step = capture
    before = lora_state(engine)
    out = engine.train_step(path)
    ref_loss, ref_grads, _ = reference_loss(tiny_model_dir, engine, batch, engine.cfg.loss, before)

    assert out["metrics"]["loss"] == pytest.approx(ref_loss, rel=2e-5, abs=1e-7)
    assert out["metrics"]["micro_batches"] >= (2 if spec["training"].get("micro_batch_tokens") else 1)
    num = sum(float((captured[n].double() - ref_grads[n]).norm() ** 2) for n in ref_grads) ** 0.5
    den = sum(float(ref_grads[n].norm() ** 2) for n in ref_grads) ** 0.5
    assert den > 0
    assert num / den < 1e-4, f"relative gradient error {num / den:.2e}"
    # every LoRA tensor got a gradient, and it matches one by one
    for n, g_ref in ref_grads.items():
        torch.testing.assert_close(captured[n].double(), g_ref, rtol=1e-3, atol=1e-6 * float(g_ref.abs().max()) + 1e-9)
    if spec["loss"].get("decoupled"):
        # one update per batch: the ratio to the proximal policy is exactly 1, nothing clips
        assert out["metrics"]["importance_weight_capped_fraction"] > 0
        assert out["metrics"]["clip_fraction"] == 0
        assert out["metrics"]["ratio_max"] == pytest.approx(1.0)
    else:
        assert 0 < out["metrics"]["clip_fraction"] < 1


def test_engine_logprobs_match_the_reference_per_sequence(tiny_model_dir, tmp_path):
    engine = make_engine(tiny_model_dir, training={"micro_batch_tokens": 50, "logprob_chunk_tokens": 16})
    randomize_lora(engine, seed=4)
    batch = random_batch(n_seq=6, seed=2)
    lp = engine.compute_logprobs(save_batch(tmp_path, batch), None)["logprobs"]
    _, _, per_seq = reference_loss(tiny_model_dir, engine, batch, engine.cfg.loss)
    for s, e, ref_lp, _ in per_seq:
        torch.testing.assert_close(lp[s + 1:e].double(), ref_lp[1:].detach(), rtol=0, atol=2e-5)
        assert lp[s] == 0
