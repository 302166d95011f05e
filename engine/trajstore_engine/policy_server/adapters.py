"""LoRA adapters on one base model: PEFT multi-adapter, registered by name, resident by LRU.

vLLM keeps two sets: the adapters *registered* under a name (``/v1/models`` lists them; there is no
cap) and the ones *resident* in memory (``--max-loras``/``--max-cpu-loras``, LRU; an evicted
adapter is read again from its path when a request names it). This registry does the same with
PEFT: every resident adapter is a named PEFT adapter on the one base model, under an internal name
``<lora_name>#<n>`` so that a replacement (``load_inplace``) is loaded next to the old weights and
swapped in by name, never half-written.

Checks before anything touches the model (``prepare``), with vLLM's messages:
- no directory / no ``adapter_config.json`` -> 404 ``Loading lora X failed: No adapter found for P``
  (``LoRAAdapterNotFoundError``);
- an unreadable config, no weights file, a rank above ``--max-lora-rank``, DoRA, bias or
  ``modules_to_save`` -> 500 with vLLM's message (current vLLM answers 500 InternalServerError for
  every load failure except not-found; older releases answered 400).

Model-mutating calls (``install``, ``remove``, ``activate``) run on the policy server's single worker
thread, between batches; ``prepare`` only reads files and may run anywhere.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from .protocol import APIError, internal_error

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_not_found(name: str, path: str) -> APIError:
    # vllm.exceptions.LoRAAdapterNotFoundError -> 404 NotFoundError
    return APIError(f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError",
                    HTTPStatus.NOT_FOUND)


@dataclass
class PreparedAdapter:
    name: str
    path: str  # as the client sent it (vLLM reports this as the card's ``root``)
    directory: Path
    rank: int


@dataclass
class _Registered:
    name: str
    path: str
    directory: Path
    internal: str | None = None  # PEFT adapter name while resident


class AdapterRegistry:
    def __init__(self, base_model: Any, *, max_loras: int, max_lora_rank: int) -> None:
        self.base = base_model
        self.peft: Any = None  # peft.PeftModel once the first adapter is installed
        self.max_loras = max(1, max_loras)
        self.max_lora_rank = max_lora_rank
        self._registered: "OrderedDict[str, _Registered]" = OrderedDict()
        self._resident: "OrderedDict[str, str]" = OrderedDict()  # internal -> public name, LRU order
        self._counter = 0
        self._names_lock = threading.Lock()  # /v1/models reads the names while the worker changes them

    # ------------------------------------------------------------ reading (any thread)

    def names(self) -> list[tuple[str, str]]:
        """(name, path) of every registered adapter, in load order."""
        with self._names_lock:
            return [(r.name, r.path) for r in self._registered.values()]

    def has(self, name: str) -> bool:
        with self._names_lock:
            return name in self._registered

    def prepare(self, name: str, path: str) -> PreparedAdapter:
        """Check an adapter directory the way vLLM's loader does, without touching the model."""
        directory = Path(os.path.expanduser(path))
        config_file = directory / "adapter_config.json"
        if not directory.is_dir() or not config_file.is_file():
            raise adapter_not_found(name, path)
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise internal_error(f"Loading lora {name} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(config, dict):
            raise internal_error(f"Loading lora {name} failed: adapter_config.json is not a JSON object")
        if not any((directory / f).is_file() for f in WEIGHT_FILES):
            raise internal_error(f"{directory} doesn't contain tensors")
        rank = int(config.get("r", 8))
        if rank > self.max_lora_rank:
            raise internal_error(f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.")
        if config.get("use_dora"):
            raise internal_error("vLLM does not yet support DoRA.")
        if config.get("bias", "none") not in ("none", None):
            raise internal_error("Adapter bias cannot be used without bias_enabled.")
        if config.get("modules_to_save"):
            raise internal_error("vLLM only supports modules_to_save being None.")
        return PreparedAdapter(name=name, path=path, directory=directory, rank=rank)

    # ------------------------------------------------------------ mutating (worker thread only)

    def install(self, prepared: PreparedAdapter) -> None:
        """Register ``prepared`` (replacing an adapter of the same name) and load it now."""
        old = self._registered.get(prepared.name)
        internal = self._load(prepared.directory, prepared.name)
        if old is not None and old.internal is not None:
            self._drop(old.internal)
        entry = _Registered(prepared.name, prepared.path, prepared.directory, internal)
        with self._names_lock:
            self._registered[prepared.name] = entry  # a replacement keeps its place in /v1/models
        self._evict_beyond_capacity(keep=internal)

    def remove(self, name: str) -> None:
        with self._names_lock:
            entry = self._registered.pop(name)
        if entry.internal is not None:
            self._drop(entry.internal)

    def activate(self, name: str | None) -> Any:
        """Make ``name`` (None: the base model) the weights of the next forward; return the model.

        For the base model while adapters are resident, the caller must run inside
        ``base_context()`` so PEFT's layers pass through.
        """
        if name is None:
            return self.peft if self.peft is not None else self.base
        entry = self._registered.get(name)
        if entry is None:
            raise KeyError(name)
        if entry.internal is None:  # evicted: read it again, as vLLM does
            entry.internal = self._load(entry.directory, entry.name)
            self._evict_beyond_capacity(keep=entry.internal)
        self._resident.move_to_end(entry.internal)
        self.peft.set_adapter(entry.internal)
        return self.peft

    def base_context(self):
        import contextlib

        if self.peft is None:
            return contextlib.nullcontext()
        return self.peft.disable_adapter()

    # ------------------------------------------------------------ internals

    def _load(self, directory: Path, name: str) -> str:
        self._counter += 1
        internal = f"{name}#{self._counter}"
        try:
            if self.peft is None:
                from peft import PeftModel

                self.peft = PeftModel.from_pretrained(self.base, directory, adapter_name=internal,
                                                      is_trainable=False)
            else:
                self.peft.load_adapter(directory, adapter_name=internal, is_trainable=False)
        except Exception as exc:  # noqa: BLE001 - vLLM answers 500 with the loader's message
            raise internal_error(f"Loading lora {name} failed: {type(exc).__name__}: {exc}") from exc
        self.peft.eval()
        self.peft.requires_grad_(False)
        self._resident[internal] = name
        return internal

    def _drop(self, internal: str) -> None:
        self._resident.pop(internal, None)
        for entry in self._registered.values():
            if entry.internal == internal:
                entry.internal = None
        if not self._resident:
            # The last adapter: take PEFT's layers out again, so base requests run the plain model.
            self.base = self.peft.unload()
            self.peft = None
            return
        if internal in getattr(self.peft, "active_adapters", []) or getattr(self.peft, "active_adapter", None) == internal:
            self.peft.set_adapter(next(reversed(self._resident)))
        self.peft.delete_adapter(internal)

    def _evict_beyond_capacity(self, keep: str) -> None:
        while len(self._resident) > self.max_loras:
            victim = next(i for i in self._resident if i != keep)
            self._drop(victim)
