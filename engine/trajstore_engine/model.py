"""Loading a causal LM or a vision-language model (and its tokenizer or processor) from a local
Hugging Face directory, and adding LoRA.

This is the engine's stable library API for other parts of trajstore (the CPU policy server builds
on it). Nothing here touches the network: directories are read with ``local_files_only=True``.

    from trajstore_engine import load_policy, make_tiny_model

    model_dir = make_tiny_model("/tmp/tiny", seed=0)            # Qwen3-style, deterministic
    policy = load_policy(model_dir, device="cpu")               # base model + tokenizer, eval mode
    policy = load_policy(model_dir, adapter_dir="ckpt/adapter") # with a PEFT LoRA adapter on top
    ids = policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    out = policy.model.generate(torch.tensor([ids]), max_new_tokens=16)

- ``load_tokenizer(model_dir)`` -> ``PreTrainedTokenizerBase``
- ``load_base_model(model_dir, device="cpu", dtype=None, attn_implementation="sdpa")``
  -> ``PreTrainedModel`` in eval mode, parameters frozen. ``dtype=None`` means float32 on CPU and
  bfloat16 on CUDA. Any ``AutoModelForCausalLM`` architecture works; Qwen3 is the one tested. A
  directory whose config has a ``vision_config`` (Qwen3-VL: registered only for image-text-to-text)
  loads with ``AutoModelForImageTextToText`` instead.
- ``load_processor(model_dir)`` -> the model's own ``AutoProcessor`` (tokenizer + image processor),
  for vision-language models.
- ``is_vision_language(config)`` -> whether a model config has a vision tower.
- ``load_policy(model_dir, device="cpu", dtype=None, adapter_dir=None, attn_implementation="sdpa")``
  -> ``LoadedPolicy(model, tokenizer, device, dtype, adapter_dir)``; with ``adapter_dir`` the model
  is a ``peft.PeftModel`` (adapter active, not merged).
- ``apply_lora(model, LoraSettings(...))`` -> ``peft.PeftModel`` with a fresh trainable adapter.

Errors are ``EngineError`` with code ``TRAJ_E_ENGINE_MODEL_LOAD`` and a hint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import attention
from .errors import MODEL_LOAD, EngineError


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(MODEL_LOAD, f"device {device!r} asked for, but this machine has no CUDA GPU",
                          "use device 'cpu' (or 'auto')")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float64": torch.float64}
    if dtype not in names:
        raise EngineError(MODEL_LOAD, f"unknown dtype {dtype!r}", f"use one of {sorted(names)}")
    return names[dtype]


def _check_model_dir(model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise EngineError(
            MODEL_LOAD,
            f"{path} is not a Hugging Face model directory (no config.json)",
            "point model.path at a local directory holding config.json and *.safetensors; "
            "for tests: python -m trajstore_engine make-tiny-model DIR",
        )
    return path


def load_tokenizer(model_dir: str | os.PathLike):
    from transformers import AutoTokenizer

    return _load_auto(AutoTokenizer, model_dir, "tokenizer",
                      "the directory needs tokenizer.json / tokenizer_config.json")


def _load_auto(auto, model_dir: str | os.PathLike, what: str, hint: str):
    """``auto.from_pretrained`` on a local directory; a failure becomes a typed error."""
    path = _check_model_dir(model_dir)
    try:
        return auto.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - becomes a typed error
        raise EngineError(MODEL_LOAD, f"cannot load the {what} in {path}: {type(exc).__name__}: {exc}", hint) from exc


def is_vision_language(config) -> bool:
    """Whether ``config`` (a transformers config) describes a model with a vision tower."""
    return getattr(config, "vision_config", None) is not None


def text_config(config):
    """The language model's config: ``text_config`` of a vision-language model, else ``config``."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _auto_class(path: Path):
    """(AutoModelForImageTextToText for a vision-language directory, else AutoModelForCausalLM; its config)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - becomes a typed error
        raise EngineError(MODEL_LOAD, f"cannot read {path / 'config.json'}: {type(exc).__name__}: {exc}",
                          "check config.json's model_type against the installed transformers") from exc
    return (AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM), config


def attention_for(config, attn_implementation: str):
    """The attention implementation to load ``config`` with. The engine's packed attention is for
    the language model only: a vision tower attends bidirectionally within each image (its own
    cu_seqlens), so it keeps SDPA; the packed implementation's fallback is causal."""
    if is_vision_language(config) and attn_implementation == attention.PACKED_ATTENTION:
        return {"": attn_implementation, "text_config": attn_implementation, "vision_config": "sdpa"}
    return attn_implementation


