"""The CPU policy server answers like vLLM: shapes, token ids, seeds, adapters, errors, queue limits.

The app runs in-process (Starlette's TestClient); the same behaviours are checked over real HTTP,
against this server or a real vLLM, by the TypeScript contract suite in test/contract/.
"""

from __future__ import annotations

import json
import threading
import time
import warnings

import pytest

with warnings.catch_warnings():  # starlette's TestClient nags about httpx; the test needs only its client
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from trajstore_engine.policy_server import PolicyService, ServerConfig  # noqa: E402
from trajstore_engine.policy_server.app import create_app  # noqa: E402
from trajstore_engine.policy_server.make_test_adapter import make_test_adapter  # noqa: E402

BASE = "tiny"
MESSAGES = [{"role": "user", "content": "What is 3 times 4?"}]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": str(make_test_adapter(root / "a", tiny_model_dir, seed=1, rank=8)),
        "b": str(make_test_adapter(root / "b", tiny_model_dir, seed=2, rank=8)),
        "big": str(make_test_adapter(root / "big", tiny_model_dir, seed=3, rank=32)),
    }


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    service = PolicyService(ServerConfig(model=str(tiny_model_dir), served_model_name=BASE, max_queue=4,
                                         max_loras=2))
    with TestClient(create_app(service)) as client:
        yield client, service
    service.close()


def chat(client, **body):
    body = {"model": BASE, "messages": MESSAGES, "max_tokens": 8, **body}
    return client.post("/v1/chat/completions", json=body)


def error_of(response, status):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def test_health_is_200_with_an_empty_body(server):
    client, _ = server
    r = client.get("/health")
    assert r.status_code == 200 and r.content == b""


def test_models_lists_the_base_model_with_vllm_fields(server, tiny_model_dir):
    client, _ = server
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    base = data["data"][0]
    assert base["id"] == BASE and base["object"] == "model" and base["owned_by"] == "vllm"
    assert base["root"] == str(tiny_model_dir) and base["parent"] is None
    assert base["max_model_len"] == 32768 and base["permission"][0]["object"] == "model_permission"


def test_chat_returns_token_ids_logprobs_and_usage_consistently(server):
    client, service = server
    r = chat(client, logprobs=True, top_logprobs=3, n=2, seed=5, return_token_ids=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == BASE
    prompt = body["prompt_token_ids"]
    rendered = service.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == service.tokenizer(rendered, add_special_tokens=False).input_ids
    total = 0
    for i, choice in enumerate(body["choices"]):
        assert choice["index"] == i and choice["message"]["role"] == "assistant"
        ids = choice["token_ids"]
        content = choice["logprobs"]["content"]
        assert 1 <= len(ids) <= 8 and len(content) == len(ids)
        for tok_id, entry in zip(ids, content):
            assert entry["token"] == service.tokenizer.decode([tok_id])
            assert entry["bytes"] == list(entry["token"].encode("utf-8", errors="replace"))
            assert entry["logprob"] <= 0.0 and len(entry["top_logprobs"]) == 3
            # vLLM's order: the sampled token first, then the best tokens by rank
            assert entry["top_logprobs"][0]["token"] == entry["token"]
            assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]
        text_ids = ids
        if choice["finish_reason"] == "stop" and not isinstance(choice["stop_reason"], str):
            text_ids = ids[:-1]  # the stop token's text is left out, as vLLM's detokenizer does
        assert choice["message"]["content"] == service.tokenizer.decode(text_ids, skip_special_tokens=True)
        total += len(ids)
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": total,
                             "total_tokens": len(prompt) + total, "prompt_tokens_details": None}


def test_token_ids_are_left_out_unless_asked(server):
    client, _ = server
    body = chat(client, seed=1).json()
    assert body["prompt_token_ids"] is None and body["choices"][0]["token_ids"] is None
    assert body["choices"][0]["logprobs"] is None


def test_return_tokens_as_token_ids_renders_token_id_strings(server):
    client, _ = server
    body = chat(client, seed=3, logprobs=True, top_logprobs=1, return_tokens_as_token_ids=True,
                return_token_ids=True).json()
    choice = body["choices"][0]
    assert [e["token"] for e in choice["logprobs"]["content"]] == [f"token_id:{t}" for t in choice["token_ids"]]
    assert all(e["top_logprobs"][0]["token"].startswith("token_id:") for e in choice["logprobs"]["content"])


def test_same_seed_same_tokens_and_the_n_samples_differ(server):
    client, _ = server
    first = chat(client, seed=11, n=3, max_tokens=10, return_token_ids=True).json()
    again = chat(client, seed=11, n=3, max_tokens=10, return_token_ids=True).json()
    ids = [c["token_ids"] for c in first["choices"]]
    assert ids == [c["token_ids"] for c in again["choices"]]
    assert len({tuple(x) for x in ids}) == 3
    # sample i of a seeded request is sample 0 of the same request seeded seed + i (vLLM's fan-out)
    shifted = chat(client, seed=12, n=1, max_tokens=10, return_token_ids=True).json()
    assert shifted["choices"][0]["token_ids"] == ids[1]


