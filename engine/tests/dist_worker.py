"""Run by test_distributed.py, under torchrun or alone: train, save, reload, train; dump weights."""

import json
import sys

import torch

from trajstore_engine.config import EngineConfig
from trajstore_engine.distributed import DistContext
from trajstore_engine.trainer import Engine


def lora(engine):
    out = {}
    for n, p in engine.model.named_parameters():
        if p.requires_grad:
            t = p.detach()
            if hasattr(t, "full_tensor"):
                t = t.full_tensor()
            out[n] = t.double().flatten().tolist()
    return out


def main(model_dir, batch_path, ckpt, out_path, extra):
    dist = DistContext.from_env()
    extra = json.loads(extra)
    cfg = {"model": {"path": model_dir, **extra.pop("model", {})}, "optim": {"lr": 1e-2},
           "lora": {"dropout": 0.0}, "training": {"micro_batch_tokens": 40}, **extra}
    engine = Engine(EngineConfig.from_dict(cfg), dist)
    metrics = [engine.train_step(batch_path)["metrics"] for _ in range(2)]
    engine.save(ckpt)
    after2 = lora(engine)
    engine.train_step(batch_path)
    after3 = lora(engine)
    engine.load(ckpt)
    reloaded = lora(engine)
    engine.train_step(batch_path)
    after3_again = lora(engine)
    lp = engine.compute_logprobs(batch_path, None)["logprobs"].tolist()
    if dist.rank == 0:
        with open(out_path, "w") as f:
            json.dump({"metrics": metrics, "after2": after2, "after3": after3, "reloaded": reloaded,
                       "after3_again": after3_again, "logprobs": lp, "world_size": dist.world_size}, f)
    dist.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
