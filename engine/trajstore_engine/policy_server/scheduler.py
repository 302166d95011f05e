"""The request queue and the one worker thread that owns the model.

The HTTP handlers never touch the model: they admit a request (or answer 503 when the queue is
full), hand it to this scheduler and await a future, so the event loop keeps serving ``/health``,
``/v1/models`` and new requests while a batch runs.

- Admission counts *sequences* in flight (waiting + running; a request with ``n`` samples counts
  ``n``), like vLLM's ``--max-num-queued-reqs``. Past ``max_queue`` a request is refused at once.
- The worker takes the oldest waiting request and every other waiting request for the same weights
  (base model or one adapter), up to ``max_batch_seqs`` sequences, and runs them as one batch.
  Requests that arrive meanwhile wait for the next batch.
- Control jobs (loading and unloading adapters) run on the same thread, before the next batch, so
  the model is never changed under a running batch and an adapter is usable by the very next batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class _GenRequest:
    adapter: str | None
    n: int
    payload: Any
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class _Control:
    fn: Callable[[], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Scheduler:
    def __init__(self, run_batch: Callable[[str | None, list[Any]], list[Any]], *, max_queue: int,
                 max_batch_seqs: int = 32) -> None:
        """``run_batch(adapter, payloads)`` runs on the worker thread and returns one result per payload
        (or raises, failing every request of the batch)."""
        self._run_batch = run_batch
        self.max_queue = max_queue
        self.max_batch_seqs = max(1, max_batch_seqs)
        self._cv = threading.Condition()
        self._waiting: deque[_GenRequest] = deque()
        self._control: deque[_Control] = deque()
        self._in_flight = 0
        self._running = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="policy-server-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ event-loop side

    def admit(self, n: int) -> bool:
        """Reserve ``n`` sequence slots; False when the queue is full (the caller answers 503)."""
        with self._cv:
            if self.max_queue > 0 and self._in_flight + n > self.max_queue:
                return False
            self._in_flight += n
            return True

    def release(self, n: int) -> None:
        with self._cv:
            self._in_flight -= n

    async def generate(self, adapter: str | None, n: int, payload: Any) -> Any:
        """Queue an admitted request; resolves with ``run_batch``'s result for it."""
        req = _GenRequest(adapter, n, payload)
        with self._cv:
            self._waiting.append(req)
            self._cv.notify()
        try:
            return await asyncio.wrap_future(req.future)
        finally:
            self.release(n)

    async def control(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread between batches."""
        job = _Control(fn)
        with self._cv:
            self._control.append(job)
            self._cv.notify()
        return await asyncio.wrap_future(job.future)

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {"in_flight": self._in_flight, "waiting_requests": len(self._waiting),
                    "running_sequences": self._running}

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while True:
            with self._cv:
                while not (self._stopped or self._control or self._waiting):
                    self._cv.wait()
                if self._stopped:
                    pending = list(self._waiting) + list(self._control)
                    self._waiting.clear()
                    self._control.clear()
                    break
                if self._control:
                    control = self._control.popleft()
                    batch = None
                else:
                    control = None
                    batch = self._take_batch()
                    self._running = sum(r.n for r in batch)
            if control is not None:
                _settle(control.future, control.fn)
                continue
            try:
                results = self._run_batch(batch[0].adapter, [r.payload for r in batch])
            except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the error
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
            else:
                for r, result in zip(batch, results):
                    if isinstance(result, BaseException):
                        r.future.set_exception(result)
                    else:
                        r.future.set_result(result)
            finally:
                with self._cv:
                    self._running = 0
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the policy server is shutting down"))

    def _take_batch(self) -> list[_GenRequest]:
        """The oldest request plus later ones for the same weights, up to max_batch_seqs sequences."""
        first = self._waiting.popleft()
        batch, seqs, rest = [first], first.n, deque()
        while self._waiting:
            req = self._waiting.popleft()
            if req.adapter == first.adapter and seqs + req.n <= self.max_batch_seqs:
                batch.append(req)
                seqs += req.n
            else:
                rest.append(req)
        self._waiting = rest
        return batch


def _settle(future: concurrent.futures.Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001
        future.set_exception(exc)
