"""A load-test client for the HTTP server: concurrent requests, latency percentiles and the
rows each forward served."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from spt.errors import SptError

log = logging.getLogger("spt.serve")

# -- load test -------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _stats(client) -> dict | None:
    try:
        response = await client.get("/stats")
        return response.json() if response.status_code == 200 else None
    except Exception:  # connection refused or reset, a body that is not JSON
        return None


async def _load_test(
    url: str,
    rows: list[dict],
    concurrency: int,
    duration_s: float,
    rows_per_request: int,
    timeout_s: float,
) -> dict:
    try:
        import httpx
    except ImportError:
        raise SptError(
            "the load test needs httpx: pip install httpx (it is in spt's dev extra)"
        ) from None

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), timeout=timeout_s, limits=limits
    ) as client:
        before = await _stats(client)
        if before is None:
            raise SptError(
                f"no spt.serve server answers GET {url}/stats: start one with "
                "python -m spt.serve http --run ..."
            )
        latencies: list[float] = []
        errors = 0
        sent = 0
        stop = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors, sent
            while time.perf_counter() < stop:
                body = {
                    "rows": [
                        rows[(sent * rows_per_request + j) % len(rows)]
                        for j in range(rows_per_request)
                    ]
                }
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post("/predict", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000.0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = await _stats(client)  # None if the server went away during the test
    batches = after["batches"] - before["batches"] if after else None
    return {
        "requests_per_s": len(latencies) / elapsed,
        "rows_per_s": len(latencies) * rows_per_request / elapsed,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "errors": errors,
        "requests": len(latencies) + errors,
        "rows_per_batch_mean": (after["rows"] - before["rows"]) / max(1, batches)
        if after
        else None,
        "batches": batches,
        "concurrency": concurrency,
        "duration_s": elapsed,
    }


def load_test(
    url: str,
    rows: Sequence[dict],
    concurrency: int = 8,
    duration_s: float = 10.0,
    rows_per_request: int = 1,
    timeout_s: float = 30.0,
) -> dict:
    """Drive a running server at ``url`` with ``concurrency`` clients, each posting
    ``rows_per_request`` rows (cycling through ``rows``) back to back for ``duration_s``.

    Returns ``requests_per_s``, ``rows_per_s``, ``p50_ms``/``p99_ms`` (latency of successful
    requests), ``errors`` (non-200 answers and failed connections), ``requests``,
    ``rows_per_batch_mean`` and ``batches`` (from the server's ``/stats`` during the test).
    Call it outside a running event loop (it runs its own)."""
    if not rows:
        raise SptError("load_test needs at least one row to send")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise SptError(f"concurrency={concurrency!r} must be an integer >= 1")
    if not isinstance(rows_per_request, int) or rows_per_request < 1:
        raise SptError(f"rows_per_request={rows_per_request!r} must be an integer >= 1")
    return asyncio.run(
        _load_test(url, list(rows), concurrency, float(duration_s), rows_per_request, timeout_s)
    )
