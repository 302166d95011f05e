"""FSDP2 across 2 processes (gloo on CPU) trains like one process, and saves/reloads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import random_batch, save_batch

HERE = Path(__file__).resolve().parent


def run_worker(tmp_path, model_dir, batch_path, nproc, name, extra="{}"):
    out = tmp_path / f"{name}.json"
    ckpt = tmp_path / f"{name}-ckpt"
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent}:{HERE}", "OMP_NUM_THREADS": "1",
           "TRAJSTORE_DIST_TIMEOUT_S": "120"}
    args = [str(model_dir), batch_path, str(ckpt), str(out), extra]
    if nproc == 1:
        cmd = [sys.executable, str(HERE / "dist_worker.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(HERE / "dist_worker.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_fsdp_ranks_train_like_one_process_and_reload(tiny_model_dir, tmp_path):
    batch = random_batch(n_seq=7, seed=21, behavior=None)
    path = save_batch(tmp_path, batch)
    one = run_worker(tmp_path, tiny_model_dir, path, 1, "single")
    two = run_worker(tmp_path, tiny_model_dir, path, 2, "fsdp")
    assert two["world_size"] == 2
    for key in ("after2", "after3"):
        # Adam amplifies float-summation-order noise on near-zero gradients: compare as a whole
        a = torch.cat([torch.tensor(v) for _, v in sorted(one[key].items())])
        b = torch.cat([torch.tensor(v) for _, v in sorted(two[key].items())])
        assert float((a - b).norm() / a.norm()) < 1e-4
    # the loss metrics agree (sums over ranks)
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4, abs=1e-7)
        assert m2["trained_tokens"] == m1["trained_tokens"]
        assert m2["tokens"] == m1["tokens"]
    # reload restores the checkpoint exactly, and the step after it repeats the first run's
    for name in two["after2"]:
        assert two["reloaded"][name] == two["after2"][name]
        assert two["after3_again"][name] == two["after3"][name]
    torch.testing.assert_close(torch.tensor(two["logprobs"]), torch.tensor(one["logprobs"]), rtol=0, atol=1e-5)
