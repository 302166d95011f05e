"""``python -m trajstore_engine bench``: the engine's step against a naive loop, on one GPU.

Model: Qwen3-1.7B's shape (random weights from the config, nothing downloaded), LoRA r=16 on
q/k/v/o. Batch: a GRPO group of 8 trajectories of ~2,000 tokens (a prompt, then completion tokens
with a few tool-output holes: ~70% of tokens trained). In one run it times

  naive       one trajectory at a time through the Hugging Face forward, full-vocabulary float32
              logits -> log_softmax -> PPO loss -> backward; one optimizer step at the end
  engine_*    the engine's step, in variants that switch its parts on one by one (packed
              attention kernel, torch.compile of kernels or whole layers, micro-batch size, checkpointing)
  long_32k    one 32,000-token trajectory through the engine's default step

and prints progress, a table, and last a line ``RESULT {json}``: tokens/s, peak GiB, and model
FLOPs utilization (MFU) against a bf16 matmul rate measured in the same run.

Model FLOPs per token (what the step must compute, whatever the implementation): frozen linear
layers forward + input-gradient = 4 x params; attention (causal) forward 2 x n x d_attn per layer
per token, x3 with its backward; lm_head 4 x hidden x vocab per trained token. LoRA's own FLOPs
are negligible (< 1%) and not counted.

``--model 8b`` uses Qwen3-8B's shape; under torchrun (WORLD_SIZE > 1) the engine shards it with
FSDP2 and each rank trains its own group (the per-GPU batch stays the same), then the run saves a
checkpoint, reloads it into the engine, and checks the reloaded adapter bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

import torch

QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                  max_position_embeddings=40960, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
QWEN3_8B = dict(QWEN3_1_7B, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
TINY = dict(QWEN3_1_7B, vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def say(*parts) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(*parts, flush=True)


def environment() -> dict:
    import importlib.util

    from . import attention

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                   gpus=torch.cuda.device_count())
    for pkg in ("transformers", "peft", "flash_attn", "liger_kernel", "triton"):
        spec = importlib.util.find_spec(pkg)
        if spec is None:
            env[pkg] = None
        else:
            try:
                env[pkg] = __import__(pkg).__version__
            except Exception:  # noqa: BLE001
                env[pkg] = "present"
    env["varlen_attn"] = attention.varlen_available()
    return env


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """Median bf16 matmul rate (TFLOP/s) on random data; the MFU denominator."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12


def make_group(n_seq: int, mean_len: int, vocab: int, seed: int, jitter: float = 0.1):
    """A GRPO group: n_seq trajectories of about mean_len tokens, prompt then completion."""
    from .batch import Batch

    g = torch.Generator().manual_seed(seed)
    lo, hi = int(mean_len * (1 - jitter)), int(mean_len * (1 + jitter))
    lens = torch.randint(lo, hi + 1, (n_seq,), generator=g) if hi > lo else torch.full((n_seq,), mean_len)
    T = int(lens.sum())
    cu = torch.zeros(n_seq + 1, dtype=torch.long)
    cu[1:] = lens.cumsum(0)
    ids = torch.randint(0, vocab, (T,), generator=g)
    mask = torch.zeros(T, dtype=torch.bool)
    for i in range(n_seq):
        s, e = int(cu[i]), int(cu[i + 1])
        mask[s + (e - s) // 4:e] = True
        mask[s:e] &= torch.rand(e - s, generator=g) >= 0.07
    adv = torch.repeat_interleave(torch.randn(n_seq, generator=g), lens)
    return Batch(ids, cu, mask, adv, torch.full((T,), -1.0), torch.zeros(T, dtype=torch.long))


def model_flops_per_step(cfg: dict, seq_lens: list[int], trained_tokens: int) -> float:
    h, inter, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd, nq, nkv, V = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    linear = L * (h * nq * hd * 2 + h * nkv * hd * 2 + 3 * h * inter)
    tokens = sum(seq_lens)
    f = 4 * linear * tokens
    f += 3 * L * sum(2 * n * n * nq * hd for n in seq_lens)  # causal: half of 4 n^2 d, fwd x3
    f += 4 * h * V * trained_tokens
    return float(f)


def naive_step(engine, batch, device) -> None:
    """One trajectory at a time, full fp32 logits, the PPO loss, backward; then one update."""
    model = engine.model
    model.train()
    n_trained = int(batch.loss_mask.sum())
    cu = batch.cu_seqlens.tolist()
    cfg = engine.cfg.loss
    for i in range(batch.num_sequences):
        s, e = cu[i], cu[i + 1]
        ids = batch.input_ids[s:e].to(device)[None]
        with engine._autocast():
            logits = model(input_ids=ids, use_cache=False).logits[0]
        naive_ppo_loss(logits, ids, batch, s, e, cfg, n_trained, device).backward()
        del logits
    engine.optimizer_step()


def write_with_engine_behavior(engine, batch, path: str, seed: int) -> None:
    """Write ``batch`` to ``path`` with behavior logprobs near the engine's own (as after a real
    rollout) plus sampling noise, so ratios and clipping behave as in training."""
    from .batch import write_batch

    write_batch(path, batch)
    lp = engine.compute_logprobs(path, None)["logprobs"]
    noise = torch.randn(lp.shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    batch.behavior_logprobs = torch.where(batch.loss_mask, (lp + noise).clamp(max=0), torch.zeros_like(lp))
    write_batch(path, batch)


def naive_ppo_loss(logits, ids, batch, s: int, e: int, cfg, n_trained: int, device):
    """The naive loops' loss for sequence tokens s:e: full-vocabulary float32 log_softmax, PPO-clip."""
    logp = torch.log_softmax(logits.float(), dim=-1)[:-1].gather(1, ids[0, 1:, None])[:, 0]
    m = batch.loss_mask[s + 1:e].to(device)
    behav = batch.behavior_logprobs[s + 1:e].to(device)
    adv = batch.advantages[s + 1:e].to(device)
    ratio = torch.exp(logp - behav)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high))
    return (pg * m).sum() / n_trained


