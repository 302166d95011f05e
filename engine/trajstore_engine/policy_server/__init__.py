"""A CPU stand-in for vLLM's OpenAI-compatible server: the part of its API trajstore uses.

On GPU hosts vLLM serves the policy; on machines without a GPU this server does, so rollouts,
adapter publishing and the trainer's off-policy checks run for real. It speaks vLLM's wire format
(see ``app.py`` for the routes and ``protocol.py`` for the shapes) and computes with the engine's
own ``load_base_model``/``load_tokenizer`` and PEFT, so behaviour logprobs equal the trainer's
recomputed ones (fp32, CPU).

    python -m trajstore_engine.policy_server --model DIR --port 8000
    python -m trajstore_engine.policy_server.make_test_adapter OUT --model DIR --seed 1 --rank 8

Modules: ``protocol`` (wire shapes, vLLM's errors), ``generation`` (batched sampling with a KV
cache, raw logprobs, multimodal positions), ``multimodal`` (images: data URLs, Qwen3-VL's pad
expansion, image settings), ``adapters`` (PEFT multi-adapter registry), ``scheduler`` (bounded
queue, the worker thread), ``service`` (validation and responses), ``app`` (routes).
"""

from .service import PolicyService, ServerConfig  # noqa: F401
