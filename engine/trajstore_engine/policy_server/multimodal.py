"""Images in chat requests, served the way vLLM serves Qwen3-VL.

Every rule here is read from vLLM 0.34.0's source (the wheel ``vllm-0.34.0-cp38-abi3``); file paths
below are relative to its ``vllm/`` package. The pipeline, per request:

1. **Image parts** (``{"type": "image_url", "image_url": {"url": ...}}``) are loaded from ``data:``
   URLs only (``MediaConnector.load_from_url`` / ``_load_data_url``, ``multimodal/media/connector.py``;
   ``ImageMediaIO.load_bytes``, ``multimodal/media/image.py``): RFC 2397 parsing with vLLM's messages,
   a pixel cap checked on the header before any pixel is decoded (vLLM: ``VLLM_MAX_IMAGE_PIXELS``),
   EXIF orientation applied (``normalize_image``), transparency flattened onto white
   (``convert_image_mode``, ``multimodal/image.py``). This server cannot fetch ``http(s)``/``file`` URLs.
2. **Image settings** (``min_pixels``/``max_pixels``) come from the image processor's ``size``,
   the server's ``--mm-processor-kwargs`` and the request's ``mm_processor_kwargs``, resolved as
   ``Qwen2VLProcessingInfo._complete_mm_processor_size_aliases``,
   ``_merge_and_resolve_mm_processor_kwargs`` and ``_get_vision_size`` do
   (``model_executor/models/qwen2_vl.py``; precedence configured flat < configured ``images_kwargs``
   < request flat < request ``images_kwargs``: ``_merge_mm_processor_kwargs``,
   ``config/multimodal.py``; ``min_pixels``/``max_pixels`` override ``size``'s edges).
3. **Token count** per image (``Qwen3VLProcessingInfo._get_vision_info``,
   ``model_executor/models/qwen3_vl.py``): ``smart_resize`` from transformers'
   ``image_processing_qwen2_vl`` (the function vLLM imports) with ``factor = patch_size *
   merge_size``, then ``grid = (1, h / patch, w / patch)`` (one frame padded to
   ``temporal_patch_size`` is one temporal step) and ``N = grid_t * grid_h * grid_w // merge_size**2``.
4. **Placeholder expansion** (``Qwen3VLMultiModalProcessor._get_prompt_updates``,
   ``get_image_replacement_qwen3vl``): the chat template renders each image as
   ``<|vision_start|><|image_pad|><|vision_end|>``; the target is the single ``<|image_pad|>`` id,
   replaced by ``N`` of them (``N = image_grid_thw.prod() // merge_size**2``); start and end stay.
   The i-th pad is the i-th image of the conversation, in message order.

Inputs are hostile: the encoded size is bounded before base64 decoding, the pixel count before
decoding pixels and again after resizing, and only PNG and JPEG are opened.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import math
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from .protocol import APIError, bad_request

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # Qwen3-VL's own longest_edge (16 Mpx)
DEFAULT_MAX_IMAGES_PER_PROMPT = 64
DEFAULT_MAX_REQUEST_DECODE_BYTES = 256 * 1024 * 1024  # vLLM: VLLM_MAX_MEDIA_REQUEST_DECODE_BYTES (683 MiB)
IMAGE_FORMATS = ("PNG", "JPEG")

# Keys of mm_processor_kwargs this server acts on (vLLM accepts every HF image processor kwarg;
# any other key here is refused rather than silently ignored).
if TYPE_CHECKING:
    import torch

_PIXEL_KEYS = ("min_pixels", "max_pixels")
_SIZE_EDGES = {"shortest_edge": "min_pixels", "longest_edge": "max_pixels"}


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # decoded bytes of one data URL
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # one image, as sent and after resizing
    max_images_per_prompt: int = DEFAULT_MAX_IMAGES_PER_PROMPT  # vLLM: --limit-mm-per-prompt
    max_request_decode_bytes: int = DEFAULT_MAX_REQUEST_DECODE_BYTES  # all images of a request, 4 bytes a pixel


class DecodeBudget:
    """One request's decoded-image budget, charged ``width * height * 4`` bytes per image before its
    pixels are decoded (vLLM's ``MediaDecodedBudget``, ``multimodal/media/base.py``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, nbytes: int) -> None:
        if self.used + nbytes > self.limit:
            raise bad_request(f"Request decoded media exceeds --max-request-decode-bytes={self.limit} "
                              "(4 bytes a pixel, all images of the request).", "messages")
        self.used += nbytes


@dataclass
class LoadedImage:
    image: Any  # PIL.Image in RGB
    sha256: str  # of the bytes the data URL carried


@dataclass(frozen=True)
class ImageSettings:
    """The image processor settings a request was served with."""

    min_pixels: int
    max_pixels: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int

    def as_dict(self) -> dict[str, int]:
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "patch_size": self.patch_size,
                "merge_size": self.merge_size, "temporal_patch_size": self.temporal_patch_size}