def timed(fn, warmup: int, reps: int, device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        times.append(time.perf_counter() - t0)
    return times


def run_bench(args) -> int:
    from . import attention
    from .batch import write_batch
    from .config import EngineConfig
    from .distributed import DistContext
    from .model import model_from_config
    from .trainer import Engine
    from transformers import Qwen3Config

    dist = DistContext.from_env()
    device = dist.device if dist.enabled else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type != "cuda"
    shape = TINY if quick else (QWEN3_8B if args.model == "8b" else QWEN3_1_7B)
    n_seq, mean_len = (8, 200) if quick else (args.group, args.seq_len)
    long_len = 2000 if quick else 32000
    result: dict = {"model": "tiny" if quick else f"qwen3-{args.model}-shape", "world_size": dist.world_size}
    env = environment()
    result["env"] = env
    say("== environment:", json.dumps(env))
    peak = matmul_tflops() if device.type == "cuda" else float("nan")
    result["matmul_bf16_tflops"] = round(peak, 1)
    say(f"== bf16 matmul 8192^3: {peak:.0f} TFLOP/s")

    t0 = time.perf_counter()
    config = Qwen3Config(**shape)
    model = model_from_config(config, device, None, seed=0)
    cfg = EngineConfig.from_dict({
        "model": {"path": "", "max_seq_length": 40960},
        "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "optim": {"lr": 1e-6},
        "training": {"micro_batch_tokens": args.micro_batch_tokens, "compile": "none", "stage_timing": True},
    })
    engine = Engine(cfg, dist, model=model)
    n_params = sum(p.numel() for p in engine.model.parameters())
    say(f"== model built in {time.perf_counter() - t0:.1f}s: {engine.describe()} params={n_params / 1e9:.2f}B")

    tmp = os.environ.get("TMPDIR", "/tmp")
    reps = 1 if quick else args.reps
    wanted = [v for v in args.variants.split(",") if v] if args.variants else (
        ["loop_eager", "varlen_eager", "varlen_kernels", "varlen_layers", "varlen_layers_mb8k",
         "varlen_layers_ckpt"] if not dist.enabled else ["varlen_layers"])

    def group_file(seed: int) -> dict:
        """A group written to a batch file, behavior logprobs near the engine's own (as after a real
        rollout) plus sampling noise. Under FSDP the batch is world_size groups (the same per-GPU
        batch); every rank reads it all and trains its share. One file per rank, same content."""
        batch = make_group(n_seq * dist.world_size, mean_len, shape["vocab_size"], seed=seed)
        path = os.path.join(tmp, f"bench-group-{seed}-{dist.rank}.safetensors")
        write_with_engine_behavior(engine, batch, path, seed)
        trained = int(batch.loss_mask.sum())
        return {"path": path, "batch": batch, "tokens": batch.num_tokens, "trained": trained,
                "flops": model_flops_per_step(shape, batch.seq_lens, trained)}

    # Every timed step of every variant trains on a batch it has not seen (other lengths, other
    # tokens), as in real training: a compiled variant that recompiles for new shapes pays for it
    # inside the timing instead of hiding behind a repeated batch. Made before any timing, eagerly.
    first = group_file(1)
    batch, path = first["batch"], first["path"]
    pools = {name: [group_file(100 * (i + 1) + k) for k in range(1 + reps)] for i, name in enumerate(wanted)}
    say(f"== batch: {batch.num_sequences} trajectories, {first['tokens']} tokens, {first['trained']} trained; "
        f"model FLOPs/step {first['flops'] / 1e12:.1f} T; {sum(map(len, pools.values()))} fresh batches for the variants")
    rows = []

    def record(name, times, groups, extra=None):
        total_t = sum(times)
        tps = sum(g["tokens"] for g in groups) / total_t
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        flops = sum(g["flops"] for g in groups)
        mfu = flops / total_t / (peak * 1e12 * dist.world_size) if peak == peak else float("nan")
        row = {"name": name, "step_s": round(total_t / len(times), 4), "step_s_all": [round(t, 4) for t in times],
               "tokens_per_s": round(tps), "peak_gib": round(mem, 2), "mfu": round(mfu, 4), **(extra or {})}
        rows.append(row)
        say(f"   {name:28s} {total_t / len(times):8.3f} s/step {tps:10.0f} tok/s  peak {mem:6.2f} GiB  MFU {mfu:6.1%}")
        return row

    def reset_mem():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    if not args.skip_naive and not dist.enabled:
        say("== naive loop (one trajectory at a time, full fp32 logits)")
        reset_mem()
        record("naive", timed(lambda: naive_step(engine, batch, device), 1, max(1, reps - 1), device),
               [first] * max(1, reps - 1))

    tc = engine.cfg.training

    def variant(name, pool, *, attn="auto", comp="layers", mbt=args.micro_batch_tokens, ckpt="auto", chunk=None):
        attention.set_backend(attn)
        engine.apply_compile(comp)
        tc.micro_batch_tokens, tc.gradient_checkpointing = mbt, ckpt
        tc.logprob_chunk_tokens = chunk or default_chunk
        reset_mem()
        say(f"== {name}: attention={attn} compile={comp} micro_batch_tokens={mbt} checkpointing={ckpt} "
            f"logprob_chunk={tc.logprob_chunk_tokens}")
        last = {}
        todo = iter(pool)

        def step():
            last.update(engine.train_step(next(todo)["path"])["metrics"])

        t_first = time.perf_counter()
        step()  # warm-up (compiles, if any)
        first_s = time.perf_counter() - t_first
        graphs_before = _compiled_graphs()
        times = timed(step, 0, len(pool) - 1, device)
        row = record(name, times, pool[1:], {"micro_batches": last.get("micro_batches"),
                                             "first_step_s": round(first_s, 2),
                                             "graphs_compiled_while_timed": _compiled_graphs() - graphs_before})
        row["metrics"] = {k: last[k] for k in ("loss", "clip_fraction", "grad_norm", "mismatch_abs_mean",
                                               "importance_weight_max", "peak_memory_gib") if k in last}
        row["stages"] = {k: round(v, 4) for k, v in last.items() if k.startswith(("time_", "cpu_"))}
        if row["stages"]:
            say(f"      stages: {row['stages']}")
        return row

    default_chunk = tc.logprob_chunk_tokens
    specs = {
        "loop_eager": dict(attn="loop", comp="none"),
        "varlen_eager": dict(attn="varlen" if not quick else "loop", comp="none"),
        "varlen_kernels": dict(comp="kernels"),
        "varlen_layers": dict(comp="layers"),
        "varlen_layers_chunk8k": dict(comp="layers", chunk=8192),
        "varlen_layers_mb8k": dict(comp="layers", mbt=8192),
        "varlen_layers_mb32k": dict(comp="layers", mbt=32768),
        "varlen_layers_ckpt": dict(comp="layers", ckpt=True),
    }
    if quick:
        for spec in specs.values():
            spec["comp"] = "none" if spec.get("comp") == "layers" else spec.get("comp", "none")
    for name in wanted:
        try:
            variant(f"engine_{name}", pools[name], **specs[name])
        except Exception as exc:  # noqa: BLE001 - report and go on to the next variant
            say(f"   engine_{name} FAILED: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}")
            rows.append({"name": f"engine_{name}", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            reset_mem()

    # the default configuration for what follows
    attention.set_backend("auto")
    engine.apply_compile("auto" if not quick else "none")
    tc.micro_batch_tokens, tc.gradient_checkpointing = args.micro_batch_tokens, "auto"
    tc.logprob_chunk_tokens = default_chunk

    if args.profile and device.type == "cuda":
        profile_step(engine, path)

    if not args.skip_long and not dist.enabled:
        say(f"== one {long_len}-token trajectory (default settings: checkpointing switches on above "
            f"{tc.checkpoint_above_tokens} tokens)")
        long_batch = make_group(1, long_len, shape["vocab_size"], seed=7, jitter=0.0)
        long_batch.behavior_logprobs = torch.where(long_batch.loss_mask, torch.full((long_len,), -12.0),
                                                   torch.zeros(long_len))
        long_path = os.path.join(tmp, "bench-long.safetensors")
        write_batch(long_path, long_batch)
        reset_mem()
        try:
            out = {}
            times = timed(lambda: out.update(engine.train_step(long_path)["metrics"]), 1, 1, device)
            lt = long_len / times[0]
            lflops = model_flops_per_step(shape, [long_len], int(long_batch.loss_mask.sum()))
            row = {"name": "long_32k" if not quick else "long", "tokens": long_len, "step_s": round(times[0], 3),
                   "tokens_per_s": round(lt), "peak_gib": round(out.get("peak_memory_gib", float("nan")), 2),
                   "mfu": round(lflops / times[0] / (peak * 1e12), 4) if peak == peak else None, "oom": False}
        except torch.OutOfMemoryError as exc:
            row = {"name": "long_32k", "oom": True, "error": str(exc)[:200]}
        except Exception as exc:  # noqa: BLE001
            row = {"name": "long_32k", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        rows.append(row)
        say(f"   {json.dumps(row)}")

    if dist.enabled or args.check_checkpoint:
        result["checkpoint"] = checkpoint_roundtrip(engine, path, tmp)
        say(f"== checkpoint: {json.dumps(result['checkpoint'])}")

    result["rows"] = rows
    ok = [r for r in rows if "error" not in r and r["name"].startswith("engine_")]
    best = max(ok, key=lambda r: r["tokens_per_s"]) if ok else None
    naive = next((r for r in rows if r["name"] == "naive"), None)
    if best:
        result["engine_tokens_per_s"] = best["tokens_per_s"]
        result["engine_peak_gib"] = best["peak_gib"]
        result["engine_mfu"] = best["mfu"]
        result["engine_variant"] = best["name"]
    if naive and best:
        result["speedup_vs_naive"] = round(best["tokens_per_s"] / naive["tokens_per_s"], 2)
    say("== table")
    for r in rows:
        say("   " + json.dumps(_no_nan({k: v for k, v in r.items() if k != "metrics"})))
    line = "RESULT " + json.dumps(_no_nan(result))
    say(line)
    if args.out and dist.rank == 0:
        with open(args.out, "w") as f:
            f.write(json.dumps(_no_nan(result), indent=2) + "\n")
    dist.close()
    return 0


def _compiled_graphs() -> int:
    """Graphs torch.compile has built so far in this process (0 when it never ran)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def profile_step(engine, path: str) -> None:
    """torch.profiler over one step of the current configuration: the top kernels by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    engine.train_step(path)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.train_step(path)
        torch.cuda.synchronize()
    say("== profile (one step, default settings): top 30 by GPU time")
    say(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))


def checkpoint_roundtrip(engine, batch_path: str, tmp: str) -> dict:
    """Save, take one step, reload the checkpoint, take the same step again: same weights."""
    from .checkpoint import verify

    ck = os.path.join(tmp, f"bench-ckpt-{int(time.time())}")
    t0 = time.perf_counter()
    saved = engine.save(ck, {"bench": True})
    save_s = time.perf_counter() - t0
    engine.train_step(batch_path)
    after_a = _lora_digest(engine)
    t0 = time.perf_counter()
    engine.load(ck)
    load_s = time.perf_counter() - t0
    engine.train_step(batch_path)
    after_b = _lora_digest(engine)
    out = {"path": ck, "save_s": round(save_s, 2), "load_s": round(load_s, 2), "bytes": saved.get("bytes"),
           "same_weights_after_reload_and_step": bool(after_a == after_b)}
    if engine.dist.rank == 0:
        out["verified"] = verify(ck)["step"] == saved["step"]
    return out


def _lora_digest(engine) -> list[float]:
    vals = []
    for _, p in sorted((n, p) for n, p in engine.model.named_parameters() if p.requires_grad):
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        vals.append(float(t.double().sum()))
        vals.append(float(t.double().abs().sum()))
    return vals


def _no_nan(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj
