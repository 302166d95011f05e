"""What a training step does to the policy, and the errors a user meets first."""

import torch

from helpers import make_engine, random_batch, save_batch
from trajstore_engine.errors import OUT_OF_MEMORY, out_of_memory


def mean_logprob(lp: torch.Tensor, batch, seq: int) -> float:
    s, e = int(batch.cu_seqlens[seq]), int(batch.cu_seqlens[seq + 1])
    m = batch.loss_mask[s:e]
    return float(lp[s:e][m].mean())


def test_a_step_raises_the_logprobs_of_positive_advantage_tokens_and_lowers_negative_ones(tiny_model_dir, tmp_path):
    engine = make_engine(tiny_model_dir, optim={"lr": 5e-3})
    batch = random_batch(n_seq=4, seed=8, min_len=20, max_len=40, versions=False)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    batch.advantages = torch.repeat_interleave(signs, batch.cu_seqlens[1:] - batch.cu_seqlens[:-1])
    path = save_batch(tmp_path, batch)
    before = engine.compute_logprobs(path, None)["logprobs"]
    # behavior = the policy itself (on-policy): ratio 1, nothing clipped, the plain policy gradient
    batch.behavior_logprobs = before.clone()
    path = save_batch(tmp_path, batch)
    out = engine.train_step(path)
    assert out["metrics"]["clip_fraction"] == 0
    assert out["metrics"]["mismatch_abs_mean"] < 1e-5
    after = engine.compute_logprobs(path, None)["logprobs"]
    for seq, sign in enumerate(signs.tolist()):
        moved = mean_logprob(after, batch, seq) - mean_logprob(before, batch, seq)
        assert moved * sign > 1e-4, f"sequence {seq} (advantage {sign:+}) moved {moved:+.2e}"


def test_out_of_memory_hint_names_micro_batch_tokens_first_then_checkpointing():
    err = out_of_memory("CUDA out of memory. Tried to allocate 2.00 GiB", micro_batch_tokens=16384,
                        gradient_checkpointing=False, max_seq_len=9000, peak_gib=77.5)
    assert err.code == OUT_OF_MEMORY and not err.retriable
    assert err.hint.startswith("lower training.micro_batch_tokens (now 16384; try 8192)")
    assert err.hint.index("gradient_checkpointing") < err.hint.index("max_seq_length")
    assert "9000" in err.hint
    assert err.to_json()["details"]["peak_gib"] == 77.5
