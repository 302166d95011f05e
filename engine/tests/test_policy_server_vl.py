"""The CPU policy server serves a Qwen3-VL-style model as vLLM serves Qwen3-VL (fp32, CPU, tiny VL model).

- prompt ids: each image's ``<|image_pad|>`` expanded to N pads, N from vLLM's arithmetic
  (``Qwen3VLProcessingInfo._get_vision_info`` with transformers' ``smart_resize``, vLLM 0.34.0),
  recomputed here by the test's own implementation and checked against exact vectors;
- behaviour logprobs equal a plain Hugging Face forward with the processor's pixel values, with and
  without a LoRA adapter loaded at runtime, also when image and text requests share a batch;
- hostile or malformed images are 400s in vLLM's error shape, and the server keeps serving;
- text-only requests still work on the VL model.

The app runs in-process (Starlette's TestClient), as in test_policy_server_api.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import struct
import threading
import time
import warnings
import zlib

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from trajstore_engine import load_policy  # noqa: E402
from trajstore_engine.policy_server import PolicyService, ServerConfig  # noqa: E402
from trajstore_engine.policy_server.app import create_app  # noqa: E402
from trajstore_engine.policy_server.make_test_adapter import make_test_adapter  # noqa: E402

BASE = "tiny-vl"
TOL = 1e-4
# Qwen/Qwen3-VL-32B-Instruct's preprocessor_config.json: size {shortest_edge 65536, longest_edge 16777216}
QWEN3_VL_32B = {"min_pixels": 65536, "max_pixels": 16777216}
# the tiny model's own processor (trajstore_engine.tiny_vl): 4..64 image tokens
TINY = {"min_pixels": 4096, "max_pixels": 65536}
PATCH, MERGE = 16, 2
MAX_IMAGE_BYTES = 2 << 20


# ---------------------------------------------------------------- vLLM's arithmetic, reimplemented


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """transformers' qwen2_vl ``smart_resize`` as vLLM calls it (factor = patch * merge). Python's
    round() rounds half to even: 720 / 32 = 22.5 -> 22, which is why 1280x720 gives 880 pads."""
    assert max(height, width) / min(height, width) <= 200
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def num_pads(width: int, height: int, settings: dict) -> int:
    """vLLM ``_get_vision_info``: grid (1, h/16, w/16) -> grid_t * grid_h * grid_w // merge**2."""
    h, w = smart_resize(height, width, PATCH * MERGE, settings["min_pixels"], settings["max_pixels"])
    return 1 * (h // PATCH) * (w // PATCH) // MERGE ** 2


def test_the_tiny_vocabulary_is_as_assumed(tiny_vl_model_dir):
    from trajstore_engine.model import load_tokenizer

    assert load_tokenizer(tiny_vl_model_dir).convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD_ID


def test_the_reimplemented_arithmetic_gives_the_issues_figures():
    assert num_pads(1280, 720, QWEN3_VL_32B) == 880  # 704 x 1280 px -> 44 x 80 patches -> 880 tokens
    assert num_pads(1280, 720, TINY) == 60  # scaled to 192 x 320
    assert num_pads(32, 32, TINY) == 4  # scaled up to min_pixels: 64 x 64


# ---------------------------------------------------------------- images


def picture(width: int, height: int, seed: int = 0, mode: str = "RGB"):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 255, width)[None, :, None]
    y = torch.linspace(0, 255, height)[:, None, None]
    base = torch.cat([x.expand(height, width, 1), y.expand(height, width, 1),
                      ((x + y) / 2).expand(height, width, 1)], dim=-1)
    noise = torch.randint(-8, 8, (height, width, 3), generator=g)
    pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    return image.convert(mode) if mode != "RGB" else image


