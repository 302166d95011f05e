"""A tiny Qwen3-style causal LM and its tokenizer, built locally and deterministically.

Tests, the demo and the CPU policy server need a real Hugging Face model directory without a model
hub: ``make_tiny_model(out_dir, seed=0)`` writes one (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json with a ChatML chat template, so
``AutoTokenizer.from_pretrained(out_dir).apply_chat_template(...)`` works). The same seed gives the
same bytes, file for file.

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a small fixed corpus
kept in this file; the special tokens are Qwen's ChatML ones, so prompts look like a Qwen3 model's.
The model is ``Qwen3ForCausalLM`` with tiny dimensions and tied embeddings, randomly initialised
from the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# Qwen's ChatML special tokens, in Qwen's order. The first is also the pad token.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
]

# A ChatML template in the spirit of Qwen3's (system/user/assistant/tool turns, generation prompt,
# optional empty think block when enable_thinking is false), kept short so it is easy to read.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# The tokenizer's training corpus: a few lines of the kind of text the demo tasks use (arithmetic,
# short answers, UI actions), repeated in the trainer so the merges are deterministic.
_CORPUS = [
    "You are a helpful assistant. Answer with a single number.",
    "What is 12 plus 7? The answer is 19.",
    "What is 3 times 4? The answer is 12.",
    "Count the letters in the word banana. There are 6 letters.",
    "Reverse the string abc. The result is cba.",
    "click(x=120, y=340) type(text=\"hello world\") scroll(direction=down) done()",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Fill the form: name, email, password, submit. Press the button labelled OK.",
    "<think> I should add the numbers first, then check the result. </think>",
    "user assistant system tool observation reward action screenshot",
]

DEFAULT_DIMS = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=32768,
)
DEFAULT_VOCAB_SIZE = 512


def build_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, extra_special_tokens: tuple[str, ...] = (),
                    chat_template: str = CHAT_TEMPLATE):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Qwen's special tokens (plus
    ``extra_special_tokens`` after them, e.g. the vision tokens) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(extra_special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
        model_max_length=DEFAULT_DIMS["max_position_embeddings"],
    )


def tiny_config(vocab_size: int, **dims):
    """A ``Qwen3Config`` with tiny dimensions (``DEFAULT_DIMS`` overridden by ``dims``)."""
    from transformers import Qwen3Config

    d = {**DEFAULT_DIMS, **dims}
    return Qwen3Config(
        vocab_size=vocab_size,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **d,
    )


def make_tiny_model(out_dir: str | os.PathLike, seed: int = 0, **dims) -> Path:
    """Write a tiny Qwen3-style model and tokenizer to ``out_dir`` (created or replaced); return it.

    Deterministic: the same ``seed`` and ``dims`` give byte-identical files. The directory is built
    beside ``out_dir`` and renamed into place, so a crash never leaves half a model behind.
    """
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    # The embedding matrix gets a multiple of 64 rows, like real checkpoints pad theirs.
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    config = tiny_config(vocab_size, **dims)
    config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    cpu_rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(cpu_rng)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, config.pad_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
    )

    return write_model_dir(out, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))


def write_model_dir(out: Path, save) -> Path:
    """Runs ``save(tmp)`` on a directory beside ``out`` and renames it into place (JSON files with
    sorted keys), so a crash never leaves half a model behind and the bytes are deterministic."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        save(tmp)
        _normalize_json_files(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _normalize_json_files(directory: Path) -> None:
    """Rewrite JSON files with sorted keys so that the bytes do not depend on dict order."""
    for path in directory.glob("*.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def directory_digest(directory: str | os.PathLike) -> str:
    """SHA-256 over every file's name and bytes in ``directory`` (to check determinism)."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            h.update(path.relative_to(directory).as_posix().encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()
