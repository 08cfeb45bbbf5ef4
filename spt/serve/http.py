"""HTTP serving with dynamic batching across requests (FastAPI + uvicorn; see
:mod:`spt.serve`)."""

from __future__ import annotations

import asyncio
import contextlib
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


def create_app(server: PromptServer, max_batch: int = 32, max_wait_ms: float = 5.0):
    """The FastAPI app: ``GET /health``, ``GET /stats``, ``POST /predict`` (``{"rows":
    [...]}`` -> ``{"predictions": [...]}``). A body that is not valid JSON or not of that shape
    gets 422, an unknown task or a missing text field 400, each with a message."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

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

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # no traceback to clients
        log.exception("request failed")
        return JSONResponse(
            status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"}
        )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **server.describe(), "batching": batcher.stats()}

    @app.get("/stats")
    async def stats() -> dict:
        return batcher.stats()

    @app.post("/predict")
    async def predict(body: PredictBody) -> dict:
        rows = [r.model_dump() for r in body.rows]
        try:
            server.check_rows(rows)
        except SptError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        if not rows:
            return {"predictions": []}
        try:
            return {"predictions": await batcher.submit(rows)}
        except SptError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    return app
