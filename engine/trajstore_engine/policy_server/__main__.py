"""``python -m trajstore_engine.policy_server --model DIR [...]``: serve a model the way vLLM would.

Flags mirror ``vllm serve`` where they exist there (``--served-model-name``, ``--max-loras``,
``--max-lora-rank``, ``--max-model-len``, ``--seed``, ``--mm-processor-kwargs``); ``--max-queue`` is
vLLM's ``--max-num-queued-reqs`` (503 past it); ``--max-images-per-prompt`` is vLLM's
``--limit-mm-per-prompt '{"image": N}'``, ``--max-image-pixels`` its ``VLLM_MAX_IMAGE_PIXELS``,
``--max-request-decode-bytes`` its ``VLLM_MAX_MEDIA_REQUEST_DECODE_BYTES``. Runtime adapter loading
is always on (vLLM needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` for it).

Logs go to stderr. ``GET /health`` answers 200 once the model is loaded and the socket listens.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .multimodal import (DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGES_PER_PROMPT,
                         DEFAULT_MAX_REQUEST_DECODE_BYTES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trajstore_engine.policy_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local Hugging Face model directory")
    parser.add_argument("--served-model-name", default=None, help="the base model's name in the API (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-loras", type=int, default=4, help="adapters kept in memory at once (LRU; more may be registered)")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=256,
                        help="sequences queued or running before requests get 503 (a request with n counts n; 0: no limit)")
    parser.add_argument("--max-batch-seqs", type=int, default=32, help="sequences decoded together at most")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling of requests that carry no seed")
    parser.add_argument("--mm-processor-kwargs", type=json.loads, default=None,
                        help='vision-language models: image settings as JSON, e.g. \'{"max_pixels": 1003520}\'')
    parser.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES,
                        help="largest image a data URL may carry (decoded bytes)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="largest image, in pixels, as sent and after resizing")
    parser.add_argument("--max-images-per-prompt", type=int, default=DEFAULT_MAX_IMAGES_PER_PROMPT)
    parser.add_argument("--max-request-decode-bytes", type=int, default=DEFAULT_MAX_REQUEST_DECODE_BYTES,
                        help="decoded images of one request, at 4 bytes a pixel")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process is gone (launchers pass their pid, so no server outlives them)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("trajstore.policy_server")

    import torch
    import uvicorn

    from ..errors import EngineError
    from .app import create_app
    from .protocol import APIError
    from .service import PolicyService, ServerConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    config = ServerConfig(model=args.model, served_model_name=args.served_model_name, max_loras=args.max_loras,
                          max_lora_rank=args.max_lora_rank, max_queue=args.max_queue,
                          max_batch_seqs=args.max_batch_seqs, max_model_len=args.max_model_len, seed=args.seed,
                          mm_processor_kwargs=args.mm_processor_kwargs, max_image_bytes=args.max_image_bytes,
                          max_image_pixels=args.max_image_pixels, max_images_per_prompt=args.max_images_per_prompt,
                          max_request_decode_bytes=args.max_request_decode_bytes)
    try:
        service = PolicyService(config)
    except APIError as exc:  # e.g. a bad --mm-processor-kwargs
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error {exc.code}: {exc.message}" + (f"\n  -> {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    app = create_app(service)
    log.info("model %s loaded; serving on http://%s:%d (GET /health answers once the socket listens)",
             service.served_model_name, args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    finally:
        service.close()
    return 0


def _exit_with_parent(pid: int) -> None:
    import os
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
