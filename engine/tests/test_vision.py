"""The engine on a vision-language model (the tiny Qwen3-VL): images from the blob directory, the
placeholder check, packed multimodal positions, and adapters PEFT and vLLM can load.

The reference for every logprob is Hugging Face's own unpacked forward of
``Qwen3VLForConditionalGeneration`` on one sequence with its ``pixel_values`` / ``image_grid_thw`` /
``mm_token_type_ids`` (what the processor returns): if packing, the rotary rows, the placeholder
scatter or DeepStack were wrong in the engine, these would differ.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch

from helpers import make_engine, randomize_lora
from trajstore_engine.batch import Batch, write_batch
from trajstore_engine.errors import IMAGE_MISSING, IMAGE_TOKENS, EngineError
from trajstore_engine.tiny_vl import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE

SETTINGS = {"processor": "Qwen2VLImageProcessorFast", "processor_version": "transformers 5.17.0",
            "min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS, "patch_size": PATCH_SIZE,
            "merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE}


def png(width: int, height: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def put_blob(root, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    path = root / "sha256" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha


@pytest.fixture(scope="module")
def vl(tiny_vl_model_dir, tmp_path_factory):
    """Three prompts (two images, one image, none) expanded by the model's own processor, their
    images in a blob directory, and a completion of random tokens after each."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_vl_model_dir, local_files_only=True)
    blobs = tmp_path_factory.mktemp("blobs")
    images = [png(1280, 720, 1), png(200, 200, 2), png(64, 64, 3)]
    shas = [put_blob(blobs, b) for b in images]
    from PIL import Image

    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    convs = [
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "click the button"},
                                       {"type": "image"}]}], [0, 1]),
        ([{"role": "user", "content": [{"type": "text", "text": "what is shown?"}, {"type": "image"}]}], [2]),
        ([{"role": "user", "content": "What is 3 times 4?"}], []),
    ]
    g = torch.Generator().manual_seed(0)
    seqs = []
    for messages, idx in convs:
        text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = proc(text=[text], images=[pil[i] for i in idx] or None, return_tensors="pt")
        prompt = enc["input_ids"][0]
        completion = torch.randint(20, 300, (7,), generator=g)
        seqs.append({"prompt": prompt, "completion": completion, "shas": [shas[i] for i in idx],
                     "enc": enc})
    return {"dir": tiny_vl_model_dir, "blobs": blobs, "seqs": seqs, "shas": shas}


def make_batch(seqs, images=None, settings=SETTINGS) -> Batch:
    ids, mask, cu = [], [], [0]
    for s in seqs:
        ids += [s["prompt"], s["completion"]]
        mask += [torch.zeros(len(s["prompt"]), dtype=torch.bool), torch.ones(len(s["completion"]), dtype=torch.bool)]
        cu.append(cu[-1] + len(s["prompt"]) + len(s["completion"]))
    ids_t, mask_t = torch.cat(ids), torch.cat(mask)
    T = ids_t.numel()
    imgs = [s["shas"] for s in seqs] if images is None else images
    return Batch(ids_t, torch.tensor(cu), mask_t, torch.linspace(-1, 1, T), torch.full((T,), -6.0),
                 images=imgs, image_processing=[settings if i else None for i in imgs])


def engine_for(vl, **overrides):
    overrides.setdefault("vision", {"blob_root": str(vl["blobs"])})
    overrides.setdefault("training", {"micro_batch_tokens": 100_000})
    return make_engine(vl["dir"], **overrides)