@dataclass(frozen=True)
class VisionInfo:
    width: int
    height: int
    resized_width: int
    resized_height: int
    grid_thw: tuple[int, int, int]
    num_tokens: int


@dataclass
class ImageInputs:
    """What the model's forward needs for one prompt's images, in prompt order."""

    pixel_values: torch.Tensor  # [sum of grid_t*grid_h*grid_w, C * temporal * patch * patch]
    image_grid_thw: torch.Tensor  # [n_images, 3]
    infos: list[VisionInfo] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- loading


def load_image_url(url: Any, limits: ImageLimits, budget: DecodeBudget | None = None) -> LoadedImage:
    """Decode an ``image_url`` into an RGB PIL image, or raise vLLM's error for it."""
    if not isinstance(url, str) or not url:
        raise bad_request("image_url.url must be a non-empty string.", "messages")
    if url[:5].lower() != "data:":
        scheme = url.partition(":")[0].lower() if ":" in url else ""
        if scheme.startswith("http"):
            raise bad_request("The trajstore CPU policy server cannot fetch images over HTTP: send the image "
                              "inline as a data URL (data:image/png;base64,...).", "messages")
        if scheme == "file":  # vLLM's answer without --allowed-local-media-path
            raise bad_request("Cannot load local files without `--allowed-local-media-path`.", "messages")
        raise bad_request("The URL must be either a HTTP, data or file URL.", "messages")
    # RFC 2397: data:[<mediatype>][;<param>=<value>]*[;base64],<data>  (vLLM _load_data_url)
    data_spec, sep, data = url[5:].partition(",")
    if not sep:
        raise bad_request(f"Invalid data URL {url[:32]!r}: missing ',' separator.", "messages")
    _media_type, sep, encoding = data_spec.rpartition(";")
    if not sep or encoding != "base64":
        # vLLM raises NotImplementedError here, which its server answers with 501
        raise APIError("Only base64 data URLs are supported for now.", "NotImplementedError",
                       HTTPStatus.NOT_IMPLEMENTED)
    # bound the size before decoding: base64 carries 3 bytes per 4 characters
    if (len(data) // 4) * 3 > limits.max_image_bytes + 3:
        raise bad_request(f"The image in a data URL is larger than {limits.max_image_bytes} bytes, this "
                          "server's --max-image-bytes.", "messages")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"Failed to load image: invalid base64 data in the data URL ({exc}).", "messages") from exc
    if len(raw) > limits.max_image_bytes:
        raise bad_request(f"The image in a data URL is larger than {limits.max_image_bytes} bytes, this "
                          "server's --max-image-bytes.", "messages")
    return LoadedImage(image=_open_image(raw, limits, budget), sha256=hashlib.sha256(raw).hexdigest())


def _open_image(raw: bytes, limits: ImageLimits, budget: DecodeBudget | None):
    """vLLM's ``ImageMediaIO.load_bytes``: open, check the pixel count, orient, load, convert to RGB."""
    from PIL import Image, ImageOps

    try:
        image = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # reads the header only
        w, h = image.size
        if w * h > limits.max_image_pixels:
            raise bad_request(f"Image dimensions {w}x{h} ({w * h} pixels) exceed the maximum of "
                              f"{limits.max_image_pixels} pixels. Set --max-image-pixels to increase this "
                              "limit.", "messages")
        if budget is not None:
            budget.charge(w * h * 4)
        with contextlib.suppress(Exception):  # vLLM's normalize_image
            image = ImageOps.exif_transpose(image)
        image.load()
        return _to_rgb(image)
    except APIError:
        raise
    # Pillow raises SyntaxError for broken PNG chunks, RuntimeError for undecodable data
    except (OSError, SyntaxError, RuntimeError, ValueError, Image.DecompressionBombError) as exc:
        raise bad_request(f"Failed to load image: {exc}", "messages") from exc


