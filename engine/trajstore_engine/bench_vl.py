"""``python -m trajstore_engine bench --vl 8b|32b``: the engine's step on Qwen3-VL against a naive loop.

Models: the shapes of Qwen3-VL-2B/8B/32B-Instruct's published ``config.json`` (text model and
vision tower), random weights from the config (nothing downloaded), bf16, LoRA r=16 on the
language model's q/k/v/o. Images: random 1280x720 PNG screenshots written to a blob directory,
processed by Qwen3-VL's own image processor class at its real settings (16-px patches, 2x2 merge,
min 65,536 / max 16,777,216 pixels): 880 image tokens each, plus vision start/end.

Episodes (one merged multi-turn sequence each, as the trainer builds them): ``--images`` turns,
each a screenshot then ``--text`` text tokens, of which the last 80 % are the completion (trained).

  8b  (default) a group of ``--group`` episodes of 5 screenshots and 300 text tokens a turn
      (5,910 tokens an episode, 20 % trained)
  32b one episode of 15 screenshots and 200 text tokens a turn (16,230 tokens), gradient
      checkpointing on

In one run it times

  naive    one episode at a time: image processor, Hugging Face + PEFT forward with pixel values
           (vision tower included), full-vocabulary float32 logits -> log_softmax -> PPO loss ->
           backward, gradient checkpointing on; one optimizer step at the end
  engine   the engine's ``train_step`` on the batch file (blobs read and processed inside the step,
           vision tower once per image, packed rows, chunked logprobs), default settings

and prints a line ``RESULT {json}``: tokens/s, peak GiB and MFU of both, and the speed-up.

Model FLOPs per step: the language model as in ``bench.py`` (frozen linear layers forward +
input-gradient = 4 x params per token, causal attention, lm_head on trained tokens) plus the vision
tower's forward only (frozen, nothing before it needs a gradient): 2 x linear params per patch and
bidirectional attention within each image.
"""

from __future__ import annotations

import io
import json
import os
import time
import types

import torch

from .bench import _no_nan, environment, matmul_tflops, naive_ppo_loss, say, timed, write_with_engine_behavior

# Special token ids of Qwen3-VL's tokenizer (config.json image_token_id etc.).
VL_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653)
_TEXT_BASE = dict(vocab_size=151936, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                   "mrope_section": [24, 20, 20], "mrope_interleaved": True})
_VISION_BASE = dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_heads=16,
                    num_position_embeddings=2304, hidden_act="gelu_pytorch_tanh")
SHAPES = {
    "2b": (dict(_TEXT_BASE, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=8),
           dict(_VISION_BASE, depth=24, hidden_size=1024, intermediate_size=4096, out_hidden_size=2048,
                deepstack_visual_indexes=[5, 11, 17]), True),
    "8b": (dict(_TEXT_BASE, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8),
           dict(_VISION_BASE, depth=27, hidden_size=1152, intermediate_size=4304, out_hidden_size=4096,
                deepstack_visual_indexes=[8, 16, 24]), False),
    "32b": (dict(_TEXT_BASE, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                 num_key_value_heads=8),
            dict(_VISION_BASE, depth=27, hidden_size=1152, intermediate_size=4304, out_hidden_size=5120,
                 deepstack_visual_indexes=[8, 16, 24]), False),
    "tiny": (dict(_TEXT_BASE, vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [4, 2, 2],
                                   "mrope_interleaved": True}),
             dict(_VISION_BASE, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  deepstack_visual_indexes=[0]), True),
}
# Qwen3-VL's preprocessor_config.json.
REAL_PROCESSOR = dict(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=65536, max_pixels=16777216)
PRESETS = {"8b": dict(group=8, images=5, text=300, ckpt="auto"),
           "2b": dict(group=8, images=5, text=300, ckpt="auto"),
           "32b": dict(group=1, images=15, text=200, ckpt=True),
           "tiny": dict(group=2, images=2, text=40, ckpt="auto")}


