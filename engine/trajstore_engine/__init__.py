"""trajstore's training engine: LoRA policy-gradient steps for LLM agents in PyTorch.

Entry points (``python -m trajstore_engine --help``): ``serve`` (the JSON-lines protocol of
PROTOCOL.md, spoken with the TypeScript trainer), ``make-tiny-model``, ``make-tiny-vl-model``,
``bench``.

Stable library API for other parts of trajstore (e.g. the CPU policy server):
``load_policy``, ``load_tokenizer``, ``load_processor``, ``load_base_model``
(trajstore_engine.model), ``make_tiny_model`` (trajstore_engine.tiny) and ``make_tiny_vl_model``
(trajstore_engine.tiny_vl).
"""

__version__ = "0.1.0"

from .model import LoadedPolicy, load_base_model, load_policy, load_processor, load_tokenizer  # noqa: E402
from .tiny import make_tiny_model  # noqa: E402
from .tiny_vl import make_tiny_vl_model  # noqa: E402

__all__ = [
    "__version__",
    "LoadedPolicy",
    "load_base_model",
    "load_policy",
    "load_processor",
    "load_tokenizer",
    "make_tiny_model",
    "make_tiny_vl_model",
]
