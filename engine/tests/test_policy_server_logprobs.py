"""Behaviour logprobs from the policy server equal the trainer's recomputed logprobs (fp32, CPU).

The trainer's off-policy correction divides its own logprobs by the ones the server returned, so
for the same weights and tokens they must agree: here within 1e-4, for the base model and for an
adapter loaded at runtime, for n > 1 samples and for temperature / top-p requests (vLLM returns
the raw model distribution's logprobs by default, whatever the sampling settings).

Two recomputations: a plain forward of ``load_policy(...).model`` (log_softmax of the logits), and
the engine's own training path (packed attention on the decoder, then
``trajstore_engine.logprobs.token_logprobs`` on the hidden states with the lm_head weight), as
``trainer.Engine.forward`` + ``Engine.logprobs`` compute them.
"""

from __future__ import annotations

import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from trajstore_engine import load_policy  # noqa: E402
from trajstore_engine.policy_server import PolicyService, ServerConfig  # noqa: E402
from trajstore_engine.policy_server.app import create_app  # noqa: E402
from trajstore_engine.policy_server.make_test_adapter import make_test_adapter  # noqa: E402

TOL = 1e-4
REQUESTS = [
    dict(n=3, seed=3, max_tokens=16),
    dict(n=2, seed=4, max_tokens=16, temperature=0.7, top_p=0.9),
    dict(n=1, seed=5, max_tokens=16, temperature=0),
]
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 12 plus 7?"}]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    adapter = make_test_adapter(tmp_path_factory.mktemp("lp") / "adapter", tiny_model_dir, seed=7, rank=8)
    service = PolicyService(ServerConfig(model=str(tiny_model_dir), served_model_name="tiny"))
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "v1", "lora_path": str(adapter)})
        assert r.status_code == 200, r.text
        yield client, tiny_model_dir, adapter
    service.close()


def sampled(client, model):
    """(prompt ids, [(completion ids, server logprobs)]) over REQUESTS."""
    out = []
    for params in REQUESTS:
        body = client.post("/v1/chat/completions", json={
            "model": model, "messages": MESSAGES, "logprobs": True, "return_token_ids": True, **params}).json()
        for choice in body["choices"]:
            out.append((body["prompt_token_ids"], choice["token_ids"],
                        [e["logprob"] for e in choice["logprobs"]["content"]]))
    return out


def plain_forward_logprobs(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logprobs[pos, ids[0, len(prompt):]]


def engine_path_logprobs(model, prompt, completion):
    from trajstore_engine import attention
    from trajstore_engine.logprobs import token_logprobs

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = torch.tensor(prompt + completion)
    kwargs = attention.packed_kwargs([len(ids)], torch.device("cpu"))
    with torch.no_grad():
        hidden = inner.model(input_ids=ids[None], position_ids=torch.arange(len(ids))[None], use_cache=False,
                             **kwargs).last_hidden_state[0]
        target_pos = torch.arange(len(prompt), len(ids))
        lp, _entropy = token_logprobs(hidden.index_select(0, target_pos - 1), inner.lm_head.weight,
                                      ids.index_select(0, target_pos))
    return lp


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_server_logprobs_equal_a_plain_forward_of_the_engines_model(setup, which):
    client, model_dir, adapter = setup
    policy = load_policy(model_dir, adapter_dir=adapter if which == "adapter" else None)
    worst = 0.0
    for prompt, completion, server_lp in sampled(client, "v1" if which == "adapter" else "tiny"):
        ref = plain_forward_logprobs(policy.model, prompt, completion)
        worst = max(worst, (ref - torch.tensor(server_lp)).abs().max().item())
    print(f"\n[{which}] max |server - plain forward| logprob = {worst:.2e}")
    assert worst < TOL


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_server_logprobs_equal_the_engines_training_logprobs(setup, which):
    client, model_dir, adapter = setup
    from trajstore_engine import attention

    policy = load_policy(model_dir, adapter_dir=adapter if which == "adapter" else None,
                         attn_implementation=attention.PACKED_ATTENTION)
    worst = 0.0
    for prompt, completion, server_lp in sampled(client, "v1" if which == "adapter" else "tiny"):
        ref = engine_path_logprobs(policy.model, prompt, completion)
        worst = max(worst, (ref - torch.tensor(server_lp)).abs().max().item())
    print(f"\n[{which}] max |server - engine token_logprobs| = {worst:.2e}")
    assert worst < TOL