def _to_rgb(image):
    """vLLM's ``convert_image_mode(image, "RGB")``: transparency goes onto a white background."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in getattr(image, "info", {}):
        if image.mode != "RGBA":
            image = image.convert("RGBA")
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.split()[3])
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


# ---------------------------------------------------------------- settings


def check_mm_processor_kwargs(kwargs: Any, where: str = "mm_processor_kwargs") -> dict[str, Any]:
    """The subset of vLLM's Qwen-VL ``mm_processor_kwargs`` this server acts on, validated."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise bad_request(f"{where} must be an object.", "mm_processor_kwargs")

    def check_scope(scope: dict[str, Any], name: str, allow_nested: bool) -> None:
        allowed = set(_PIXEL_KEYS) | {"size"} | ({"images_kwargs"} if allow_nested else set())
        unknown = sorted(set(scope) - allowed)
        if unknown:
            raise bad_request(f"{name}: {', '.join(unknown)} not supported by the trajstore CPU policy server "
                              "(it acts on min_pixels, max_pixels, size.shortest_edge, size.longest_edge and "
                              "images_kwargs holding those).", "mm_processor_kwargs")
        for key in _PIXEL_KEYS:
            _check_pixels(scope.get(key), f"{name}.{key}")
        size = scope.get("size")
        if size is not None:
            if not isinstance(size, dict) or set(size) - set(_SIZE_EDGES):
                raise bad_request(f"{name}.size must be an object with shortest_edge and/or longest_edge.",
                                  "mm_processor_kwargs")
            for edge in _SIZE_EDGES:
                _check_pixels(size.get(edge), f"{name}.size.{edge}")
        nested = scope.get("images_kwargs")
        if nested is not None:
            if not isinstance(nested, dict):
                raise bad_request(f"{name}.images_kwargs must be an object.", "mm_processor_kwargs")
            check_scope(nested, f"{name}.images_kwargs", allow_nested=False)

    check_scope(kwargs, where, allow_nested=True)
    return kwargs


def _check_pixels(value: Any, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"{name} must be a positive integer, got {value!r}.", "mm_processor_kwargs")


def _complete_aliases(kwargs: dict[str, Any]) -> dict[str, Any]:
    """vLLM's ``_complete_mm_processor_size_aliases`` (request side): ``min_pixels`` <-> ``size.shortest_edge``
    and ``max_pixels`` <-> ``size.longest_edge``, each filled from the other where only one is set; applied
    to the flat kwargs and to ``images_kwargs`` independently."""

    def complete(scope: dict[str, Any]) -> dict[str, Any]:
        out = dict(scope)
        size = dict(out.get("size") or {})
        for edge, pixel_key in _SIZE_EDGES.items():
            if pixel_key not in out:
                if size.get(edge) is not None:
                    out[pixel_key] = size[edge]
                continue
            if out[pixel_key] is not None and edge not in size:
                size[edge] = out[pixel_key]
                out["size"] = size
        return out

    out = complete(kwargs)
    if isinstance(out.get("images_kwargs"), dict):
        out["images_kwargs"] = complete(out["images_kwargs"])
    return out