def hf_reference(vl, adapter_dir):
    """A fresh Hugging Face load of the VL model (SDPA everywhere) with the engine's saved adapter
    loaded by PEFT: the reference the engine's packed forward must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(vl["dir"], local_files_only=True, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def reference_logprobs(model, seq) -> torch.Tensor:
    """Logprobs of a sequence's completion from an unpacked forward with the processor's inputs."""
    enc = seq["enc"]
    ids = torch.cat([seq["prompt"], seq["completion"]])[None]
    kwargs = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
    mm = torch.cat([enc["mm_token_type_ids"][0], torch.zeros(len(seq["completion"]), dtype=torch.long)])[None]
    model.base_model.model.model.rope_deltas = None  # HF caches the rotary offset between calls
    with torch.no_grad():
        logits = model(input_ids=ids, mm_token_type_ids=mm, use_cache=False, **kwargs).logits[0].double()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    return lp[-len(seq["completion"]):]


def completion_logprobs(logprobs: torch.Tensor, batch: Batch, i: int, n: int) -> torch.Tensor:
    end = int(batch.cu_seqlens[i + 1])
    return logprobs[end - n:end].double()


def test_packed_vl_logprobs_equal_peft_on_an_unpacked_hf_forward_with_images(vl, tmp_path):
    """Three sequences (two images, one, none) packed in one row; the adapter trained two steps,
    saved, and loaded by PEFT onto a fresh HF model: the same logprobs, within 1e-4 (fp32)."""
    engine = engine_for(vl, optim={"lr": 1e-2, "max_grad_norm": None})
    randomize_lora(engine, seed=3)
    batch = make_batch(vl["seqs"])
    path = tmp_path / "b.safetensors"
    write_batch(path, batch)
    engine.train_step(str(path))
    engine.train_step(str(path))
    engine.save(str(tmp_path / "ckpt"))
    mine = engine.compute_logprobs(str(path), None)["logprobs"]
    adapter = tmp_path / "ckpt" / "adapter"
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    # vLLM's Qwen3-VL maps "model.language_model." onto its language model (hf_to_vllm_mapper):
    # every adapter key must live there, none on the vision tower or merger.
    assert keys and all(k.startswith("base_model.model.model.language_model.layers.") for k in keys), keys[:3]
    reference = hf_reference(vl, adapter)
    for i, seq in enumerate(vl["seqs"]):
        want = reference_logprobs(reference, seq)
        got = completion_logprobs(mine, batch, i, len(seq["completion"]))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_images_change_the_logprobs(vl, tmp_path):
    """The screenshots really reach the model: other pixels (same sizes, same ids) score differently."""
    engine = engine_for(vl)
    randomize_lora(engine, seed=3)
    batch = make_batch(vl["seqs"][:1])
    path = tmp_path / "b.safetensors"
    write_batch(path, batch)
    first = engine.compute_logprobs(str(path), None)["logprobs"]
    other = [put_blob(vl["blobs"], png(1280, 720, 11)), put_blob(vl["blobs"], png(200, 200, 12))]
    write_batch(path, make_batch(vl["seqs"][:1], images=[other]))
    second = engine.compute_logprobs(str(path), None)["logprobs"]
    assert float((first - second).abs().max()) > 1e-3


def test_a_turn_whose_placeholders_do_not_match_its_images_is_refused(vl, tmp_path):
    engine = engine_for(vl)
    path = tmp_path / "b.safetensors"
    # the 1280x720 screenshot's 60 pads, but the 64x64 image recorded: 4 tokens expected
    write_batch(path, make_batch(vl["seqs"][:1], images=[[vl["shas"][2], vl["shas"][1]]]))
    with pytest.raises(EngineError) as err:
        engine.train_step(str(path))
    assert err.value.code == IMAGE_TOKENS
    assert err.value.details["runs"] != err.value.details["expected"]
    # the same images in the other order do not match either (runs are checked in order)
    write_batch(path, make_batch(vl["seqs"][:1], images=[[vl["shas"][1], vl["shas"][0]]]))
    with pytest.raises(EngineError) as err:
        engine.train_step(str(path))
    assert err.value.code == IMAGE_TOKENS
    # other pixel settings than those the ids were expanded with
    write_batch(path, make_batch(vl["seqs"][:1], settings={**SETTINGS, "max_pixels": DEFAULT_MAX_PIXELS * 4}))
    with pytest.raises(EngineError) as err:
        engine.train_step(str(path))
    assert err.value.code == IMAGE_TOKENS
    # another patch size than the model's
    write_batch(path, make_batch(vl["seqs"][:1], settings={**SETTINGS, "patch_size": 14}))
    with pytest.raises(EngineError) as err:
        engine.train_step(str(path))
    assert err.value.code == IMAGE_TOKENS
    assert engine.step == 0  # nothing was applied


def test_a_missing_or_corrupt_image_is_refused(vl, tmp_path):
    engine = engine_for(vl)
    path = tmp_path / "b.safetensors"
    absent = hashlib.sha256(b"never stored").hexdigest()
    write_batch(path, make_batch(vl["seqs"][1:2], images=[[absent]]))
    with pytest.raises(EngineError) as err:
        engine.train_step(str(path))
    assert err.value.code == IMAGE_MISSING
    corrupt_dir = tmp_path / "corrupt"
    sha = vl["shas"][2]
    target = corrupt_dir / "sha256" / sha[:2] / sha
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the image")
    engine2 = engine_for(vl, vision={"blob_root": str(corrupt_dir)})
    write_batch(path, make_batch(vl["seqs"][1:2]))
    with pytest.raises(EngineError) as err:
        engine2.train_step(str(path))
    assert err.value.code == IMAGE_MISSING and "does not match its hash" in err.value.message


def test_training_on_screenshots_moves_their_logprobs_and_leaves_the_vision_tower_frozen(vl, tmp_path):
    engine = engine_for(vl, optim={"lr": 1e-2, "max_grad_norm": None})
    visual_before = {n: p.detach().clone() for n, p in engine.causal_lm.model.visual.named_parameters()}
    batch = make_batch(vl["seqs"])
    batch.advantages = torch.ones_like(batch.advantages)
    path = tmp_path / "b.safetensors"
    write_batch(path, batch)
    before = engine.compute_logprobs(str(path), None)["logprobs"][batch.loss_mask]
    for _ in range(3):
        engine.train_step(str(path))
    after = engine.compute_logprobs(str(path), None)["logprobs"][batch.loss_mask]
    assert float(after.mean()) > float(before.mean()) + 1e-3  # positive advantages raise them
    for n, p in engine.causal_lm.model.visual.named_parameters():
        assert torch.equal(p, visual_before[n]), n
    assert all(".visual." not in n for n, p in engine.model.named_parameters() if p.requires_grad)


def test_micro_batches_split_across_image_sequences_give_the_same_logprobs(vl, tmp_path):
    batch = make_batch(vl["seqs"])
    path = tmp_path / "b.safetensors"
    write_batch(path, batch)
    one = engine_for(vl)
    randomize_lora(one, seed=5)
    whole = one.compute_logprobs(str(path), None)["logprobs"]
    split = engine_for(vl, training={"micro_batch_tokens": 60})
    randomize_lora(split, seed=5)
    parts = split.compute_logprobs(str(path), None)["logprobs"]
    torch.testing.assert_close(parts[batch.loss_mask], whole[batch.loss_mask], rtol=0, atol=1e-5)


def test_a_text_model_refuses_a_batch_with_images(tiny_model_dir, vl, tmp_path):
    engine = make_engine(tiny_model_dir)
    batch = make_batch(vl["seqs"][2:3], images=[[vl["shas"][0]]])
    batch.input_ids = batch.input_ids.clamp(max=400)
    path = tmp_path / "b.safetensors"
    write_batch(path, batch)
    with pytest.raises(EngineError) as err:
        engine.train_step(str(path))
    assert err.value.code == "TRAJ_E_ENGINE_BATCH_INVALID" and "text-only" in err.value.message
