"""The policy-gradient loss, per token, and the statistics the step reports.

For each trained token with advantage A, current logprob lp (differentiable), behavior logprob
lp_b (from the inference server) and proximal logprob lp_p (the engine's own policy before this
step's update):

    standard PPO (decoupled = false):
        r = exp(lp - lp_b)
        loss_t = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))

    AReaL's decoupled objective (decoupled = true):
        r = exp(lp - lp_p)                     ratio to the proximal policy, clipped as above
        w = exp(lp_p - lp_b)                   behavior importance weight (no gradient)
        w > cap: token dropped (mode "mask") or w = cap (mode "truncate")
        loss_t = w * max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))

    optional KL to the base model (adapter disabled), k3 estimator, d = lp_base - lp:
        loss_t += kl_coef * (exp(d) - d - 1)

    loss = sum_t weight_t * loss_t, where the weights implement token- or sequence-level
    normalization over the whole batch (batch.token_weights), so micro-batches and ranks add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LossConfig


@dataclass
class TokenTerms:
    """Per-token values (detached) the metrics are built from."""

    loss: torch.Tensor
    clipped: torch.Tensor  # bool: the clipped branch was taken
    ratio: torch.Tensor
    behavior_weight: torch.Tensor  # exp(lp_p - lp_b), before the cap
    capped: torch.Tensor  # bool: dropped or truncated by the cap
    kl: torch.Tensor | None


def policy_loss(logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, advantages: torch.Tensor,
                weights: torch.Tensor, cfg: LossConfig, proximal_logprobs: torch.Tensor | None = None,
                base_logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, TokenTerms]:
    """Weighted sum of the per-token loss over these tokens (a scalar), and the per-token terms."""
    # float32 at least; float64 logprobs (a float64 model) keep the whole loss in float64.
    acc = torch.promote_types(logprobs.dtype, torch.float32)
    lp = logprobs.to(acc)
    behav = behavior_logprobs.to(acc)
    adv = advantages.to(acc)
    prox = lp.detach() if proximal_logprobs is None else proximal_logprobs.to(acc)

    denom = prox if cfg.decoupled else behav
    ratio = torch.exp(lp - denom)
    clipped_ratio = torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    pg1 = -adv * ratio
    pg2 = -adv * clipped_ratio
    pg = torch.maximum(pg1, pg2)
    clipped = (pg2 > pg1).detach()

    behavior_weight = torch.exp(prox - behav).detach()
    capped = torch.zeros_like(clipped)
    if cfg.decoupled:
        w = behavior_weight
        if cfg.behavior_weight_cap is not None:
            capped = w > cfg.behavior_weight_cap
            if cfg.behavior_weight_mode == "mask":
                w = torch.where(capped, torch.zeros_like(w), w)
            else:
                w = torch.clamp(w, max=cfg.behavior_weight_cap)
        pg = pg * w

    per_token = pg
    kl = None
    if cfg.kl_coef and base_logprobs is not None:
        d = base_logprobs.to(acc) - lp
        kl = torch.exp(d) - d - 1.0
        per_token = per_token + cfg.kl_coef * kl

    loss = (weights.to(per_token.dtype) * per_token).sum()
    terms = TokenTerms(loss=per_token.detach(), clipped=clipped, ratio=ratio.detach(),
                       behavior_weight=behavior_weight, capped=capped,
                       kl=None if kl is None else kl.detach())
    return loss, terms


class StepStats:
    """Sums over the trained tokens of a step (all micro-batches, later all ranks), turned into
    means at the end. Kept as float64 sums in one tensor so one all-reduce combines ranks."""

    SUM_KEYS = [
        "tokens", "trained_tokens", "sequences", "loss", "weighted_loss", "clipped", "ratio",
        "behavior_weight", "capped", "kl", "entropy", "mismatch_tokens", "mismatch_abs", "mismatch_k1", "mismatch_k3",
        "advantage", "staleness", "staleness_tokens", "stale_dropped",
    ]
    MAX_KEYS = ["ratio_max", "behavior_weight_max", "mismatch_abs_max", "staleness_max"]

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(self.SUM_KEYS), dtype=torch.float64, device=device)
        self.maxes = torch.full((len(self.MAX_KEYS),), -float("inf"), dtype=torch.float64, device=device)
        self._si = {k: i for i, k in enumerate(self.SUM_KEYS)}
        self._mi = {k: i for i, k in enumerate(self.MAX_KEYS)}

    def add(self, key: str, value) -> None:
        self.sums[self._si[key]] += value

    def max(self, key: str, value) -> None:
        v = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        self.maxes[self._mi[key]] = torch.maximum(self.maxes[self._mi[key]], v.to(self.maxes))

    def add_terms(self, terms: TokenTerms, pre_update_logprobs: torch.Tensor | None, behavior: torch.Tensor,
                  entropy: torch.Tensor, advantages: torch.Tensor, weighted_loss: torch.Tensor) -> None:
        """``pre_update_logprobs``: the engine's logprobs before this step's update, for the
        mismatch to the behavior policy (None when not known for these tokens)."""
        if terms.loss.numel() == 0:
            return
        self.add("trained_tokens", terms.loss.numel())
        self.add("loss", terms.loss.double().sum())
        self.add("weighted_loss", weighted_loss.detach().double())
        self.add("clipped", terms.clipped.double().sum())
        self.add("ratio", terms.ratio.double().sum())
        self.add("behavior_weight", terms.behavior_weight.double().sum())
        self.add("capped", terms.capped.double().sum())
        if terms.kl is not None:
            self.add("kl", terms.kl.double().sum())
        self.add("entropy", entropy.double().sum())
        self.add("advantage", advantages.double().sum())
        self.max("ratio_max", terms.ratio.max())
        self.max("behavior_weight_max", terms.behavior_weight.max())
        if pre_update_logprobs is not None:
            d = pre_update_logprobs.detach().double() - behavior.double()
            self.add("mismatch_tokens", d.numel())
            self.add("mismatch_abs", d.abs().sum())
            self.add("mismatch_k1", (-d).sum())  # E_behavior[log pi_b - log pi]
            self.add("mismatch_k3", (torch.exp(d) - d - 1.0).sum())
            self.max("mismatch_abs_max", d.abs().max())

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            dist.all_reduce(self.maxes, op=dist.ReduceOp.MAX)

    def metrics(self) -> dict[str, float]:
        s = {k: float(self.sums[i]) for k, i in self._si.items()}
        m = {k: float(self.maxes[i]) for k, i in self._mi.items()}
        n = max(s["trained_tokens"], 1.0)
        nm = max(s["mismatch_tokens"], 1.0)

        def mx(k):
            return m[k] if m[k] != -float("inf") else 0.0

        return {
            "loss": s["weighted_loss"],
            "token_loss_mean": s["loss"] / n,
            "clip_fraction": s["clipped"] / n,
            "ratio_mean": s["ratio"] / n,
            "ratio_max": mx("ratio_max"),
            "importance_weight_mean": s["behavior_weight"] / n,
            "importance_weight_max": mx("behavior_weight_max"),
            "importance_weight_capped_fraction": s["capped"] / n,
            "kl_to_base": s["kl"] / n,
            "entropy": s["entropy"] / n,
            "mismatch_abs_mean": s["mismatch_abs"] / nm,
            "mismatch_abs_max": mx("mismatch_abs_max"),
            "mismatch_kl": s["mismatch_k3"] / nm,
            "mismatch_kl_k1": s["mismatch_k1"] / nm,
            "advantage_mean": s["advantage"] / n,
            "staleness_mean": s["staleness"] / max(s["staleness_tokens"], 1.0),
            "staleness_max": mx("staleness_max"),
            "stale_dropped_tokens": int(s["stale_dropped"]),
            "tokens": int(s["tokens"]),
            "trained_tokens": int(s["trained_tokens"]),
            "sequences": int(s["sequences"]),
        }