def encode(image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def data_url(raw: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


def image_part(raw: bytes, media: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(raw, media)}}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in a few dozen bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


IMAGES = {  # name -> (width, height, encoded bytes, media type)
    "wide": (1280, 720, encode(picture(1280, 720, 1)), "image/png"),
    "photo": (640, 480, encode(picture(640, 480, 2), "JPEG"), "image/jpeg"),
    "portrait": (333, 1001, encode(picture(333, 1001, 3)), "image/png"),
    "icon": (32, 32, encode(picture(32, 32, 4, mode="RGBA")), "image/png"),
}


def conversation(*names: str) -> list[dict]:
    """A multi-turn conversation: images in several messages, several per message, in the given order."""
    first, rest = names[:2], names[2:]
    return [
        {"role": "system", "content": "You are a computer-use agent."},
        {"role": "user", "content": [image_part(*IMAGES[n][2:]) for n in first[:1]]
         + [{"type": "text", "text": "Here is the screen."}]
         + [image_part(*IMAGES[n][2:]) for n in first[1:]]},
        {"role": "assistant", "content": "click(10, 20)"},
        {"role": "user", "content": [{"type": "text", "text": "After the click:"}]
         + [image_part(*IMAGES[n][2:]) for n in rest]},
    ]


def template_messages(messages: list[dict]) -> list[dict]:
    """The messages as vLLM hands them to the chat template ("openai" content format)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        out.append({"role": m["role"], "content": [
            {"type": "image"} if p["type"] == "image_url" else p for p in content]})
    return out


def pil_images(messages: list[dict]):
    from PIL import Image

    out = []
    for m in messages:
        if isinstance(m["content"], list):
            for p in m["content"]:
                if p["type"] == "image_url":
                    raw = base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
                    image = Image.open(io.BytesIO(raw))
                    if image.mode == "RGBA":  # vLLM flattens transparency onto white
                        flat = Image.new("RGB", image.size, (255, 255, 255))
                        flat.paste(image, mask=image.split()[3])
                        image = flat
                    out.append(image.convert("RGB"))
    return out


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vl_adapter(tiny_vl_model_dir, tmp_path_factory):
    return make_test_adapter(tmp_path_factory.mktemp("vl-adapters") / "a", tiny_vl_model_dir, seed=5, rank=8)


@pytest.fixture(scope="module")
def server(tiny_vl_model_dir, vl_adapter):
    service = PolicyService(ServerConfig(model=str(tiny_vl_model_dir), served_model_name=BASE,
                                         max_image_bytes=MAX_IMAGE_BYTES, max_images_per_prompt=6,
                                         max_request_decode_bytes=8 << 20))
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "vl1", "lora_path": str(vl_adapter)})
        assert r.status_code == 200, r.text
        yield client, service
    service.close()


@pytest.fixture(scope="module")
def reference(tiny_vl_model_dir, vl_adapter):
    """Plain Hugging Face models and the processor, loaded apart from the server."""
    base = load_policy(tiny_vl_model_dir)
    tuned = load_policy(tiny_vl_model_dir, adapter_dir=vl_adapter)
    return {"base": base.model, "vl1": tuned.model, "processor": base.processor, "tokenizer": base.tokenizer}


IMAGE_PAD_ID = 9  # <|image_pad|> in the tiny VL tokenizer (checked in test_the_tiny_vocabulary_is_as_assumed)


def chat(client, messages, **body):
    """A chat request. A sampled <|image_pad|> stops the sequence: the server embeds it as text (as vLLM
    does), but a plain HF forward would take it for an image slot, so it may only come last (the last
    token's logprob does not depend on its own embedding)."""
    body = {"model": BASE, "messages": messages, "max_tokens": 6, "return_token_ids": True,
            "stop_token_ids": [IMAGE_PAD_ID], **body}
    return client.post("/v1/chat/completions", json=body)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response, status):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def expected_prompt_ids(tokenizer, messages, settings, add_generation_prompt=True):
    """Render with the model's template, then replace the i-th pad by num_pads(i-th image) pads."""
    text = tokenizer.apply_chat_template(template_messages(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    sizes = iter([(im.width, im.height) for im in pil_images(messages)])
    out = []
    for t in ids:
        out.extend([pad] * num_pads(*next(sizes), settings) if t == pad else [t])
    return out


# ---------------------------------------------------------------- (a) prompt ids


@pytest.mark.parametrize("settings", [None, QWEN3_VL_32B], ids=["tiny-defaults", "qwen3-vl-32b-settings"])
def test_prompt_ids_expand_each_image_like_vllm(server, reference, settings):
    client, _ = server
    tok = reference["tokenizer"]
    messages = conversation("wide", "photo", "portrait", "icon")
    extra = {"mm_processor_kwargs": settings} if settings else {}
    body = ok(chat(client, messages, **extra))
    ids = body["prompt_token_ids"]
    applied = settings or TINY
    assert ids == expected_prompt_ids(tok, messages, applied)

    # the exact pad runs, image by image and in order, between <|vision_start|> and <|vision_end|>
    start, pad, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == start:
            j = i + 1
            while ids[j] == pad:
                j += 1
            assert ids[j] == end
            runs.append(j - i - 1)
            i = j
        i += 1
    order = ["wide", "photo", "portrait", "icon"]
    assert runs == [num_pads(IMAGES[n][0], IMAGES[n][1], applied) for n in order]
    if settings is QWEN3_VL_32B:
        assert runs[0] == 880
        assert runs == [880, 300, 310, 64]
    else:
        assert runs == [60, 54, 52, 4]

    # the same vector from transformers' own processor (its own expansion), at the same settings
    hf = reference["processor"](text=[tok.apply_chat_template(template_messages(messages), tokenize=False,
                                                              add_generation_prompt=True)],
                                images=pil_images(messages), return_tensors="pt",
                                size={"shortest_edge": applied["min_pixels"], "longest_edge": applied["max_pixels"]})
    assert hf["input_ids"][0].tolist() == ids

    # trajstore's extension reports what was applied, image by image in order
    report = body["trajstore"]
    assert report["image_processor"] == {**applied, "patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    assert [im["sha256"] for im in report["images"]] == [hashlib.sha256(IMAGES[n][2]).hexdigest() for n in order]
    assert [im["num_image_tokens"] for im in report["images"]] == runs
    assert [(im["width"], im["height"]) for im in report["images"]] == [IMAGES[n][:2] for n in order]
    assert report["images"][0]["image_grid_thw"] == ([1, 44, 80] if settings else [1, 12, 20])
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_request_settings_follow_vllms_precedence(server, reference):
    client, _ = server
    messages = conversation("wide")
    # size.longest_edge alone, then images_kwargs over flat, then min/max_pixels over size
    cases = [
        ({"size": {"longest_edge": 16384}}, {"min_pixels": 4096, "max_pixels": 16384}),
        ({"max_pixels": 16384, "images_kwargs": {"max_pixels": 32768}}, {"min_pixels": 4096, "max_pixels": 32768}),
        ({"max_pixels": 8192, "size": {"longest_edge": 65536}}, {"min_pixels": 4096, "max_pixels": 8192}),
    ]
    for kwargs, applied in cases:
        body = ok(chat(client, messages, mm_processor_kwargs=kwargs))
        assert body["trajstore"]["image_processor"]["max_pixels"] == applied["max_pixels"], kwargs
        assert body["prompt_token_ids"] == expected_prompt_ids(reference["tokenizer"], messages, applied)


def test_the_servers_mm_processor_kwargs_apply_unless_the_request_overrides(tiny_vl_model_dir, reference):
    service = PolicyService(ServerConfig(model=str(tiny_vl_model_dir), served_model_name=BASE,
                                         mm_processor_kwargs=dict(QWEN3_VL_32B)))
    try:
        with TestClient(create_app(service)) as client:
            messages = conversation("wide")
            body = ok(chat(client, messages, max_tokens=1))
            assert body["trajstore"]["images"][0]["num_image_tokens"] == 880
            body = ok(chat(client, messages, max_tokens=1, mm_processor_kwargs={"max_pixels": 65536}))
            assert body["trajstore"]["images"][0]["num_image_tokens"] == 60
            assert body["trajstore"]["image_processor"]["min_pixels"] == 65536
    finally:
        service.close()


def test_tokenize_expands_images_like_the_chat_route(server, reference):
    client, _ = server
    messages = conversation("photo", "icon")
    r = client.post("/tokenize", json={"model": BASE, "messages": messages})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == expected_prompt_ids(reference["tokenizer"], messages, TINY)
    assert r.json()["tokens"] == ok(chat(client, messages, max_tokens=1))["prompt_token_ids"]


# ---------------------------------------------------------------- (b) behaviour logprobs


def reference_logprobs(model, processor, tokenizer, messages, prompt_ids, completion):
    """A plain forward of the HF model (transformers computes the multimodal rotary positions from
    mm_token_type_ids), pixel values from the model's own processor; full-vocab log_softmax."""
    text = tokenizer.apply_chat_template(template_messages(messages), tokenize=False, add_generation_prompt=True)
    images = pil_images(messages)
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == prompt_ids
    assert IMAGE_PAD_ID not in completion[:-1]
    ids = torch.tensor([prompt_ids + completion[:-1]])  # the last token is a target only
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(completion) - 1), dtype=torch.long)], dim=1)
    kwargs = {}
    if images:
        kwargs = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
    with torch.no_grad():
        logits = model(input_ids=ids, mm_token_type_ids=types, **kwargs).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(completion) - 1)
    return logprobs[pos, torch.tensor(completion)]


def worst_difference(reference, which, messages, body) -> float:
    worst = 0.0
    for choice in body["choices"]:
        ref = reference_logprobs(reference[which], reference["processor"], reference["tokenizer"], messages,
                                 body["prompt_token_ids"], choice["token_ids"])
        server_lp = torch.tensor([e["logprob"] for e in choice["logprobs"]["content"]])
        worst = max(worst, (ref - server_lp).abs().max().item())
    return worst


@pytest.mark.parametrize("which", ["base", "vl1"])
def test_behaviour_logprobs_equal_a_plain_hf_forward_with_pixel_values(server, reference, which):
    client, _ = server
    worst = 0.0
    for messages, params in [
        (conversation("wide", "photo", "icon"), dict(n=2, seed=11, max_tokens=12, ignore_eos=True)),
        (conversation("portrait"), dict(n=1, seed=12, max_tokens=12, temperature=0.7, top_p=0.9)),
        (conversation("photo"), dict(n=1, max_tokens=8, temperature=0)),
    ]:
        body = ok(chat(client, messages, model=which if which != "base" else BASE, logprobs=True, **params))
        assert all(len(c["token_ids"]) >= 1 for c in body["choices"])
        worst = max(worst, worst_difference(reference, which, messages, body))
    print(f"\n[{which}] max |server - HF forward| logprob with images = {worst:.2e}")
    assert worst < TOL


