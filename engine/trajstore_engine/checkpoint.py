"""Checkpoints: a PEFT adapter plus everything needed to resume exactly, written atomically.

    CKPT/
      adapter/adapter_config.json          PEFT format: PeftModel.from_pretrained and vLLM load it
      adapter/adapter_model.safetensors    LoRA weights (float32 master weights; float64 for a float64 model)
      optimizer.pt                         AdamW state (whole, gathered from all ranks)
      rng.pt                               torch RNG states (CPU and CUDA) of every rank
      trainer_state.json                   step, policy version, caller's metadata, engine config
      MANIFEST.json                        written last: sha256 and size of every other file

Atomicity: everything is written into a hidden temporary directory beside CKPT, each file is
fsynced, MANIFEST.json goes in last, the directory is fsynced and then renamed to CKPT (and the
parent fsynced). A crash leaves at most a ``.CKPT.tmp-*`` directory that nothing reads; a directory
without a MANIFEST.json, or whose files do not match it, is refused by ``load``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CHECKPOINT, EngineError

if TYPE_CHECKING:
    from .trainer import Engine

FORMAT = "trajstore-checkpoint"
VERSION = 1
MANIFEST = "MANIFEST.json"


def save(engine: "Engine", path: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    final = Path(path).resolve()
    rank0 = engine.dist.rank == 0
    if final.exists() and not overwrite:
        raise EngineError(CHECKPOINT, f"checkpoint {final} already exists",
                          "checkpoints are immutable: save to a new path (e.g. one per step), or pass overwrite: true")
    # Collective parts first: every rank takes part in gathering.
    adapter_sd = _full_adapter_state(engine)
    optim_sd = _full_optimizer_state(engine)
    rng = _all_rng_states(engine)
    result: dict[str, Any] = {"path": str(final), "step": engine.step}
    if rank0:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            (tmp / "adapter").mkdir(parents=True)
            _write_adapter(engine, tmp / "adapter", adapter_sd)
            torch.save(optim_sd, tmp / "optimizer.pt")
            torch.save(rng, tmp / "rng.pt")
            state = {
                "format": FORMAT,
                "version": VERSION,
                "step": engine.step,
                "policy_version": engine.policy_version,
                "metadata": engine.metadata,
                "world_size": engine.dist.world_size,
                "config": engine.cfg.to_dict(),
                "torch": torch.__version__,
                "saved_at": time.time(),
            }
            _write_text(tmp / "trainer_state.json", json.dumps(state, indent=2, sort_keys=True))
            files = {}
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                _fsync_file(f)
                files[f.relative_to(tmp).as_posix()] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
            manifest = {"format": FORMAT, "version": VERSION, "step": engine.step, "files": files}
            _write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            _fsync_file(tmp / MANIFEST)
            _fsync_dir(tmp / "adapter")
            _fsync_dir(tmp)
            old = None
            if final.exists():
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        result["files"] = sorted(files)
        result["bytes"] = sum(f["bytes"] for f in files.values())
        result["adapter_path"] = str(final / "adapter")
    engine.dist.barrier()
    result["save_time_s"] = time.perf_counter() - t0
    return result


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check MANIFEST.json and every file's checksum; return trainer_state.json's content."""
    root = Path(path)
    if not root.is_dir():
        raise EngineError(CHECKPOINT, f"checkpoint {root} does not exist", "pass the path 'save' replied with")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise EngineError(CHECKPOINT, f"{root} has no {MANIFEST}: the save that wrote it did not finish",
                          "load an earlier checkpoint; this directory is incomplete and can be deleted")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise EngineError(CHECKPOINT, f"{mpath} is unreadable: {exc}", "load an earlier checkpoint") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise EngineError(CHECKPOINT, f"{root} is not a {FORMAT} v{VERSION} checkpoint",
                          "it was written by another tool or engine version")
    for rel, info in files.items():
        f = root / rel
        if not f.is_file() or f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            raise EngineError(CHECKPOINT, f"{root}: {rel} is missing or does not match its checksum",
                              "the checkpoint is corrupted; load an earlier one")
    return json.loads((root / "trainer_state.json").read_text())


