"""Typed errors of the engine. Each one crosses the protocol as ``{code, message, hint, retriable}``.

``code`` is stable (``TRAJ_E_ENGINE_*``, listed in PROTOCOL.md) so users and the TypeScript client
can branch on it; ``hint`` says what to do next; ``retriable`` says whether sending the same
command again, unchanged, can succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EngineError(Exception):
    code: str
    message: str
    hint: str = ""
    retriable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" ({self.hint})" if self.hint else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "retriable": self.retriable,
        }
        if self.details:
            out["details"] = self.details
        return out


# The codes, one place. PROTOCOL.md lists the same table.
BAD_REQUEST = "TRAJ_E_ENGINE_BAD_REQUEST"
NOT_INITIALIZED = "TRAJ_E_ENGINE_NOT_INITIALIZED"
MODEL_LOAD = "TRAJ_E_ENGINE_MODEL_LOAD"
BATCH_INVALID = "TRAJ_E_ENGINE_BATCH_INVALID"
OUT_OF_MEMORY = "TRAJ_E_ENGINE_OOM"
NON_FINITE = "TRAJ_E_ENGINE_NON_FINITE"
CHECKPOINT = "TRAJ_E_ENGINE_CHECKPOINT"
UNSUPPORTED = "TRAJ_E_ENGINE_UNSUPPORTED"
# A sequence's image placeholder tokens do not match what its images produce, or an image it
# references is missing, corrupt or was processed with other settings: never trained silently.
IMAGE_TOKENS = "TRAJ_E_ENGINE_IMAGE_TOKENS"
IMAGE_MISSING = "TRAJ_E_ENGINE_IMAGE_MISSING"
INTERNAL = "TRAJ_E_ENGINE_INTERNAL"


def bad_request(message: str, hint: str = "see engine/PROTOCOL.md for the command's fields") -> EngineError:
    return EngineError(BAD_REQUEST, message, hint)


def batch_invalid(message: str, hint: str = "") -> EngineError:
    return EngineError(
        BATCH_INVALID,
        message,
        hint or "see engine/PROTOCOL.md, 'Batch files', for the tensors a batch must hold",
    )


def out_of_memory(message: str, *, micro_batch_tokens: int, gradient_checkpointing: bool,
                  max_seq_len: int, peak_gib: float | None) -> EngineError:
    """CUDA ran out of memory. The hint names the knobs, in the order that costs least speed."""
    knobs = [f"lower training.micro_batch_tokens (now {micro_batch_tokens}; try {max(micro_batch_tokens // 2, 1)})"]
    if not gradient_checkpointing:
        knobs.append("enable training.gradient_checkpointing (trades ~30% speed for most activation memory)")
    knobs.append(f"lower model.max_seq_length (the longest sequence in this batch has {max_seq_len} tokens)")
    knobs.append("lower lora.r, or spread the model over more GPUs (FSDP: torchrun --nproc-per-node N)")
    return EngineError(
        OUT_OF_MEMORY,
        f"CUDA out of memory during the step: {message.splitlines()[0][:300]}",
        "; or ".join(knobs) + ". The step was not applied; the engine is still usable.",
        retriable=False,
        details={"peak_gib": peak_gib, "micro_batch_tokens": micro_batch_tokens,
                 "gradient_checkpointing": gradient_checkpointing, "max_seq_len": max_seq_len},
    )


def not_initialized(command: str) -> EngineError:
    return EngineError(NOT_INITIALIZED, f"'{command}' needs a model: send 'init' first",
                       "send {\"cmd\": \"init\", ...} once after starting the engine")


def internal(exc: BaseException) -> EngineError:
    return EngineError(
        INTERNAL,
        f"{type(exc).__name__}: {exc}",
        "this is a bug in the engine; the traceback is on the engine's stderr. Restart the engine and "
        "'load' the last checkpoint to go on",
        retriable=False,
    )
