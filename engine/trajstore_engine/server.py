"""The JSON-lines protocol (PROTOCOL.md): one command per stdin line, one reply per stdout line.

stdout carries protocol lines only: at start-up the real stdout is kept for replies and file
descriptor 1 is pointed at stderr, so a stray print() or a C library's output cannot corrupt the
stream. Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from typing import Any, Callable

import torch

from . import __version__
from .config import EngineConfig
from .distributed import DistContext
from .errors import EngineError, bad_request, internal, not_initialized

PROTOCOL_VERSION = 1
log = logging.getLogger("trajstore_engine")


class Server:
    def __init__(self, dist: DistContext, write: Callable[[dict[str, Any]], None]):
        self.dist = dist
        self.write = write
        self.engine = None
        self.handlers = {
            "init": self.cmd_init,
            "train_step": self.cmd_train_step,
            "compute_logprobs": self.cmd_compute_logprobs,
            "save": self.cmd_save,
            "load": self.cmd_load,
            "status": self.cmd_status,
            "shutdown": self.cmd_shutdown,
        }
        self.stop = False

    # -------------------------------------------------------------- commands

    def cmd_init(self, req):
        if self.engine is not None:
            raise bad_request("the engine is already initialized", "start a new engine process for another model")
        from .trainer import Engine

        cfg = EngineConfig.from_dict(_field(req, "config", dict))
        if not cfg.model.path:
            raise bad_request("config.model.path is required")
        t0 = time.perf_counter()
        self.engine = Engine(cfg, self.dist)
        info = self.engine.describe()
        return info, {"load_time_s": time.perf_counter() - t0, **self.engine._memory_metrics()}

    def cmd_train_step(self, req):
        engine = self._engine("train_step")
        version = req.get("policy_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise bad_request("policy_version must be an integer")
        out = engine.train_step(_field(req, "batch", str), version)
        return {"step": out["step"], "policy_version": engine.policy_version}, out["metrics"]

    def cmd_compute_logprobs(self, req):
        engine = self._engine("compute_logprobs")
        use_adapter = req.get("adapter", True)
        if not isinstance(use_adapter, bool):
            raise bad_request("adapter must be true or false")
        out = engine.compute_logprobs(_field(req, "batch", str), _field(req, "out", str), use_adapter)
        return {"out": out["out"]}, out["metrics"]

    def cmd_save(self, req):
        engine = self._engine("save")
        meta = req.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        overwrite = req.get("overwrite", False)
        if "policy_version" in req:
            version = req["policy_version"]
            if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
                raise bad_request("policy_version must be an integer or null")
            engine.policy_version = version
        out = engine.save(_field(req, "path", str), meta, overwrite=bool(overwrite))
        return out, {"save_time_s": out.pop("save_time_s")}

    def cmd_load(self, req):
        engine = self._engine("load")
        out = engine.load(_field(req, "path", str))
        return out, {"load_time_s": out.pop("load_time_s")}

    def cmd_status(self, req):
        info = {"engine_version": __version__, "protocol": PROTOCOL_VERSION, "initialized": self.engine is not None,
                "world_size": self.dist.world_size, "pid": os.getpid()}
        if self.engine is not None:
            info.update(self.engine.describe())
            info["policy_version"] = self.engine.policy_version
        return info, {}

    def cmd_shutdown(self, req):
        self.stop = True
        return {"bye": True}, {}

    # -------------------------------------------------------------- plumbing

    def _engine(self, cmd):
        if self.engine is None:
            raise not_initialized(cmd)
        return self.engine

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        cmd = req.get("cmd")
        reply: dict[str, Any] = {"id": req.get("id"), "cmd": cmd}
        # One line per command on stderr: a crash's stderr tail then says what the engine was doing.
        log.info("%s (id %s) started", cmd, req.get("id"))
        try:
            if cmd not in self.handlers:
                raise bad_request(f"unknown command {cmd!r}", f"commands: {', '.join(self.handlers)}")
            result, metrics = self.handlers[cmd](req)
            reply.update(ok=True, result=result, metrics=metrics)
            log.info("%s (id %s) done in %.3f s", cmd, req.get("id"), time.perf_counter() - t0)
        except EngineError as err:
            log.warning("%s failed: %s", cmd, err)
            reply.update(ok=False, error=err.to_json(), metrics={})
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
            log.error("%s crashed:\n%s", cmd, traceback.format_exc())
            if self.engine is not None:
                self.engine.optimizer.zero_grad(set_to_none=True)
            reply.update(ok=False, error=internal(exc).to_json(), metrics={})
            if self.dist.enabled:  # ranks may now disagree; end the job, the client restarts it
                self.stop = True
        reply["metrics"]["elapsed_s"] = time.perf_counter() - t0
        return reply

    def run(self, stdin) -> int:
        rank0 = self.dist.rank == 0
        if rank0:
            self.write({"event": "ready", "protocol": PROTOCOL_VERSION, "engine_version": __version__,
                        "pid": os.getpid(), "world_size": self.dist.world_size,
                        "torch": torch.__version__, "cuda": torch.cuda.is_available()})
        while not self.stop:
            req = None
            if rank0:
                line = stdin.readline()
                if not line:
                    req = {"cmd": "shutdown", "id": None, "_eof": True}
                elif not line.strip():
                    continue
                else:
                    try:
                        req = json.loads(line)
                        if not isinstance(req, dict):
                            raise ValueError("a command must be a JSON object")
                    except ValueError as exc:
                        err = bad_request(f"not a JSON command line: {exc}",
                                          'send one JSON object per line, e.g. {"id": 1, "cmd": "status"}')
                        self.write({"id": None, "cmd": None, "ok": False, "error": err.to_json(),
                                    "metrics": {}})
                        continue
            req = self.dist.broadcast_object(req)
            reply = self.handle(req)
            if rank0 and not req.get("_eof"):
                self.write(reply)
        return 0


def _field(req: dict[str, Any], name: str, kind: type):
    if name not in req:
        raise bad_request(f"'{req.get('cmd')}' needs the field '{name}'")
    value = req[name]
    if not isinstance(value, kind):
        raise bad_request(f"'{name}' must be a {kind.__name__}")
    return value


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def serve() -> int:
    # Keep the real stdout for protocol lines; everything else written to fd 1 lands on stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=os.environ.get("TRAJSTORE_ENGINE_LOG", "INFO"), stream=sys.stderr,
                        format="%(asctime)s engine[%(process)d] %(levelname)s %(message)s")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def write(obj):
        proto.write(json.dumps(_json_safe(obj), separators=(",", ":")) + "\n")
        proto.flush()

    dist = DistContext.from_env()
    try:
        return Server(dist, write).run(sys.stdin)
    finally:
        dist.close()