def test_the_adapter_changes_what_the_model_says_about_images(server):
    client, _ = server
    messages = conversation("wide", "icon")
    base = ok(chat(client, messages, seed=3, logprobs=True, max_tokens=4, ignore_eos=True))
    tuned = ok(chat(client, messages, model="vl1", seed=3, logprobs=True, max_tokens=4, ignore_eos=True))
    assert base["prompt_token_ids"] == tuned["prompt_token_ids"]
    lp_base = base["choices"][0]["logprobs"]["content"][0]["logprob"]
    lp_tuned = tuned["choices"][0]["logprobs"]["content"][0]["logprob"]
    assert base["choices"][0]["token_ids"] != tuned["choices"][0]["token_ids"] or abs(lp_base - lp_tuned) > 1e-3


def test_the_vl_test_adapter_covers_the_language_model_only(vl_adapter):
    from safetensors import safe_open

    with safe_open(str(vl_adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".language_model.layers." in k for k in keys)
    assert not any("visual" in k for k in keys)


def test_image_and_text_requests_sharing_a_batch_get_their_own_logprobs(server, reference, monkeypatch):
    """Left padding, per-row multimodal positions and row-ordered pixel values in one prefill: each
    request's logprobs still equal its own HF forward, and seeded tokens equal the request sent alone."""
    client, service = server
    requests = [
        (conversation("wide", "icon"), dict(seed=31, n=2)),
        ([{"role": "user", "content": "Say something about nothing."}], dict(seed=32)),
        (conversation("portrait"), dict(seed=33)),
    ]
    alone = [ok(chat(client, m, logprobs=True, max_tokens=8, ignore_eos=True, **p)) for m, p in requests]

    sizes: list[int] = []
    gate = threading.Event()
    original = service.scheduler._run_batch

    def recording(adapter, payloads):
        sizes.append(len(payloads))
        if len(sizes) == 1:
            gate.wait(30)  # hold the worker until the others are queued
        return original(adapter, payloads)

    monkeypatch.setattr(service.scheduler, "_run_batch", recording)
    results: dict[int, dict] = {}

    def send(i, messages, params):
        results[i] = ok(chat(client, messages, **{"logprobs": True, "max_tokens": 8, "ignore_eos": True, **params}))

    blocker = threading.Thread(target=send, args=(-1, [{"role": "user", "content": "hold"}], {"max_tokens": 1}))
    blocker.start()
    deadline = time.time() + 30
    while not sizes and time.time() < deadline:
        time.sleep(0.01)
    threads = [threading.Thread(target=send, args=(i, m, p)) for i, (m, p) in enumerate(requests)]
    for t in threads:
        t.start()
    while service.scheduler.stats()["waiting_requests"] < len(requests) and time.time() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in [blocker, *threads]:
        t.join(60)
    assert sizes[:2] == [1, len(requests)], sizes  # the three ran as one batch

    worst = 0.0
    for i, (messages, _params) in enumerate(requests):
        batched = results[i]
        assert batched["prompt_token_ids"] == alone[i]["prompt_token_ids"]
        assert [c["token_ids"] for c in batched["choices"]] == [c["token_ids"] for c in alone[i]["choices"]]
        worst = max(worst, worst_difference(reference, "base", messages, batched))
    print(f"\n[batched] max |server - HF forward| logprob = {worst:.2e}")
    assert worst < TOL


# ---------------------------------------------------------------- (c) bad inputs


def one_image(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "what is this?"}]}]


