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
    # float64: summation order differs between one process and two ranks (and between CPUs), and
    # in float32 that noise alone reaches 1e-5 in a logprob after three Adam steps. In float64 it
    # is ~1e-12, so the tight bounds below catch a real divergence (a lost gradient shard, a wrong
    # reduction) on any machine.
    f64 = json.dumps({"model": {"dtype": "float64"}})
    one = run_worker(tmp_path, tiny_model_dir, path, 1, "single", f64)
    two = run_worker(tmp_path, tiny_model_dir, path, 2, "fsdp", f64)
    assert two["world_size"] == 2
    for key in ("after2", "after3"):
        # Adam amplifies float-summation-order noise on near-zero gradients: compare as a whole
        a = torch.cat([torch.tensor(v, dtype=torch.float64) for _, v in sorted(one[key].items())])
        b = torch.cat([torch.tensor(v, dtype=torch.float64) for _, v in sorted(two[key].items())])
        assert float((a - b).norm() / a.norm()) < 1e-9
    # the loss metrics agree (sums over ranks)
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-9, abs=1e-12)
        assert m2["trained_tokens"] == m1["trained_tokens"]
        assert m2["tokens"] == m1["tokens"]
    # reload restores the checkpoint exactly, and the step after it repeats the first run's
    for name in two["after2"]:
        assert two["reloaded"][name] == two["after2"][name]
        assert two["after3_again"][name] == two["after3"][name]
    # The logprobs file is float32 (PROTOCOL.md): values ~1e-12 apart may round to neighbouring
    # float32s, so allow two float32 ulps (2 * 2**-23 relative), far below a real divergence.
    torch.testing.assert_close(torch.tensor(two["logprobs"], dtype=torch.float64),
                               torch.tensor(one["logprobs"], dtype=torch.float64), rtol=2.4e-7, atol=1e-9)
