import torch

from trajstore_engine import load_policy, make_tiny_model
from trajstore_engine.errors import MODEL_LOAD, EngineError
from trajstore_engine.tiny import directory_digest


def test_tiny_model_is_deterministic_for_a_seed(tmp_path, tiny_model_dir):
    again = make_tiny_model(tmp_path / "again", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert directory_digest(again) == directory_digest(tiny_model_dir)
    assert directory_digest(other) != directory_digest(tiny_model_dir)


def test_tiny_model_loads_as_qwen3_with_a_working_chat_template(tiny_model_dir):
    policy = load_policy(tiny_model_dir, device="cpu")
    assert policy.model.config.model_type == "qwen3"
    assert policy.dtype == torch.float32
    enc = policy.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 plus 7?"}], add_generation_prompt=True, tokenize=True
    )
    ids = enc["input_ids"]
    text = policy.tokenizer.decode(ids)
    assert text == "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n"
    assert max(ids) < policy.model.config.vocab_size
    out = policy.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, len(ids) + 4) or out.shape[1] <= len(ids) + 4


def test_missing_model_directory_is_a_typed_error(tmp_path):
    try:
        load_policy(tmp_path / "nope")
    except EngineError as err:
        assert err.code == MODEL_LOAD
        assert "make-tiny-model" in err.hint
    else:
        raise AssertionError("expected EngineError")