BAD = {
    "http URL": ("https://example.com/screen.png", 400, "cannot fetch images over HTTP"),
    "file URL": ("file:///etc/passwd", 400, "Cannot load local files without `--allowed-local-media-path`."),
    "other scheme": ("ftp://example.com/a.png", 400, "The URL must be either a HTTP, data or file URL."),
    "no comma": ("data:image/png;base64", 400, "missing ',' separator"),
    "not base64": ("data:image/png,rawpixels", 501, "Only base64 data URLs are supported for now."),
    "corrupt base64": ("data:image/png;base64,iVBORw0KGgo*&^%$", 400, "invalid base64"),
    "bad padding": ("data:image/png;base64,iVBORw0KGgo", 400, "invalid base64"),
    "not an image": (data_url(b"hello, world" * 10), 400, "Failed to load image"),
    "gif": (data_url(encode(picture(8, 8), "GIF"), "image/gif"), 400, "Failed to load image"),
    "truncated png": (data_url(encode(picture(64, 64))[:300]), 400, "Failed to load image"),
    "decompression bomb": (data_url(png_header_only(5000, 5000)), 400,
                           "Image dimensions 5000x5000 (25000000 pixels) exceed the maximum of 16777216 pixels"),
    "huge bomb": (data_url(png_header_only(100_000, 100_000)), 400, "Failed to load image"),
    "too many bytes": (data_url(b"\0" * (MAX_IMAGE_BYTES + 1024)), 400, "larger than 2097152 bytes"),
    "aspect ratio": (data_url(encode(picture(1000, 4))), 400, "aspect ratio must be smaller than 200"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_images_are_refused_in_vllms_error_shape_and_the_server_keeps_serving(server, case):
    client, _ = server
    url, status, message = BAD[case]
    err = error_of(chat(client, one_image(url)), status)
    assert message in err["message"], err
    assert err["type"] == ("NotImplementedError" if status == 501 else "BadRequestError")
    assert client.get("/health").status_code == 200
    good = ok(chat(client, conversation("icon"), max_tokens=2))
    assert good["choices"][0]["token_ids"]


@pytest.mark.parametrize("kwargs, message", [
    ({"do_resize": False}, "do_resize not supported"),
    ({"max_pixels": -1}, "must be a positive integer"),
    ({"size": {"height": 10}}, "size must be an object with shortest_edge"),
    ({"min_pixels": 64 * 1024 * 1024}, "--max-image-pixels"),
])
def test_bad_mm_processor_kwargs_are_400(server, kwargs, message):
    client, _ = server
    err = error_of(chat(client, conversation("icon"), mm_processor_kwargs=kwargs), 400)
    assert message in err["message"] and err["param"] == "mm_processor_kwargs"


def test_more_images_than_the_limit_are_refused(server):
    client, _ = server
    messages = [{"role": "user", "content": [image_part(*IMAGES["icon"][2:])] * 7}]
    err = error_of(chat(client, messages), 400)
    assert err["message"] == "At most 6 image(s) may be provided in one prompt."


def test_a_request_whose_images_decode_past_its_budget_is_refused(server):
    client, _ = server
    messages = [{"role": "user", "content": [image_part(*IMAGES["wide"][2:])] * 3}]  # 3 x 1280x720x4 > 8 MiB
    err = error_of(chat(client, messages), 400)
    assert err["message"].startswith("Request decoded media exceeds --max-request-decode-bytes=8388608")


def test_a_pad_without_an_image_or_an_image_without_a_pad_is_refused(server):
    client, _ = server
    text_with_pad = [{"role": "user", "content": [{"type": "text", "text": "<|image_pad|>"},
                                                  image_part(*IMAGES["icon"][2:])]}]
    err = error_of(chat(client, text_with_pad), 400)
    assert "Expected there to be 1 prompt updates corresponding to 1 image items, but instead found 2" in err["message"]


def test_images_for_a_text_model_are_refused(tiny_model_dir):
    service = PolicyService(ServerConfig(model=str(tiny_model_dir), served_model_name="tiny"))
    try:
        with TestClient(create_app(service)) as client:
            r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": conversation("icon"),
                                                          "max_tokens": 2})
            err = error_of(r, 400)
            assert "accepts text content only" in err["message"]
    finally:
        service.close()


# ---------------------------------------------------------------- (d) text only


def test_text_only_requests_work_on_the_vl_model(server, reference):
    client, _ = server
    tok = reference["tokenizer"]
    for messages in ([{"role": "user", "content": "What is 3 times 4?"}],
                     [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "What is "},
                                                   {"type": "text", "text": "3 times 4?"}]}]):
        body = ok(chat(client, messages, logprobs=True, seed=4, n=2, max_tokens=8))
        rendered = tok.apply_chat_template(template_messages(messages), tokenize=False, add_generation_prompt=True)
        assert body["prompt_token_ids"] == tok(rendered, add_special_tokens=False).input_ids
        assert "trajstore" not in body  # the extension appears only when images were served
        assert worst_difference(reference, "base", messages, body) < TOL
        assert worst_difference(reference, "vl1", messages, ok(chat(client, messages, model="vl1", logprobs=True,
                                                                    seed=4, max_tokens=8))) < TOL
    # vLLM's "openai" format hands text parts to the template one by one (no newline joins them)
    assert "What is 3 times 4?" in tok.decode(body["prompt_token_ids"])
