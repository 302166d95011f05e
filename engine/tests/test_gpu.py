"""GPU-only checks (skipped without CUDA): the fast paths compute what the plain ones compute."""

import pytest
import torch
import torch.nn.functional as F

from helpers import lora_state, make_engine, random_batch, randomize_lora, save_batch

pytestmark = pytest.mark.gpu


@pytest.fixture
def vl_batch(tiny_vl_model_dir, tmp_path):
    """A batch of the tiny VL model: two screenshots and text, expanded by its own processor."""
    import hashlib
    import io

    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from trajstore_engine.batch import Batch, write_batch
    from trajstore_engine.tiny_vl import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    proc = AutoProcessor.from_pretrained(tiny_vl_model_dir, local_files_only=True)
    blobs = tmp_path / "blobs"
    shas, pil = [], []
    for seed, (w, h) in enumerate([(1280, 720), (200, 200)]):
        buf = io.BytesIO()
        Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")).save(buf, format="PNG")
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        (blobs / "sha256" / sha[:2]).mkdir(parents=True, exist_ok=True)
        (blobs / "sha256" / sha[:2] / sha).write_bytes(data)
        shas.append(sha)
        pil.append(Image.open(io.BytesIO(data)).convert("RGB"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "click"}, {"type": "image"}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = proc(text=[text], images=pil, return_tensors="pt")["input_ids"][0]
    completion = torch.randint(20, 300, (40,), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([prompt, completion])
    T = ids.numel()
    mask = torch.cat([torch.zeros(len(prompt), dtype=torch.bool), torch.ones(len(completion), dtype=torch.bool)])
    settings = {"processor": "Qwen2VLImageProcessorFast", "processor_version": "test", "min_pixels": DEFAULT_MIN_PIXELS,
                "max_pixels": DEFAULT_MAX_PIXELS, "patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    batch = Batch(ids, torch.tensor([0, T]), mask, torch.ones(T), torch.full((T,), -6.0),
                  images=[shas], image_processing=[settings])
    path = tmp_path / "vl.safetensors"
    write_batch(path, batch)
    return tiny_vl_model_dir, blobs, path


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def test_varlen_attention_matches_per_sequence_sdpa_forward_and_backward():
    from trajstore_engine import attention

    torch.manual_seed(0)
    lens = [37, 300, 1, 129, 1024]
    T, hq, hkv, d = sum(lens), 16, 8, 128
    q = torch.randn(1, hq, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kw = attention.packed_kwargs(lens, torch.device("cuda"))
    grads = {}
    outs = {}
    g = torch.randn(1, T, hq, d, device="cuda")
    for backend in ("varlen", "loop"):
        attention.set_backend(backend)
        out, _ = attention.packed_attention(None, q, k, v, None, scaling=d**-0.5, **kw)
        (out.float() * g.float()).sum().backward()
        outs[backend] = out.detach()
        grads[backend] = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
    attention.set_backend("auto")
    assert outs["varlen"].shape == (1, T, hq, d)
    assert rel(outs["varlen"], outs["loop"]) < 1e-2
    for a, b in zip(grads["varlen"], grads["loop"]):
        assert rel(a, b) < 2e-2


def test_fused_kernels_match_eager_forward_and_backward():
    from trajstore_engine import fused

    torch.manual_seed(1)
    x0 = torch.randn(3000, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, device="cuda", dtype=torch.bfloat16)
    for fast, slow, args_of in (
        (fused.rms_norm, fused._rms_norm, lambda x: (x, w, 1e-6)),
        (fused.swiglu, fused._swiglu, lambda x: (x, x * 0.5)),
    ):
        outs, grads = [], []
        for fn in (fast, slow):
            # a fresh leaf per function: each graph is backpropagated once, as in training
            x = x0.clone().requires_grad_(True)
            out = fn(*args_of(x))
            outs.append(out.detach())
            grads.append(torch.autograd.grad(out.float().sum(), x)[0])
        assert rel(outs[0], outs[1]) < 1e-2
        assert rel(grads[0], grads[1]) < 1e-2
    q = torch.randn(1, 16, 500, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, 500, 128, device="cuda", dtype=torch.bfloat16)
    cos = torch.randn(1, 500, 128, device="cuda", dtype=torch.bfloat16)
    sin = torch.randn(1, 500, 128, device="cuda", dtype=torch.bfloat16)
    for a, b in zip(fused.rope(q, k, cos, sin), fused._rope(q, k, cos, sin)):
        assert rel(a, b) < 1e-2
    logits = torch.randn(777, 5000, device="cuda") * 3
    tgt = torch.randint(0, 5000, (777,), device="cuda")
    for a, b in zip(fused.softmax_stats(logits, tgt, 1.0, torch.float32),
                    fused._softmax_stats(logits, tgt, 1.0, torch.float32)):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("use_fused", [False, True])
def test_chunked_bf16_logprobs_and_gradient_match_float64(use_fused):
    from trajstore_engine import logprobs

    torch.manual_seed(2)
    m, h, vocab = 3000, 256, 50000
    hid = (torch.randn(m, h, device="cuda") * 0.5).bfloat16().requires_grad_(True)
    weight = (torch.randn(vocab, h, device="cuda") * 0.2).bfloat16()
    tgt = torch.randint(0, vocab, (m,), device="cuda")
    logprobs.set_fused(use_fused)
    try:
        lp, ent = logprobs.token_logprobs(hid, weight, tgt, chunk_size=1024, temperature=0.9)
        gout = torch.randn(m, device="cuda")
        (lp * gout).sum().backward()
    finally:
        logprobs.set_fused(False)
    h64 = hid.detach().double().requires_grad_(True)
    ref = torch.log_softmax(h64 @ weight.double().t() / 0.9, -1)
    ref_lp = ref.gather(1, tgt[:, None])[:, 0]
    ref_ent = -(ref.exp() * ref).sum(-1)
    (ref_lp * gout.double()).sum().backward()
    assert float((lp.double() - ref_lp).abs().max()) < 2e-3
    assert float((ent.double() - ref_ent).abs().max()) < 2e-3
    assert rel(hid.grad, h64.grad) < 1e-2


def test_gpu_bf16_step_matches_cpu_float32_step(tiny_model_dir, tmp_path):
    batch = random_batch(n_seq=6, seed=4, min_len=20, max_len=300)
    path = save_batch(tmp_path, batch)
    grads, losses = {}, {}
    for device in ("cpu", "cuda"):
        engine = make_engine(tiny_model_dir, model={"device": device},
                             training={"micro_batch_tokens": 512})
        randomize_lora(engine, seed=9)
        captured = {}
        step = engine.optimizer_step

        def capture(engine=engine, captured=captured, step=step):
            captured.update({n: p.grad.detach().float().cpu().clone()
                             for n, p in engine.model.named_parameters() if p.requires_grad})
            return step()

        engine.optimizer_step = capture
        out = engine.train_step(path)
        grads[device], losses[device] = captured, out["metrics"]["loss"]
        if device == "cuda":
            assert engine.describe()["attention"] == "varlen"
            assert engine.compile_mode == "layers"
            assert out["metrics"]["peak_memory_gib"] > 0
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=3e-2, abs=1e-3)
    a = torch.cat([g.flatten() for _, g in sorted(grads["cuda"].items())])
    b = torch.cat([g.flatten() for _, g in sorted(grads["cpu"].items())])
    assert rel(a, b) < 5e-2
    assert float(F.cosine_similarity(a, b, dim=0)) > 0.995


def test_real_cuda_oom_is_a_typed_error_and_the_engine_recovers(tiny_model_dir, tmp_path):
    from trajstore_engine.errors import OUT_OF_MEMORY, EngineError

    engine = make_engine(tiny_model_dir, model={"device": "cuda"},
                         training={"micro_batch_tokens": 200000, "gradient_checkpointing": False})
    big = save_batch(tmp_path, random_batch(n_seq=8, seed=5, min_len=20000, max_len=20000), "big")
    small = save_batch(tmp_path, random_batch(n_seq=2, seed=6), "small")
    before = lora_state(engine)
    free, total = torch.cuda.mem_get_info()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 300 * 2**20) / total))
    try:
        with pytest.raises(EngineError) as info:
            engine.train_step(big)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    err = info.value
    assert err.code == OUT_OF_MEMORY and not err.retriable
    assert "micro_batch_tokens" in err.hint and "gradient_checkpointing" in err.hint
    assert "max_seq_length" in err.hint
    after = lora_state(engine)
    assert all(torch.equal(before[n], after[n]) for n in before)  # the step was not applied
    out = engine.train_step(small)
    assert out["step"] == 1