def load_processor(model_dir: str | os.PathLike):
    """The model directory's own processor (tokenizer, image processor, chat template)."""
    from transformers import AutoProcessor

    return _load_auto(AutoProcessor, model_dir, "processor",
                      "a vision-language directory needs preprocessor_config.json (or "
                      "processor_config.json) beside the tokenizer files")


def load_base_model(model_dir: str | os.PathLike, device: str | torch.device | None = "cpu",
                    dtype: str | torch.dtype | None = None, attn_implementation: str = "sdpa"):
    """A frozen causal LM (or vision-language model) in eval mode, loaded straight onto ``device``."""
    path = _check_model_dir(model_dir)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    auto, config = _auto_class(path)
    if attn_implementation == attention.PACKED_ATTENTION:
        attention.register()
    try:
        model = auto.from_pretrained(
            path, dtype=dt, attn_implementation=attention_for(config, attn_implementation), local_files_only=True,
            device_map={"": dev},
        )
    except Exception as exc:  # noqa: BLE001
        raise EngineError(MODEL_LOAD, f"cannot load the model in {path}: {type(exc).__name__}: {exc}",
                          "check that the directory holds a causal LM or vision-language model "
                          "transformers can load (config.json model_type, *.safetensors)") from exc
    model.eval()
    model.requires_grad_(False)
    return model


def model_from_config(config, device: str | torch.device | None, dtype: str | torch.dtype | None,
                      seed: int = 0, attn_implementation: str = attention.PACKED_ATTENTION):
    """A randomly initialised causal LM or vision-language model built from a config (benchmarks;
    no weights needed)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if attn_implementation == attention.PACKED_ATTENTION:
        attention.register()
    torch.manual_seed(seed)
    with dev:
        model = auto.from_config(config, dtype=dt, attn_implementation=attention_for(config, attn_implementation))
    model.eval()
    model.requires_grad_(False)
    return model


@dataclass
class LoadedPolicy:
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    adapter_dir: Path | None = None
    processor: Any = None  # AutoProcessor for a vision-language model, else None


def load_policy(model_dir: str | os.PathLike, device: str | torch.device | None = "cpu",
                dtype: str | torch.dtype | None = None, adapter_dir: str | os.PathLike | None = None,
                attn_implementation: str = "sdpa") -> LoadedPolicy:
    """Base model + tokenizer (+ processor for a vision-language model, + a PEFT LoRA adapter),
    ready for ``generate`` or scoring."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(model_dir)
    model = load_base_model(model_dir, dev, dt, attn_implementation)
    processor = load_processor(model_dir) if is_vision_language(model.config) else None
    adapter = None
    if adapter_dir is not None:
        from peft import PeftModel

        adapter = Path(adapter_dir)
        if not (adapter / "adapter_config.json").is_file():
            raise EngineError(MODEL_LOAD, f"{adapter} is not a PEFT adapter directory (no adapter_config.json)",
                              "pass a directory written by the engine's 'save' (its adapter/ folder)")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        model.eval()
    return LoadedPolicy(model=model, tokenizer=tokenizer, device=dev, dtype=dt, adapter_dir=adapter,
                        processor=processor)


@dataclass
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    init_seed: int = 0


def apply_lora(model, settings: LoraSettings):
    """Wrap ``model`` in a PeftModel with one fresh adapter ("default"); only LoRA weights train.

    LoRA weights are float32 (master weights); on GPU the forward runs under bf16 autocast, so they
    are cast per matmul and the activations stay bf16. PEFT's own cast of the *input* to the
    adapter's dtype is switched off for that reason: it would copy every activation to float32.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(settings.init_seed)
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    finally:
        torch.random.set_rng_state(rng)
    # float32 master weights under a low-precision base; a float64 base (exact comparisons in
    # tests) keeps float64 adapters, since float32 ones could not multiply its activations.
    base_dtype = next(model.parameters()).dtype
    master = torch.float64 if base_dtype == torch.float64 else torch.float32
    n_lora = 0
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(master)
            param.requires_grad_(True)
            n_lora += 1
        else:
            param.requires_grad_(False)
    if n_lora == 0:
        raise EngineError(MODEL_LOAD, f"no module matched lora.target_modules={settings.target_modules}",
                          "name the model's linear layers, e.g. q_proj, k_proj, v_proj, o_proj")
    if base_dtype not in (torch.float32, torch.float64):
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in peft_model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    return peft_model