def _image_view(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Flat keys routed into ``images_kwargs``; the scoped values win (vLLM ``_resolve_mm_processor_kwargs``)."""
    view = {k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items() if k != "images_kwargs"}
    return _merge(view, kwargs.get("images_kwargs") or {})


def _merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    out = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_image_settings(image_processor: Any, configured: dict[str, Any] | None,
                           request: dict[str, Any] | None) -> ImageSettings:
    """The min/max pixels vLLM applies to a request's images (``_get_vision_info`` -> ``_get_vision_size``)."""
    merged = _merge(_image_view(configured or {}), _image_view(_complete_aliases(request or {})))
    default = image_processor.size
    size = {"shortest_edge": _edge(default, "shortest_edge"), "longest_edge": _edge(default, "longest_edge")}
    size.update({k: v for k, v in (merged.get("size") or {}).items() if v is not None})
    for edge, pixel_key in _SIZE_EDGES.items():
        if merged.get(pixel_key) is not None:
            size[edge] = merged[pixel_key]
    return ImageSettings(min_pixels=int(size["shortest_edge"]), max_pixels=int(size["longest_edge"]),
                         patch_size=int(image_processor.patch_size), merge_size=int(image_processor.merge_size),
                         temporal_patch_size=int(image_processor.temporal_patch_size))


def _edge(size: Any, name: str) -> int:
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    if value is None:
        raise APIError(f"the image processor's size has no {name}", "InternalServerError",
                       HTTPStatus.INTERNAL_SERVER_ERROR)
    return int(value)


# ---------------------------------------------------------------- token counts and expansion


def vision_info(width: int, height: int, settings: ImageSettings) -> VisionInfo:
    """vLLM's ``Qwen3VLProcessingInfo._get_vision_info`` for one image (``num_frames`` 1)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    try:
        resized_h, resized_w = smart_resize(height=height, width=width,
                                            factor=settings.patch_size * settings.merge_size,
                                            min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)
    except ValueError as exc:  # aspect ratio above 200
        raise bad_request(f"Failed to process image of {width}x{height}: {exc}", "messages") from exc
    # one frame, padded up to temporal_patch_size frames, is one temporal step
    padded_frames = 1 + (-1 % settings.temporal_patch_size)
    grid_t = max(padded_frames // settings.temporal_patch_size, 1)
    grid = (grid_t, resized_h // settings.patch_size, resized_w // settings.patch_size)
    return VisionInfo(width=width, height=height, resized_width=resized_w, resized_height=resized_h,
                      grid_thw=grid, num_tokens=math.prod(grid) // settings.merge_size ** 2)


def expand_image_pads(ids: list[int], image_token_id: int, counts: list[int]) -> list[int]:
    """Qwen3-VL's prompt update: the i-th ``<|image_pad|>`` becomes ``counts[i]`` of them."""
    found = sum(1 for t in ids if t == image_token_id)
    if found != len(counts):
        # vLLM BaseMultiModalProcessor._validate_mm_updates (vLLM answers 500; the cause is the request)
        raise bad_request(f"Expected there to be {len(counts)} prompt updates corresponding to {len(counts)} "
                          f"image items, but instead found {found} prompt updates! This is likely because you "
                          "forgot to include input placeholder tokens (e.g., `<image>`, `<|image_pad|>`) in the "
                          "prompt. If the model has a chat template, make sure you have applied it before "
                          "calling `LLM.generate`.", "messages")
    out: list[int] = []
    k = 0
    for t in ids:
        if t == image_token_id:
            out.extend([image_token_id] * counts[k])
            k += 1
        else:
            out.append(t)
    return out


def preprocess_images(image_processor: Any, images: list[LoadedImage], settings: ImageSettings,
                      infos: list[VisionInfo]) -> ImageInputs:
    """Pixel values and grids from the model's own image processor, at ``settings``."""
    import torch

    out = image_processor(images=[im.image for im in images], return_tensors="pt",
                          size={"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels})
    grid = out["image_grid_thw"].to(torch.long)
    expected = torch.tensor([list(i.grid_thw) for i in infos], dtype=torch.long)
    if grid.shape != expected.shape or not torch.equal(grid, expected):
        # the pads in the prompt would not match the features: never serve that
        raise APIError(f"the image processor produced grids {grid.tolist()} where vLLM's arithmetic gives "
                       f"{expected.tolist()}", "InternalServerError", HTTPStatus.INTERNAL_SERVER_ERROR)
    return ImageInputs(pixel_values=out["pixel_values"].to(torch.float32), image_grid_thw=grid, infos=list(infos),
                       sha256=[im.sha256 for im in images])
