"""A load-test client for the HTTP server: concurrent clients, latency percentiles, the rows
each forward served, and (issue 21) hostile requests mixed in with good ones.

A server under load must answer every good request correctly whatever else arrives, so the
test counts a good request as failed when it is not a 200, when its connection fails, or when
its answer differs from the one the server gave that row alone before the load began; each
hostile request must get its own 4xx. The server's resident memory before and after, and its
peak, come from ``/stats``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence

from spt.errors import SptError

log = logging.getLogger("spt.serve")

# Each kind of hostile request, and the statuses that answer it correctly. The bodies are
# bytes: a lone surrogate cannot be encoded by a well-behaved JSON client.
HOSTILE_KINDS = (
    "surrogate",
    "not-json",
    "deep-json",
    "wrong-shape",
    "unknown-task",
    "missing-field",
    "too-many-rows",
    "long-field",
    "big-body",
    "chunked-body",
)
EXPECTED = {
    "surrogate": {422},
    "not-json": {400, 422},
    "deep-json": {400, 422},
    "wrong-shape": {422},
    "unknown-task": {400},
    "missing-field": {400},
    "too-many-rows": {422},
    "long-field": {422},
    "big-body": {413},
    "chunked-body": {413},
}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def hostile_body(kind: str, row: dict, limits: dict) -> bytes:
    """The body of one hostile request of ``kind``, built around a good ``row``."""
    task, field = row["task"], next(iter(row["text"]))

    def rows(*items) -> bytes:
        return json.dumps({"rows": list(items)}).encode()

    if kind == "surrogate":
        return json.dumps({"rows": [{"task": task, "text": {field: "a\ud800b"}}]}).encode()
    if kind == "not-json":
        return b'{"rows": [{"task": '
    if kind == "deep-json":  # within the body limit, past Python's recursion limit if it can
        depth = min(100_000, limits["max_body_bytes"] // 2)
        return b"[" * depth + b"]" * depth
    if kind == "wrong-shape":
        return b'{"rows": "all of them"}'
    if kind == "unknown-task":
        return rows({"task": "no-such-task", "text": row["text"]})
    if kind == "missing-field":
        return rows({"task": task, "text": {}})
    if kind == "too-many-rows":
        return rows(*[row] * (limits["max_rows"] + 1))
    if kind == "long-field":
        return rows({"task": task, "text": {**row["text"], field: "x" * (limits["max_chars"] + 1)}})
    if kind == "big-body":
        return rows({"task": task, "text": {field: "x" * (limits["max_body_bytes"] + 1)}})
    if kind == "chunked-body":  # sent chunked, without a Content-Length
        return rows({"task": task, "text": {field: "x" * (limits["max_body_bytes"] + 1)}})
    raise SptError(f"unknown hostile request kind {kind!r}: one of {', '.join(HOSTILE_KINDS)}")


async def _stats(client) -> dict | None:
    try:
        response = await client.get("/stats")
        return response.json() if response.status_code == 200 else None
    except Exception:  # connection refused or reset, a body that is not JSON
        return None


def _same(got: dict, want: dict) -> float | None:
    """The largest score difference of two answers for one row; None if their labels or
    score keys differ."""
    if got.get("label") != want.get("label") or set(got.get("scores") or {}) != set(
        want.get("scores") or {}
    ):
        return None
    return max((abs(got["scores"][k] - want["scores"][k]) for k in want["scores"]), default=0.0)


async def _load_test(
    url: str,
    rows: list[dict],
    concurrency: int,
    duration_s: float | None,
    requests_per_client: int | None,
    rows_per_request: int,
    timeout_s: float,
    hostile: float,
    tolerance: float,
) -> dict:
    try:
        import httpx
    except ImportError:
        raise SptError(
            "the load test needs httpx: pip install httpx (it is in spt's dev extra)"
        ) from None

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    json_header = {"content-type": "application/json"}
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), timeout=timeout_s, limits=limits
    ) as client:
        before = await _stats(client)
        if before is None:
            raise SptError(
                f"no spt.serve server answers GET {url}/stats: start one with "
                "python -m spt.serve http --run ..."
            )
        reference = []  # each row's answer alone, with nothing else in flight
        for row in rows:
            response = await client.post("/predict", json={"rows": [row]})
            if response.status_code != 200:
                raise SptError(
                    f"the server refuses the load test's own row {row!r} "
                    f"({response.status_code}: {response.text[:200]}): fix --input"
                )
            reference.append(response.json()["predictions"][0])

        latencies: list[float] = []
        good_failed: Counter = Counter()  # why: a status, a connection error, a wrong answer
        hostile_sent: Counter = Counter()
        hostile_wrong: Counter = Counter()  # kind -> answered with another status
        hostile_cut: Counter = Counter()  # oversized bodies the server closed on mid-upload
        worst = 0.0
        sent = 0
        every = round(1 / hostile) if hostile > 0 else 0  # each every-th request is hostile
        stop = time.perf_counter() + duration_s if duration_s is not None else None

        async def post_hostile(kind: str, body: bytes) -> int | str:
            try:
                if kind == "chunked-body":

                    async def chunks():
                        yield body

                    response = await client.post("/predict", content=chunks(), headers=json_header)
                else:
                    response = await client.post("/predict", content=body, headers=json_header)
                return response.status_code
            except httpx.HTTPError as err:  # e.g. a 413 answered before the body was sent
                return type(err).__name__

        async def worker() -> None:
            nonlocal sent, worst
            done = 0
            while (stop is None and done < requests_per_client) or (
                stop is not None and time.perf_counter() < stop
            ):
                i, done = sent, done + 1
                sent += 1
                if every and i % every == every - 1:
                    kind = HOSTILE_KINDS[(i // every) % len(HOSTILE_KINDS)]
                    hostile_sent[kind] += 1
                    got = await post_hostile(
                        kind, hostile_body(kind, rows[i % len(rows)], before["limits"])
                    )
                    if isinstance(got, str) and kind in ("big-body", "chunked-body"):
                        hostile_cut[kind] += 1  # refused and closed before it was all sent
                    elif got not in EXPECTED[kind]:
                        hostile_wrong[f"{kind}: {got}"] += 1
                    continue
                picks = [(i * rows_per_request + j) % len(rows) for j in range(rows_per_request)]
                t0 = time.perf_counter()
                try:
                    response = await client.post(
                        "/predict", json={"rows": [rows[k] for k in picks]}
                    )
                except httpx.HTTPError as err:
                    good_failed[type(err).__name__] += 1
                    continue
                if response.status_code != 200:
                    good_failed[f"status {response.status_code}"] += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000.0)
                for k, pred in zip(picks, response.json()["predictions"], strict=True):
                    diff = _same(pred, reference[k])
                    if diff is None or diff > tolerance:
                        good_failed["wrong answer"] += 1
                        break
                    worst = max(worst, diff)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = await _stats(client)  # None if the server went away during the test
    batches = after["batches"] - before["batches"] if after else None
    memory = (after or {}).get("memory", {})
    good = sum(good_failed.values()) + len(latencies)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "rows_per_s": len(latencies) * rows_per_request / elapsed,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "requests": good + sum(hostile_sent.values()),
        "good_requests": good,
        "errors": sum(good_failed.values()),  # good requests that failed
        "failed_by": dict(good_failed),
        "max_score_diff": worst,  # good answers under load vs the same rows alone
        "hostile_requests": sum(hostile_sent.values()),
        "hostile_by_kind": dict(hostile_sent),
        "hostile_misanswered": dict(hostile_wrong),
        "hostile_cut_off": dict(hostile_cut),
        "rows_per_batch_mean": (after["rows"] - before["rows"]) / max(1, batches)
        if after
        else None,
        "batches": batches,
        "rss_mb_before": before.get("memory", {}).get("rss_mb"),
        "rss_mb_after": memory.get("rss_mb"),
        "peak_rss_mb": memory.get("peak_rss_mb"),
        "concurrency": concurrency,
        "duration_s": elapsed,
    }


def load_test(
    url: str,
    rows: Sequence[dict],
    concurrency: int = 8,
    duration_s: float | None = None,
    rows_per_request: int = 1,
    timeout_s: float = 30.0,
    requests_per_client: int | None = None,
    hostile: float = 0.0,
    tolerance: float = 1e-4,
) -> dict:
    """Drive a running server at ``url`` with ``concurrency`` clients, each posting
    ``rows_per_request`` rows (cycling through ``rows``) back to back for ``duration_s``
    (10 s when neither it nor ``requests_per_client`` is given), or ``requests_per_client``
    requests each. A fraction ``hostile`` of the requests are hostile
    (cycling through :data:`HOSTILE_KINDS`, sized from the server's own limits).

    Returns ``requests_per_s``, ``rows_per_s``, ``p50_ms``/``p99_ms`` (of good requests
    answered), ``errors`` (good requests that failed: a non-200, a failed connection, or an
    answer more than ``tolerance`` from the row's answer alone; ``failed_by`` says which),
    ``max_score_diff``, ``hostile_misanswered`` (kind: status, for hostile requests not
    answered with their 4xx), ``hostile_cut_off`` (oversized bodies refused by closing the
    connection before the client had sent them whole), ``rows_per_batch_mean`` and ``batches`` (from ``/stats``), and
    the server's ``rss_mb_before``/``rss_mb_after``/``peak_rss_mb``. Call it outside a running
    event loop (it runs its own)."""
    if not rows:
        raise SptError("load_test needs at least one row to send")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise SptError(f"concurrency={concurrency!r} must be an integer >= 1")
    if not isinstance(rows_per_request, int) or rows_per_request < 1:
        raise SptError(f"rows_per_request={rows_per_request!r} must be an integer >= 1")
    if duration_s is None and requests_per_client is None:
        duration_s = 10.0
    if duration_s is not None and requests_per_client is not None:
        raise SptError("give the load test a duration_s or a requests_per_client, not both")
    if requests_per_client is not None and (
        not isinstance(requests_per_client, int) or requests_per_client < 1
    ):
        raise SptError(f"requests_per_client={requests_per_client!r} must be an integer >= 1")
    if not 0 <= hostile <= 0.5:
        raise SptError(f"hostile={hostile!r}: a fraction of the requests in [0, 0.5]")
    return asyncio.run(
        _load_test(
            url,
            list(rows),
            concurrency,
            None if duration_s is None else float(duration_s),
            requests_per_client,
            rows_per_request,
            timeout_s,
            hostile,
            tolerance,
        )
    )
