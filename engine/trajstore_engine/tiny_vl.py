"""A tiny Qwen3-VL-style vision-language model and its processor, built locally and deterministically.

The seeds' workload is Qwen3-VL-32B-Instruct seeing a screenshot every turn. Tests, the vision demo
and the CPU policy server need a real Hugging Face Qwen3-VL directory without a model hub:
``make_tiny_vl_model(out_dir, seed=0)`` writes one that ``AutoProcessor`` and
``AutoModelForImageTextToText`` load with ``local_files_only=True``:

- ``config.json``: ``Qwen3VLConfig`` (model_type ``qwen3_vl``), the real model's structure at tiny
  sizes: a 2-layer Qwen3 text model with interleaved multimodal rotary embeddings (``mrope_section``
  over the three t/h/w rows), a 2-block vision tower with Qwen3-VL's 16-px patches, 2x2 spatial
  merge, temporal patch 2, and one DeepStack merger (visual features added after decoder layer 0);
- ``model.safetensors``: weights drawn from ``seed``;
- the tokenizer of ``tiny.py`` plus Qwen's vision special tokens (``<|vision_start|>``,
  ``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>``), with a chat template that renders an
  image part as ``<|vision_start|><|image_pad|><|vision_end|>`` like Qwen3-VL's;
- ``preprocessor_config.json`` / ``processor_config.json``: ``Qwen2VLImageProcessorFast`` (the class
  Qwen3-VL ships with, and the one vLLM runs) with the real patch/merge sizes and a small pixel
  budget (``DEFAULT_MAX_PIXELS``: at most 64 image tokens a screenshot), so a CPU can afford it.

The same seed gives the same bytes, file for file.
"""

from __future__ import annotations

import os
from pathlib import Path

from .tiny import DEFAULT_DIMS, build_tokenizer, write_model_dir

# Qwen2-VL/Qwen3-VL's vision tokens, in Qwen's order after the ChatML ones.
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen3-VL's own image geometry (preprocessor_config.json of Qwen/Qwen3-VL-*-Instruct).
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# Small pixel budget for a CPU: 32*32 px per image token, 4..64 tokens an image.
DEFAULT_MIN_PIXELS = 4 * (PATCH_SIZE * MERGE_SIZE) ** 2
DEFAULT_MAX_PIXELS = 64 * (PATCH_SIZE * MERGE_SIZE) ** 2
# Qwen3-VL's normalisation (mean = std = 0.5), not CLIP's.
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]

# A ChatML template that understands content lists (text and image parts), as Qwen3-VL's does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# The language model: the tiny text model's dimensions.
TEXT_DIMS = dict(DEFAULT_DIMS)
VISION_DIMS = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    num_position_embeddings=64,  # an 8x8 learned grid, interpolated to each image's patch grid
    deepstack_visual_indexes=[0],
)


def build_vl_tokenizer():
    """The tiny byte-level BPE with ChatML and Qwen's vision special tokens, and the VL template."""
    return build_tokenizer(extra_special_tokens=tuple(VISION_TOKENS), chat_template=CHAT_TEMPLATE)


def tiny_vl_config(tokenizer, vocab_size: int, **text_dims):
    """A ``Qwen3VLConfig`` with tiny dimensions and the real model's geometry and token ids."""
    from transformers import Qwen3VLConfig

    text = {**TEXT_DIMS, **text_dims}
    # mrope_section splits head_dim/2 rotary frequencies over the t, h, w rows (Qwen3-VL: 24/20/20
    # of 64, interleaved); here 4/2/2 of 8.
    half = text["head_dim"] // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    ids = tokenizer.convert_tokens_to_ids
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            rms_norm_eps=1e-6,
            initializer_range=0.02,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                             "mrope_section": section, "mrope_interleaved": True},
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            **text,
        ),
        vision_config=dict(
            patch_size=PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
            out_hidden_size=text["hidden_size"],
            initializer_range=0.02,
            **VISION_DIMS,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def build_processor(tokenizer, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS):
    """``Qwen3VLProcessor`` around Qwen3-VL's own image processor class, with a small pixel budget."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels * 4},
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
    )
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def make_tiny_vl_model(out_dir: str | os.PathLike, seed: int = 0, **text_dims) -> Path:
    """Write a tiny Qwen3-VL-style model, tokenizer and processor to ``out_dir``; return it.

    Deterministic (same ``seed`` and dims, same bytes); built beside ``out_dir`` and renamed into
    place, so a crash never leaves half a model behind.
    """
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_vl_tokenizer()
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    config = tiny_vl_config(tokenizer, vocab_size, **text_dims)
    eos = config.text_config.eos_token_id
    pad = config.text_config.pad_token_id

    cpu_rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(cpu_rng)
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad,
                                               do_sample=True, temperature=1.0)

    return write_model_dir(out, lambda tmp: (model.save_pretrained(tmp), build_processor(tokenizer).save_pretrained(tmp)))
