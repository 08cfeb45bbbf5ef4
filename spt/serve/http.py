"""HTTP serving with dynamic batching across requests (FastAPI + uvicorn; see
:mod:`spt.serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field

from spt.errors import SptError
from spt.serve.server import PromptServer

log = logging.getLogger("spt.serve")

# -- HTTP: dynamic batching ------------------------------------------------------------------


class Batcher:
    """Gathers concurrent requests into one :meth:`PromptServer.predict` call.

    A single worker task takes the first queued request, then more for up to ``max_wait_ms``
    or until ``max_batch`` rows (a request that would overflow the batch waits for the next
    one; a request larger than ``max_batch`` is served alone), runs the forward in a
    one-thread executor and resolves each request's future. If a merged batch fails, its
    requests are retried one by one so that only the faulty one sees the error.
    """

    def __init__(self, predict, max_batch: int = 32, max_wait_ms: float = 5.0):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise SptError(f"max_batch={max_batch!r} must be an integer >= 1")
        if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise SptError(f"max_wait_ms={max_wait_ms!r} must be a number >= 0")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batches = 0  # predict calls
        self.rows = 0  # rows they served
        self.requests = 0  # requests they answered
        self.max_rows = 0  # largest batch
        self.sizes: dict[int, int] = defaultdict(int)  # rows per batch -> how many batches
        self._queue: asyncio.Queue | None = None
        self._getter: asyncio.Future | None = None
        self._carry: tuple | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def stats(self) -> dict:
        """Counters since start: ``batches``, ``rows``, ``requests``, ``rows_per_batch_mean``,
        ``requests_per_batch_mean``, ``max_rows``, ``batch_sizes`` (rows -> batches)."""
        n = max(1, self.batches)
        return {
            "batches": self.batches,
            "rows": self.rows,
            "requests": self.requests,
            "rows_per_batch_mean": self.rows / n,
            "requests_per_batch_mean": self.requests / n,
            "max_rows": self.max_rows,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000.0,
        }

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spt-serve")
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._getter is not None:
            self._getter.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, rows: list) -> list[dict]:
        """Queue ``rows`` (checked already) and wait for their predictions."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, future))
        return await future

    async def _next(self, timeout: float | None):
        """The next queued request, or None after ``timeout`` seconds. The pending ``get``
        survives a timeout (never cancelled), so no request is lost."""
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if self._getter is None:
            self._getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return None
        item, self._getter = self._getter.result(), None
        return item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch, n = [first], len(first[0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                item = await self._next(max(0.0, deadline - loop.time()))
                if item is None:
                    break
                if n + len(item[0]) > self.max_batch:
                    self._carry = item  # opens the next batch
                    break
                batch.append(item)
                n += len(item[0])
            await self._serve(batch)

    async def _serve(self, batch: list[tuple[list, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        batch = [item for item in batch if not item[1].done()]  # past its deadline: not run
        if not batch:
            return
        rows = [r for request, _ in batch for r in request]
        try:
            preds = await loop.run_in_executor(self._executor, self.predict, rows)
        except Exception as err:
            if len(batch) > 1:
                for item in batch:
                    await self._serve([item])
                return
            if not batch[0][1].done():
                batch[0][1].set_exception(err)
            return
        self.batches += 1
        self.rows += len(rows)
        self.requests += len(batch)
        self.max_rows = max(self.max_rows, len(rows))
        self.sizes[len(rows)] += 1
        start = 0
        for request, future in batch:
            if not future.done():  # a client that went away leaves a cancelled future
                future.set_result(preds[start : start + len(request)])
            start += len(request)


class Row(BaseModel):
    """One row of ``POST /predict``."""

    task: str = Field(description="a task name from GET /health")
    text: dict[str, str] = Field(description="the task's template fields -> text")


class PredictBody(BaseModel):
    """The body of ``POST /predict``."""

    rows: list[Row] = Field(description="rows to classify, of any served tasks")


class Limits(BaseModel):
    """What one request may ask of the server (each a ``python -m spt.serve http`` flag):
    a hostile or careless client costs a bounded share of memory and time, and is told which
    limit it met."""

    max_body_bytes: int = Field(1_000_000, ge=1, description="request body size (413 past it)")
    max_rows: int = Field(256, ge=1, description="rows per request (422 past it)")
    max_chars: int = Field(20_000, ge=1, description="characters per text field (422 past it)")
    timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504 past it)")


class _BodyLimit:
    """ASGI middleware: a POST body stays within ``max_bytes`` (413 past it). A declared
    Content-Length past it is refused before the app sees any of it (the body is read and
    dropped first, see :meth:`_refuse`); a chunked body (no Content-Length) is read up to the
    limit and passed on as one message, or refused once it passes it."""

    def __init__(self, app, max_bytes: int, drain_s: float = 5.0):
        self.app, self.max_bytes, self.drain_s = app, max_bytes, drain_s

    async def _refuse(self, receive, send, detail: str, read: int, more: bool) -> None:
        """Read and drop what the client still sends (up to 16 x the limit, for at most
        ``drain_s``), then answer 413: a lingering close, as nginx does. Closing on unread
        bytes resets the connection, and the client would see the reset instead of the
        answer; uvicorn ends ``receive`` once the answer is sent, so the reading comes first.
        A client that declares more, or stalls, gets the answer at once or at the deadline."""

        async def drain(read: int, more: bool) -> None:
            while more and read <= 16 * self.max_bytes:
                message = await receive()
                more = message["type"] == "http.request" and message.get("more_body", False)
                read += len(message.get("body", b""))

        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin one before 3.11
            await asyncio.wait_for(drain(read, more), timeout=self.drain_s)
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        limit = f"this server takes at most {self.max_bytes} bytes (--max-body-bytes)"
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                # Worth reading only when bounded, and never when the client waits for a
                # 100 Continue (reading would invite the upload it has not sent).
                more = (
                    length.isdigit()
                    and int(length) <= 16 * self.max_bytes
                    and headers.get(b"expect", b"").lower() != b"100-continue"
                )
                return await self._refuse(
                    receive, send, f"the body is {length.decode()} bytes; {limit}", 0, more
                )
            return await self.app(scope, receive, send)
        body = bytearray()  # chunked: read it whole into one buffer, never past the limit
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away mid-body: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(
                    receive,
                    send,
                    f"the chunked body passed {len(body)} bytes; {limit}",
                    len(body),
                    message.get("more_body", False),
                )
            if not message.get("more_body", False):
                break
        whole = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay():
            return whole.pop() if whole else await receive()

        return await self.app(scope, replay, send)


def _check_limits(rows: list[dict], limits: Limits) -> str | None:
    """Why ``rows`` exceed a limit or hold text that is not Unicode (None: they do not)."""
    if len(rows) > limits.max_rows:
        return (
            f"the request has {len(rows)} rows; this server takes at most {limits.max_rows} "
            "per request (--max-rows): split it"
        )
    for i, row in enumerate(rows):
        for field, text in row["text"].items():
            if len(text) > limits.max_chars:
                return (
                    f"row {i}: text field {field!r} has {len(text)} characters; this server "
                    f"takes at most {limits.max_chars} (--max-chars)"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return f"row {i}: text field {field!r} is not valid Unicode (a lone surrogate)"
    return None


def memory() -> dict:
    """This process's resident memory now and at its peak, in MB (Linux's /proc and
    getrusage; None where the platform has neither)."""
    import os
    import resource
    import sys

    rss = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return {"rss_mb": None if rss is None else round(rss, 1), "peak_rss_mb": round(peak_mb, 1)}


def create_app(
    server: PromptServer,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    limits: Limits | None = None,
):
    """The FastAPI app: ``GET /health`` (``?detail=1`` adds each task's template and run
    directory), ``GET /stats``, ``POST /predict`` (``{"rows": [...]}`` -> ``{"predictions":
    [...]}``). A body that is not valid JSON or not of that shape gets 422, an unknown task or
    a missing text field 400, a request past a :class:`Limits` limit 413/422/504, each
    with a message. No input gets a 500 that poisons the connection: unexpected failures are
    answered in the endpoint, not by Starlette's error middleware (which closes it)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    limits = limits or Limits()
    batcher = Batcher(server.predict, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="spt prompt server",
        lifespan=lifespan,
        description="Soft prompts of several tasks on one frozen backbone.",
    )
    app.state.batcher = batcher
    app.state.server = server
    app.state.limits = limits
    app.add_middleware(
        _BodyLimit, max_bytes=limits.max_body_bytes, drain_s=min(5.0, limits.timeout_s)
    )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # no traceback to clients
        log.exception("request failed")
        return JSONResponse(
            status_code=500, content={"detail": f"internal error: {type(exc).__name__}"}
        )

    @app.get("/health")
    async def health(detail: bool = False) -> dict:
        described = server.describe()
        if not detail:  # names, fields and labels: what a client needs, no paths
            described["tasks"] = {
                n: {k: v for k, v in t.items() if k not in ("run", "template")}
                for n, t in described["tasks"].items()
            }
        return {"status": "ok", **described, "batching": batcher.stats()}

    @app.get("/stats")
    async def stats() -> dict:  # what a load test reads: batching, memory, the limits
        return {**batcher.stats(), "memory": memory(), "limits": limits.model_dump()}

    @app.post("/predict")
    async def predict(body: PredictBody):
        rows = [r.model_dump() for r in body.rows]
        too_much = _check_limits(rows, limits)
        if too_much:
            raise HTTPException(status_code=422, detail=too_much)
        try:
            server.check_rows(rows)
        except SptError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        if not rows:
            return {"predictions": []}
        try:
            found = await asyncio.wait_for(batcher.submit(rows), timeout=limits.timeout_s)
        except SptError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            raise HTTPException(
                status_code=504,
                detail=f"the request took longer than {limits.timeout_s:g} s (--timeout-s)",
            ) from None
        except Exception as err:  # answered here: the connection stays usable
            log.exception("predict failed")
            return JSONResponse(
                status_code=500, content={"detail": f"internal error: {type(err).__name__}"}
            )
        return {"predictions": found}

    return app