def load(engine: "Engine", path: str | os.PathLike) -> dict[str, Any]:
    t0 = time.perf_counter()
    root = Path(path).resolve()
    state = verify(root) if engine.dist.rank == 0 else None
    state = engine.dist.broadcast_object(state)
    _check_compatible(engine, root, state)

    from safetensors.torch import load_file

    saved = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    names = _peft_key_to_param_name(engine)
    missing = sorted(set(names) - set(saved))
    if missing:
        raise EngineError(CHECKPOINT, f"{root}: adapter lacks {len(missing)} tensor(s), e.g. {missing[0]}",
                          "the adapter was trained with other lora.target_modules")
    full = {names[k]: saved[k] for k in names}
    optim_sd = torch.load(root / "optimizer.pt", map_location="cpu", weights_only=True)
    _load_full_state(engine, full, optim_sd)
    rng = torch.load(root / "rng.pt", map_location="cpu", weights_only=False)
    if rng.get("world_size") == engine.dist.world_size:
        mine = rng["ranks"][engine.dist.rank]
        torch.set_rng_state(mine["cpu"])
        if mine.get("cuda") is not None and engine.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], engine.device)
    engine.step = int(state["step"])
    engine.policy_version = state.get("policy_version")
    engine.metadata = state.get("metadata") or {}
    engine.dist.barrier()
    return {"path": str(root), "step": engine.step, "policy_version": engine.policy_version,
            "metadata": engine.metadata, "load_time_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------


def _check_compatible(engine: "Engine", root: Path, state: dict[str, Any]) -> None:
    saved = state["config"]["lora"]
    now = engine.cfg.to_dict()["lora"]
    for key in ("r", "alpha", "target_modules"):
        if saved[key] != now[key]:
            raise EngineError(CHECKPOINT, f"{root} was trained with lora.{key} = {saved[key]}, the engine "
                              f"has {now[key]}", "init the engine with the checkpoint's lora settings")


def _trainable_named(engine: "Engine"):
    return [(n, p) for n, p in engine.model.named_parameters() if p.requires_grad]


def _full_adapter_state(engine: "Engine") -> dict[str, torch.Tensor]:
    """{parameter name: whole tensor on CPU} for the trainable (LoRA) parameters; every rank calls."""
    out = {}
    for name, p in _trainable_named(engine):
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out[name] = t.to(torch.promote_types(t.dtype, torch.float32)).cpu().clone()  # master precision
    return out


def _peft_key_to_param_name(engine: "Engine") -> dict[str, str]:
    """PEFT's saved key (adapter name removed) -> our parameter name, using PEFT's own mapping."""
    from peft.utils import get_peft_model_state_dict

    probes = {name: torch.empty(0) for name, _ in _trainable_named(engine)}
    by_id = {id(t): name for name, t in probes.items()}
    mapped = get_peft_model_state_dict(engine.model, state_dict=probes)
    return {key: by_id[id(t)] for key, t in mapped.items() if id(t) in by_id}


def _write_adapter(engine: "Engine", directory: Path, adapter_sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    names = _peft_key_to_param_name(engine)
    tensors = {key: adapter_sd[name].contiguous() for key, name in names.items()}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = engine.model.peft_config["default"]
    if not config.base_model_name_or_path:
        config.base_model_name_or_path = engine.cfg.model.path or None
    write_adapter_config(config, directory)


def write_adapter_config(config: Any, directory: Path) -> None:
    """PEFT's adapter_config.json with its lists in a fixed order.

    PEFT keeps target_modules as a set and writes it in the set's iteration order, which depends
    on the process's string hash seed: two byte-identical adapters would get different config
    files, and different checksums in the adapter store. Lists that came from sets are sorted
    (their order means nothing); the file is rewritten as PEFT formats it.
    """
    config.save_pretrained(str(directory))
    path = directory / "adapter_config.json"
    data = json.loads(path.read_text())
    for key in ("target_modules", "modules_to_save", "exclude_modules"):
        if isinstance(data.get(key), list) and isinstance(getattr(config, key, None), (set, frozenset)):
            data[key] = sorted(data[key])
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _full_optimizer_state(engine: "Engine") -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(engine.model, engine.optimizer, options=opts)


def _load_full_state(engine: "Engine", model_sd: dict[str, torch.Tensor], optim_sd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=False,
                            broadcast_from_rank0=engine.dist.enabled)
    if engine.dist.enabled and engine.dist.rank != 0:
        model_sd, optim_sd = {}, {}
    with torch.no_grad():
        result = set_model_state_dict(engine.model, model_sd, options=opts)
    if engine.dist.rank == 0 and result.unexpected_keys:
        raise EngineError(CHECKPOINT, f"adapter tensors the model does not have: {result.unexpected_keys[:3]}")
    set_optimizer_state_dict(engine.model, engine.optimizer, optim_state_dict=optim_sd, options=opts)


def _all_rng_states(engine: "Engine") -> dict[str, Any]:
    mine = {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(engine.device) if engine.device.type == "cuda" else None}
    ranks = [mine]
    if engine.dist.enabled:
        import torch.distributed as dist

        ranks = [None] * engine.dist.world_size
        dist.all_gather_object(ranks, mine)
    return {"world_size": engine.dist.world_size, "ranks": ranks}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text + "\n")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