def vl_config(name: str):
    from transformers import Qwen3VLConfig

    text, vision, tie = SHAPES[name]
    return Qwen3VLConfig(text_config=dict(text, bos_token_id=None, pad_token_id=151643),
                         vision_config=vision, tie_word_embeddings=tie, **VL_TOKENS)


def image_processor(settings: dict):
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(patch_size=settings["patch_size"], merge_size=settings["merge_size"],
                                 temporal_patch_size=settings["temporal_patch_size"],
                                 size={"shortest_edge": settings["min_pixels"], "longest_edge": settings["max_pixels"]},
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)


def screenshot(seed: int, width: int = 1280, height: int = 720) -> bytes:
    """A random 1280x720 'screenshot' (PNG): blocks of colour, so it compresses like a UI, not noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    blocks = rng.randint(0, 255, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    img = np.kron(blocks, np.ones((40, 40, 1), dtype=np.uint8))[:height, :width]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def put_blob(root: str, data: bytes) -> str:
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    path = os.path.join(root, "sha256", sha[:2], sha)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return sha


def make_episodes(n_episodes: int, n_images: int, text: int, image_tokens: int, vocab: int, blob_root: str,
                  seed: int):
    """A batch of merged multi-turn episodes with their screenshots in ``blob_root``."""
    from .batch import Batch

    g = torch.Generator().manual_seed(seed)
    completion = int(text * 0.8)
    ids, mask, cu, images = [], [], [0], []
    for e in range(n_episodes):
        shas = []
        for t in range(n_images):
            shas.append(put_blob(blob_root, screenshot(seed * 10_000 + e * 100 + t)))
            prompt = torch.randint(0, 150_000 if vocab > 150_000 else vocab - 16, (text - completion,), generator=g)
            answer = torch.randint(0, 150_000 if vocab > 150_000 else vocab - 16, (completion,), generator=g)
            vision = torch.tensor([VL_TOKENS["vision_start_token_id"]] + [VL_TOKENS["image_token_id"]] * image_tokens
                                  + [VL_TOKENS["vision_end_token_id"]])
            ids += [vision, prompt, answer]
            mask += [torch.zeros(len(vision) + len(prompt), dtype=torch.bool), torch.ones(completion, dtype=torch.bool)]
        images.append(shas)
        cu.append(cu[-1] + n_images * (image_tokens + 2 + text))
    ids_t, mask_t = torch.cat(ids), torch.cat(mask)
    T = ids_t.numel()
    lens = torch.tensor(cu[1:]) - torch.tensor(cu[:-1])
    adv = torch.repeat_interleave(torch.randn(n_episodes, generator=g), lens)
    settings = {"processor": "Qwen2VLImageProcessorFast", "processor_version": "bench", **REAL_PROCESSOR}
    return Batch(ids_t, torch.tensor(cu), mask_t, adv, torch.full((T,), -1.0), torch.zeros(T, dtype=torch.long),
                 images=images, image_processing=[settings] * n_episodes)


def text_flops(text: dict, seq_lens: list[int], trained: int) -> float:
    from .bench import model_flops_per_step

    return model_flops_per_step(text, seq_lens, trained)


def vision_flops(vision: dict, patches_per_image: list[int]) -> float:
    """Forward only: linear layers (qkv, proj, MLP; the mergers) and bidirectional attention."""
    h, inter, depth = vision["hidden_size"], vision["intermediate_size"], vision["depth"]
    merge = vision["spatial_merge_size"] ** 2
    per_patch = depth * (4 * h * h + 2 * h * inter)
    mergers = (1 + len(vision["deepstack_visual_indexes"])) * (h * merge * h * merge + h * merge * vision["out_hidden_size"]) / merge
    f = 0.0
    for n in patches_per_image:
        f += 2 * n * (per_patch + mergers) + depth * 4 * n * n * h
    return f


def naive_vl_step(engine, batch, processor, device) -> None:
    """One episode at a time through HF + PEFT with pixel values; full fp32 logits; checkpointing."""
    from PIL import Image

    model = engine.model
    model.train()
    engine._set_checkpointing(True)
    cfg = engine.cfg.loss
    n_trained = int(batch.loss_mask.sum())
    cu = batch.cu_seqlens.tolist()
    blobs = engine.vision.blobs
    for i in range(batch.num_sequences):
        s, e = cu[i], cu[i + 1]
        pil = [Image.open(io.BytesIO(blobs.read(sha))).convert("RGB") for sha in batch.images[i]]
        settings = batch.image_processing[i]
        enc = processor(images=pil, min_pixels=settings["min_pixels"], max_pixels=settings["max_pixels"],
                        return_tensors="pt")
        ids = batch.input_ids[s:e].to(device)[None]
        mm = (ids == VL_TOKENS["image_token_id"]).int()
        engine.causal_lm.model.rope_deltas = None
        with engine._autocast():
            logits = model(input_ids=ids, mm_token_type_ids=mm, pixel_values=enc["pixel_values"].to(device),
                           image_grid_thw=enc["image_grid_thw"].to(device), use_cache=False).logits[0]
        naive_ppo_loss(logits, ids, batch, s, e, cfg, n_trained, device).backward()
        del logits
    engine.optimizer_step()
    engine._set_checkpointing(False)


def run_bench_vl(args) -> int:
    from .config import EngineConfig
    from .distributed import DistContext
    from .model import model_from_config
    from .trainer import Engine

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.vl if device.type == "cuda" and not args.quick else "tiny"
    preset = dict(PRESETS[name])
    if args.vl_episodes:
        preset["group"] = args.vl_episodes
    text, vision, _ = SHAPES[name]
    result: dict = {"model": f"qwen3-vl-{name}-shape", "episodes": preset["group"],
                    "images_per_episode": preset["images"], "text_tokens_per_turn": preset["text"]}
    result["env"] = environment()
    say("== environment:", json.dumps(result["env"]))
    peak = matmul_tflops() if device.type == "cuda" else float("nan")
    result["matmul_bf16_tflops"] = round(peak, 1)

    t0 = time.perf_counter()
    model = model_from_config(vl_config(name), device, None, seed=0)
    processor = image_processor(REAL_PROCESSOR)
    tmp = os.environ.get("TMPDIR", "/tmp")
    blob_root = os.path.join(tmp, f"bench-vl-blobs-{os.getpid()}")
    cfg = EngineConfig.from_dict({
        "model": {"path": "", "max_seq_length": 65536},
        "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "optim": {"lr": 1e-6},
        "training": {"micro_batch_tokens": args.micro_batch_tokens, "gradient_checkpointing": preset["ckpt"],
                     "stage_timing": True},
        "vision": {"blob_root": blob_root},
    })
    # The engine needs the processor's image processor only (a tokenizer is not used in training).
    engine = Engine(cfg, DistContext.single(), model=model, processor=types.SimpleNamespace(image_processor=processor))
    n_params = sum(p.numel() for p in engine.model.parameters())
    say(f"== {name} built in {time.perf_counter() - t0:.1f}s: {n_params / 1e9:.2f}B parameters")

    sample = processor(images=[_pil(screenshot(0))], min_pixels=REAL_PROCESSOR["min_pixels"],
                       max_pixels=REAL_PROCESSOR["max_pixels"], return_tensors="pt")["image_grid_thw"][0]
    image_tokens = int(sample.prod()) // REAL_PROCESSOR["merge_size"] ** 2
    result["image_tokens"] = image_tokens
    say(f"== a 1280x720 screenshot: grid {sample.tolist()} -> {image_tokens} image tokens")

    def batch_file(seed: int) -> dict:
        batch = make_episodes(preset["group"], preset["images"], preset["text"], image_tokens, text["vocab_size"],
                              blob_root, seed)
        path = os.path.join(tmp, f"bench-vl-{seed}.safetensors")
        write_with_engine_behavior(engine, batch, path, seed)
        trained = int(batch.loss_mask.sum())
        patches = [int(sample.prod())] * (preset["group"] * preset["images"])
        flops = text_flops(text, batch.seq_lens, trained) + vision_flops(vision, patches)
        return {"path": path, "batch": batch, "tokens": batch.num_tokens, "trained": trained, "flops": flops}

    reps = max(1, args.reps)
    files = [batch_file(s) for s in range(1, 2 + reps)]
    first = files[0]
    say(f"== batch: {first['batch'].num_sequences} episodes, {first['tokens']} tokens "
        f"({first['tokens'] // first['batch'].num_sequences} an episode), {first['trained']} trained; "
        f"model FLOPs/step {first['flops'] / 1e12:.1f} T")
    result.update(tokens_per_step=first["tokens"], trained_per_step=first["trained"])

    def measure(label, fn, pool):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        todo = iter(pool)
        times = timed(lambda: fn(next(todo)), 1, len(pool) - 1, device)
        total = sum(times)
        tps = sum(f["tokens"] for f in pool[1:]) / total
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        mfu = sum(f["flops"] for f in pool[1:]) / total / (peak * 1e12) if peak == peak else float("nan")
        row = {"name": label, "step_s": round(total / len(times), 3), "tokens_per_s": round(tps),
               "peak_gib": round(mem, 2), "mfu": round(mfu, 4)}
        say(f"   {label:8s} {row['step_s']:8.3f} s/step {tps:10.0f} tok/s  peak {mem:6.2f} GiB  MFU {mfu:6.1%}")
        return row

    rows = []
    if not args.skip_naive:
        say("== naive: one episode at a time, HF + PEFT with pixel values, full fp32 logits, checkpointing")
        try:
            rows.append(measure("naive", lambda f: naive_vl_step(engine, f["batch"], processor, device), files))
        except torch.OutOfMemoryError as exc:
            rows.append({"name": "naive", "oom": True, "error": str(exc)[:200]})
            say("   naive: out of memory")
    say(f"== engine: train_step (compile {args.vl_compile})")
    engine.apply_compile(args.vl_compile)
    stages = {}

    def engine_step(f):
        stages.update(engine.train_step(f["path"])["metrics"])

    rows.append(measure("engine", engine_step, files))
    rows[-1]["stages"] = {k: round(v, 3) for k, v in stages.items() if k.startswith(("time_", "cpu_"))}
    rows[-1]["compile"] = engine.compile_mode
    if args.profile and device.type == "cuda":
        from .bench import profile_step

        profile_step(engine, files[-1]["path"])
    result["vision_tower_s"] = vision_tower_seconds(engine, files[-1], device)
    say(f"   the vision tower alone (all {preset['group'] * preset['images']} images of a step, no_grad): "
        f"{result['vision_tower_s']:.3f} s")
    result["rows"] = rows
    by = {r["name"]: r for r in rows}
    if "engine" in by and "tokens_per_s" in by.get("naive", {}):
        result["speedup_vs_naive"] = round(by["engine"]["tokens_per_s"] / by["naive"]["tokens_per_s"], 2)
    for r in rows:
        say("   " + json.dumps(_no_nan(r)))
    line = "RESULT " + json.dumps(_no_nan(result))
    say(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(_no_nan(result), indent=2) + "\n")
    return 0


def vision_tower_seconds(engine, batch_file: dict, device) -> float:
    """How long the frozen vision tower takes for one step's images (part of the engine's forward)."""
    from .batch import build_micro_batch

    batch = batch_file["batch"]
    prepared = engine.vision.prepare(batch)
    mb = build_micro_batch(batch, list(range(batch.num_sequences)), batch.loss_mask,
                           torch.zeros(batch.num_tokens), engine.pad_token_id)
    images = engine.vision.for_micro_batch(mb, prepared)
    with engine._autocast():
        times = timed(lambda: (engine.vision._encoded.clear(), engine.vision.encode(images)), 1, 2, device)
    engine.vision._encoded.clear()
    return round(sum(times) / len(times), 3)


def _pil(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
