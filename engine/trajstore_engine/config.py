"""The engine's typed configuration: what the ``init`` command carries (see PROTOCOL.md).

Unknown fields and wrong types are refused with ``TRAJ_E_ENGINE_BAD_REQUEST`` naming the field, so a
typo in the TypeScript side's config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import bad_request


@dataclass
class ModelConfig:
    path: str = ""
    dtype: str = "auto"  # auto = bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto = cuda if available
    max_seq_length: int = 32768


@dataclass
class LoraConfigIn:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class LossConfig:
    # PPO clip range on the ratio pi_theta / pi_old: [1 - eps_low, 1 + eps_high]
    eps_low: float = 0.2
    eps_high: float = 0.2
    # AReaL's decoupled objective: the ratio is taken to the proximal policy (the engine's own
    # policy before this step's update, recomputed), and each token is weighted by the behavior
    # importance weight pi_prox / pi_behavior.
    decoupled: bool = False
    # Behavior importance weights above the cap: "mask" drops the token (AReaL), "truncate" clips
    # the weight to the cap. null: no cap.
    behavior_weight_cap: float | None = 5.0
    behavior_weight_mode: Literal["mask", "truncate"] = "mask"
    # KL(pi_theta || pi_base) with the k3 estimator, pi_base = the model with the adapter disabled.
    kl_coef: float = 0.0
    # token: every trained token of the batch counts the same; sequence: mean per sequence, then
    # mean over sequences.
    normalization: Literal["token", "sequence"] = "token"
    # Logits are divided by this before the softmax: use the sampling temperature of the rollouts.
    temperature: float = 1.0
    # Tokens sampled by a policy more than this many versions behind the one being trained are
    # dropped (counted in metrics). null: keep all.
    max_staleness: int | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0


@dataclass
class TrainingConfig:
    # Token budget of one packed micro-batch (forward + backward at once). The main memory knob.
    micro_batch_tokens: int = 16384
    # true | false | "auto" (on for micro-batches longer than checkpoint_above_tokens)
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    checkpoint_above_tokens: int = 16384
    # Optimizer steps per train_step command (the batch is split in this many parts, in order).
    minibatches: int = 1
    # Rows of the lm_head computed at once for logprobs (never tokens x vocab logits at once).
    logprob_chunk_tokens: int = 4096
    # packed attention kernel: auto | varlen | loop (see attention.py)
    attention: Literal["auto", "varlen", "loop"] = "auto"
    # torch.compile (fused.py): "layers" compiles each decoder layer's forward (fuses elementwise
    # work and removes Python overhead); "kernels" compiles only RMSNorm / SwiGLU / RoPE; both also
    # fuse the logprob softmax statistics. "auto": layers on CUDA, none on CPU.
    compile: Literal["auto", "layers", "kernels", "none"] = "auto"
    # Report per-stage times (time_forward_s, ...; GPU time from CUDA events, and cpu_* wall time).
    stage_timing: bool = False


@dataclass
class VisionConfig:
    # Local directory in the blob store's layout (<root>/sha256/<2 hex>/<hex>) that holds every
    # image a batch references. The trainer fills it (and copies from S3 first when the store is
    # remote); the engine only reads, and checks each image's SHA-256.
    blob_root: str = ""
    # Vision-encoder outputs kept per image within one train_step (the proximal/base passes and
    # the training pass see the same screenshots): frozen tower only.
    cache_images: bool = True


@dataclass
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfigIn = field(default_factory=LoraConfigIn)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineConfig":
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise bad_request(f"{where or 'config'} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(where + k for k in unknown)}",
                          f"known fields here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**kwargs)


def _coerce(tp, value, where):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(arg, value, where)
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc))
        raise bad_request(f"{where}: {value!r} is not a valid {_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad_request(f"{where} must be one of {list(typing.get_args(tp))}, not {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad_request(f"{where} must be a list")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad_request(f"{where} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"{where} must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad_request(f"{where} must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad_request(f"{where} must be a string, not {value!r}")
        return value
    return value


def _name(tp) -> str:
    return getattr(tp, "__name__", str(tp))