def test_seeded_tokens_do_not_depend_on_what_shares_the_batch(server):
    client, _ = server
    alone = chat(client, seed=21, max_tokens=6, return_token_ids=True, logprobs=True).json()["choices"][0]
    results = {}

    def send(key, **kw):
        results[key] = chat(client, **kw).json()

    threads = [threading.Thread(target=send, args=("x",), kwargs=dict(seed=21, max_tokens=6, return_token_ids=True,
                                                                       logprobs=True)),
               threading.Thread(target=send, args=("y",), kwargs=dict(
                   seed=99, max_tokens=6, messages=[{"role": "system", "content": "You are a helpful assistant."},
                                                    {"role": "user", "content": "Count the letters in banana"}]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batched = results["x"]["choices"][0]
    assert batched["token_ids"] == alone["token_ids"]
    for a, b in zip(alone["logprobs"]["content"], batched["logprobs"]["content"]):
        assert abs(a["logprob"] - b["logprob"]) < 1e-4


def test_greedy_and_max_tokens_and_length_finish(server):
    client, _ = server
    a = chat(client, temperature=0, max_completion_tokens=5, return_token_ids=True, ignore_eos=True).json()
    b = chat(client, temperature=0, max_completion_tokens=5, return_token_ids=True, ignore_eos=True, seed=4).json()
    assert a["choices"][0]["token_ids"] == b["choices"][0]["token_ids"]
    assert len(a["choices"][0]["token_ids"]) == 5 and a["choices"][0]["finish_reason"] == "length"


def test_stop_string_truncates_the_text_and_is_the_stop_reason(server):
    client, service = server
    base = chat(client, seed=8, max_tokens=12, ignore_eos=True, return_token_ids=True).json()["choices"][0]
    text = base["message"]["content"]
    stop = next((text[i:i + 2] for i in range(2, len(text) - 2) if text[i:i + 2].strip()), None)
    # The seeded sample is deterministic; a text without two printable characters would mean
    # the test no longer exercises stop strings, so that is a failure, not a skip.
    assert stop is not None, f"seed 8 sampled no usable stop string from {text!r}: pick another seed"
    r = chat(client, seed=8, max_tokens=12, ignore_eos=True, stop=[stop], return_token_ids=True).json()["choices"][0]
    assert r["finish_reason"] == "stop" and r["stop_reason"] == stop
    assert r["message"]["content"] == text[:text.find(stop)]
    assert r["token_ids"] == base["token_ids"][:len(r["token_ids"])]


def test_unknown_model_is_vllms_404(server):
    client, _ = server
    err = error_of(chat(client, model="no-such-model"), 404)
    assert err == {"message": "The model `no-such-model` does not exist.", "type": "NotFoundError",
                   "param": "model", "code": 404}


def test_invalid_bodies_are_400_bad_request(server):
    client, _ = server
    assert error_of(client.post("/v1/chat/completions", json={"messages": "hi"}), 400)["type"] == "BadRequestError"
    assert error_of(client.post("/v1/chat/completions", content=b"{not json"), 400)["type"] == "BadRequestError"
    err = error_of(chat(client, logprobs=True, top_logprobs=21), 400)
    assert "greater than max allowed: 20" in err["message"]
    err = error_of(chat(client, top_logprobs=2), 400)
    assert "`logprobs` must be set to true" in err["message"]
    assert "maximum context length" in error_of(chat(client, max_tokens=10 ** 6), 400)["message"]


def test_adapter_load_use_replace_unload(server, adapters):
    client, _ = server
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "pol", "lora_path": adapters["a"]})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'pol' added successfully."
    cards = client.get("/v1/models").json()["data"]
    card = next(c for c in cards if c["id"] == "pol")
    assert card["root"] == adapters["a"] and card["parent"] == BASE

    greedy = dict(temperature=0, max_tokens=6, ignore_eos=True, return_token_ids=True, logprobs=True)
    base = chat(client, **greedy).json()["choices"][0]
    with_a = chat(client, **{**greedy, "model": "pol"}).json()
    assert with_a["model"] == "pol"
    with_a = with_a["choices"][0]
    assert with_a["logprobs"]["content"][0]["logprob"] != base["logprobs"]["content"][0]["logprob"]

    dup = error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "pol", "lora_path": adapters["b"]}), 400)
    assert dup == {"message": "The lora adapter 'pol' has already been loaded. If you want to load the adapter in "
                              "place, set 'load_inplace' to True.", "type": "InvalidUserInput", "param": None,
                   "code": 400}

    r = client.post("/v1/load_lora_adapter", json={"lora_name": "pol", "lora_path": adapters["b"],
                                                   "load_inplace": True})
    assert r.status_code == 200
    client.post("/v1/load_lora_adapter", json={"lora_name": "pol-b", "lora_path": adapters["b"]})
    with_b = chat(client, **{**greedy, "model": "pol"}).json()["choices"][0]
    direct_b = chat(client, **{**greedy, "model": "pol-b"}).json()["choices"][0]
    assert with_b["token_ids"] == direct_b["token_ids"]
    assert with_b["logprobs"]["content"][0]["logprob"] == pytest.approx(direct_b["logprobs"]["content"][0]["logprob"], abs=1e-6)
    assert with_b["logprobs"]["content"][0]["logprob"] != with_a["logprobs"]["content"][0]["logprob"]

    for name in ("pol", "pol-b"):
        r = client.post("/v1/unload_lora_adapter", json={"lora_name": name})
        assert r.status_code == 200 and r.text == f"Success: LoRA adapter '{name}' removed successfully."
    assert [c["id"] for c in client.get("/v1/models").json()["data"]] == [BASE]
    error_of(chat(client, model="pol"), 404)
    again = chat(client, **greedy).json()["choices"][0]
    assert again["token_ids"] == base["token_ids"]


