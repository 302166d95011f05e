"""Checkpoints: PEFT loads the adapter as the engine computes it, a run killed after a save resumes
to the same weights as one never stopped, and a save that dies midway leaves nothing loadable."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_engine, random_batch, randomize_lora, save_batch
from trajstore_engine import checkpoint
from trajstore_engine.errors import CHECKPOINT, EngineError

ENGINE_DIR = Path(__file__).resolve().parents[1]


def test_peft_from_pretrained_reproduces_the_engines_logprobs(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine = make_engine(tiny_model_dir, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    randomize_lora(engine, seed=2)
    batch = random_batch(n_seq=4, seed=3)
    path = save_batch(tmp_path, batch)
    engine.train_step(path)
    saved = engine.save(str(tmp_path / "ckpt"))
    ours = engine.compute_logprobs(path, None)["logprobs"]

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    peft_model = PeftModel.from_pretrained(base, saved["adapter_path"]).eval()
    cu = batch.cu_seqlens.tolist()
    with torch.no_grad():
        for i in range(batch.num_sequences):
            ids = batch.input_ids[cu[i]:cu[i + 1]]
            logp = torch.log_softmax(peft_model(input_ids=ids[None]).logits[0].double(), -1)
            theirs = logp[:-1].gather(1, ids[1:, None])[:, 0]
            torch.testing.assert_close(ours[cu[i] + 1:cu[i + 1]].double(), theirs, rtol=0, atol=2e-5)
    # and the adapter is not the identity: without it the logprobs differ
    with torch.no_grad(), peft_model.disable_adapter():
        ids = batch.input_ids[cu[0]:cu[1]]
        plain = torch.log_softmax(peft_model(input_ids=ids[None]).logits[0].double(), -1)[:-1].gather(1, ids[1:, None])[:, 0]
    assert float((plain - ours[cu[0] + 1:cu[1]].double()).abs().max()) > 1e-3


class Serve:
    """`python -m trajstore_engine serve` as the trainer runs it: JSON lines over stdin/stdout."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR), "OMP_NUM_THREADS": "1", "TRAJSTORE_ENGINE_LOG": "WARNING"}
        self.proc = subprocess.Popen([sys.executable, "-m", "trajstore_engine", "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert json.loads(self.proc.stdout.readline())["event"] == "ready"
        self.next_id = 0

    def send(self, cmd: str, **fields) -> int:
        self.next_id += 1
        self.proc.stdin.write(json.dumps({"id": self.next_id, "cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        return self.next_id

    def call(self, cmd: str, **fields) -> dict:
        sent = self.send(cmd, **fields)
        reply = json.loads(self.proc.stdout.readline())
        assert reply["id"] == sent
        assert reply["ok"], reply["error"]
        return reply["result"]

    def close(self) -> None:
        self.call("shutdown")
        assert self.proc.wait(timeout=60) == 0


def test_save_kill_load_step_gives_the_weights_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    # LoRA dropout makes each step draw random numbers: the RNG state must come back too.
    config = {"model": {"path": str(tiny_model_dir), "device": "cpu"}, "lora": {"dropout": 0.1},
              "optim": {"lr": 1e-2, "max_grad_norm": 1.0, "warmup_steps": 2},
              "training": {"micro_batch_tokens": 48}, "seed": 5}
    batches = [save_batch(tmp_path, random_batch(n_seq=5, seed=40 + i), f"b{i}") for i in range(3)]

    straight = Serve()
    straight.call("init", config=config)
    for version, b in enumerate(batches, start=1):
        straight.call("train_step", batch=b, policy_version=version)
    straight.call("save", path=str(tmp_path / "straight"))
    straight.close()

    first = Serve()
    first.call("init", config=config)
    for version, b in enumerate(batches[:2], start=1):
        first.call("train_step", batch=b, policy_version=version)
    first.call("save", path=str(tmp_path / "at-2"), metadata={"offsets": {"trajectories/0": 17}})
    first.send("train_step", batch=batches[2], policy_version=3)  # in flight when the kill comes
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(timeout=60) == -signal.SIGKILL

    resumed = Serve()
    resumed.call("init", config=config)
    state = resumed.call("load", path=str(tmp_path / "at-2"))
    assert (state["step"], state["policy_version"], state["metadata"]) == (2, 2, {"offsets": {"trajectories/0": 17}})
    resumed.call("train_step", batch=batches[2], policy_version=3)
    resumed.call("save", path=str(tmp_path / "resumed"))
    resumed.close()

    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    trained = load_file(str(tmp_path / "at-2" / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(a[n], trained[n]) for n in a), "step 3 changed the adapter"
    for name in ("straight", "resumed"):
        assert json.loads((tmp_path / name / "trainer_state.json").read_text())["step"] == 3


def test_a_save_that_dies_before_its_manifest_leaves_nothing_that_loads(tiny_model_dir, tmp_path, monkeypatch):
    engine = make_engine(tiny_model_dir)
    target = tmp_path / "ckpt"
    real_write = checkpoint._write_text

    def die_at_manifest(path, text):
        if path.name == checkpoint.MANIFEST:
            raise KeyboardInterrupt("killed while writing the manifest")
        real_write(path, text)

    # A SIGKILL runs no cleanup: keep the half-written directory as a real crash would.
    monkeypatch.setattr(checkpoint, "_write_text", die_at_manifest)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        engine.save(str(target))
    monkeypatch.undo()

    assert not target.exists(), "the checkpoint's own name appears only once it is complete"
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.tmp-")]
    assert (leftover / "adapter" / "adapter_model.safetensors").is_file()
    for path in (target, leftover):
        with pytest.raises(EngineError) as info:
            engine.load(str(path))
        assert info.value.code == CHECKPOINT

    engine.save(str(target))
    assert engine.load(str(target))["step"] == 0


def test_a_corrupted_checkpoint_file_is_refused(tiny_model_dir, tmp_path):
    engine = make_engine(tiny_model_dir)
    engine.save(str(tmp_path / "ckpt"))
    blob = tmp_path / "ckpt" / "optimizer.pt"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(EngineError) as info:
        engine.load(str(tmp_path / "ckpt"))
    assert info.value.code == CHECKPOINT
    assert "optimizer.pt" in info.value.message and "checksum" in info.value.message


def test_adapter_config_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    # PEFT keeps target_modules as a set; without sorting, its order in adapter_config.json (and
    # the adapter store's checksum) changed with PYTHONHASHSEED.
    script = (
        "import sys; from pathlib import Path; from peft import LoraConfig; "
        "from trajstore_engine.checkpoint import write_adapter_config; "
        "c = LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']); "
        "write_adapter_config(c, Path(sys.argv[1]))"
    )
    written = []
    for seed in ("1", "2", "3", "4"):
        out = tmp_path / seed
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, cwd=Path(checkpoint.__file__).parent.parent)
        written.append((out / "adapter_config.json").read_bytes())
    assert all(w == written[0] for w in written)
    assert json.loads(written[0])["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