def test_compiled_layers_train_new_batch_shapes_without_recompiling(tiny_model_dir, tmp_path):
    """Real training never repeats a batch: after the first steps, new lengths and sequence counts
    must reuse the compiled graphs (dynamic shapes), not compile again on every step."""
    from torch._dynamo.utils import counters

    engine = make_engine(tiny_model_dir, model={"device": "cuda"}, training={"compile": "layers"})
    assert engine.compile_mode == "layers"
    shapes = [(6, 20, 300), (3, 500, 900), (9, 10, 60), (4, 100, 700), (7, 33, 333)]
    paths = [save_batch(tmp_path, random_batch(n_seq=n, seed=30 + i, min_len=lo, max_len=hi), f"b{i}")
             for i, (n, lo, hi) in enumerate(shapes)]
    for p in paths[:2]:
        engine.train_step(p)
    graphs = counters["stats"]["unique_graphs"]
    for p in paths[2:]:
        out = engine.train_step(p)
        assert out["metrics"]["loss"] == out["metrics"]["loss"]  # not NaN
    assert counters["stats"]["unique_graphs"] == graphs, "a new batch shape compiled new graphs"


def test_gpu_bf16_vl_logprobs_with_screenshots_match_cpu_float32(vl_batch, tmp_path):
    """The tiny Qwen3-VL on CUDA (bf16, varlen attention over the packed row, compiled layers,
    vision tower in SDPA) scores a batch with screenshots like the CPU float32 engine."""
    model_dir, blobs, path = vl_batch
    lps = {}
    for device in ("cpu", "cuda"):
        engine = make_engine(model_dir, model={"device": device}, vision={"blob_root": str(blobs)})
        randomize_lora(engine, seed=9)
        lps[device] = engine.compute_logprobs(str(path), None)["logprobs"]
        out = engine.train_step(str(path))
        if device == "cuda":
            assert engine.describe()["attention"] == "varlen"
            assert engine.compile_mode == "layers"
            assert out["metrics"]["peak_memory_gib"] > 0
    assert rel(lps["cuda"], lps["cpu"]) < 2e-2
    assert float((lps["cuda"] - lps["cpu"]).abs().max()) < 0.1