def test_more_adapters_than_max_loras_are_reloaded_on_use(server, adapters):
    client, service = server
    for name, key in (("e1", "a"), ("e2", "b"), ("e3", "a")):
        assert client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": adapters[key]}).status_code == 200
    greedy = dict(temperature=0, max_tokens=4, ignore_eos=True, return_token_ids=True)
    first = chat(client, **greedy, model="e1").json()["choices"][0]["token_ids"]  # e1 was evicted (max_loras=2)
    assert first == chat(client, **greedy, model="e3").json()["choices"][0]["token_ids"]
    for name in ("e1", "e2", "e3"):
        client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def test_adapter_errors_are_vllms(server, adapters, tmp_path):
    client, _ = server
    err = error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/not/an/adapter"}), 404)
    assert err["message"] == "Loading lora x failed: No adapter found for /not/an/adapter"
    assert err["type"] == "NotFoundError"
    err = error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": adapters["big"]}), 500)
    assert err["message"] == "LoRA rank 32 is greater than max_lora_rank 16." and err["type"] == "InternalServerError"
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    err = error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(no_weights)}), 500)
    assert err["message"] == f"{no_weights} doesn't contain tensors"
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text("this is not json")
    error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(bad_json)}), 500)
    err = error_of(client.post("/v1/unload_lora_adapter", json={"lora_name": "never-loaded"}), 404)
    assert err == {"message": "The lora adapter 'never-loaded' cannot be found.", "type": "NotFoundError",
                   "param": None, "code": 404}
    err = error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "", "lora_path": ""}), 400)
    assert err["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    assert [c["id"] for c in client.get("/v1/models").json()["data"]] == [BASE]


def test_queue_full_is_503_and_the_event_loop_keeps_answering(server):
    client, service = server  # max_queue=4 sequences
    err = error_of(chat(client, n=5), 503)
    assert err["type"] == "ServiceUnavailableError"

    done = {}
    long = threading.Thread(target=lambda: done.setdefault("r", chat(client, n=4, max_tokens=400, ignore_eos=True,
                                                                      seed=1)))
    long.start()
    deadline = time.time() + 30
    while service.scheduler.stats()["in_flight"] < 4 and time.time() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models").status_code == 200
    waited = time.perf_counter() - t0
    refused = chat(client, n=1)
    still_running = long.is_alive()
    long.join()
    assert still_running, "the long request finished before the queue could be tested; make it longer"
    error_of(refused, 503)
    assert waited < 1.0, f"/health took {waited:.2f}s while a batch ran: the event loop is blocked"
    assert done["r"].status_code == 200
    assert chat(client, n=1).status_code == 200  # capacity is given back


def test_generation_config_sampling_values_are_request_defaults(tiny_model_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "tiny-topk1"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**config, "top_k": 1}))
    service = PolicyService(ServerConfig(model=str(model_dir), served_model_name=BASE))
    try:
        with TestClient(create_app(service)) as client:
            ids = [chat(client, seed=s, max_tokens=5, ignore_eos=True, return_token_ids=True).json()["choices"][0]["token_ids"]
                   for s in (1, 2)]
            greedy = chat(client, temperature=0, max_tokens=5, ignore_eos=True, return_token_ids=True).json()
            assert ids[0] == ids[1] == greedy["choices"][0]["token_ids"]  # top_k=1 from generation_config
            assert len({tuple(chat(client, seed=s, top_k=0, max_tokens=5, ignore_eos=True, return_token_ids=True)
                               .json()["choices"][0]["token_ids"]) for s in (1, 2)}) == 2  # the request wins
            err = error_of(chat(client, min_p=0.1), 400)
            assert "min_p" in err["message"] and err["param"] == "min_p"
    finally:
        service.close()
