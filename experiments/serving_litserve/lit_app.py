"""spt's PromptServer behind LitServe 0.2.19 (evaluation only; see README.md here).

    python lit_app.py --port 18732 --run sst2=DIR --run rte=DIR --run trec=DIR [--isolate]

Default mode follows spt's checks literally: decode_request raises HTTPException 422
(_check_limits) / 400 (check_rows). --isolate: decode_request does not raise; it marks a bad
request and encode_response answers it with its own JSONResponse, so one bad request does
not fail the requests it was batched with (LitServe's BatchedLoop fails the whole batch on
any exception raised in decode_request/predict/unbatch/encode_response).
"""


import argparse
import multiprocessing as mp
import os

import litserve as ls
from fastapi import HTTPException
from fastapi.responses import JSONResponse

from spt.errors import SptError
from spt.serve.http import Limits, PredictBody, _check_limits

LIMITS = Limits()

# counters shared by the inference worker (spawned: gets them as Process args) and the
# API-server process (forked): batches, rows, requests, max_rows, max_requests
_STATS = None


def _tree_memory() -> dict:
    """RSS and PSS summed over the LitServe process tree (main process and all children),
    and the sum of each process's own peak RSS (VmHWM)."""
    import psutil

    me = psutil.Process()
    # uvicorn API servers are forked children of the main process; the worker is spawned
    root = me.parent() if os.environ.get("LITSERVE_WORKER_ID") is not None else me
    procs = [root, *root.children(recursive=True)]
    rss = pss = hwm = 0
    per = []
    for p in procs:
        try:
            mi = p.memory_full_info()
            with open(f"/proc/{p.pid}/status") as f:
                peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) * 1024
        except (psutil.Error, OSError, StopIteration):
            continue
        rss += mi.rss
        pss += mi.pss
        hwm += peak
        per.append({"pid": p.pid, "name": p.name(), "rss_mb": round(mi.rss / 2**20, 1)})
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {
        "rss_mb": mb(rss),
        "peak_rss_mb": mb(hwm),  # sum of per-process peaks
        "pss_mb": mb(pss),
        "processes": len(per),
        "per_process": per,
    }


class SptLitAPI(ls.LitAPI):
    """decode_request is typed (PredictBody): validated in the API-server process."""

    def __init__(self, runs, stats, isolate=False, **kw):
        super().__init__(**kw)
        self.runs = runs
        self.stats_arr = stats
        self.isolate = isolate

    def setup(self, device):
        import torch

        from spt.serve.cli import _parse_run
        from spt.serve.server import PromptServer

        self.server = PromptServer.from_runs([_parse_run(v) for v in self.runs])
        print(f"[lit worker pid={os.getpid()}] torch threads={torch.get_num_threads()}", flush=True)

    # the annotation makes LitServe's FastAPI endpoint validate the body in the API-server
    # process (as spt's `body: PredictBody` does): bad JSON / wrong shape -> 422 there
    def decode_request(self, request: PredictBody):
        rows = [r.model_dump() for r in request.rows]
        too_much = _check_limits(rows, LIMITS)
        err = None
        if too_much:
            err = HTTPException(status_code=422, detail=too_much)
        else:
            try:
                self.server.check_rows(rows)
            except SptError as e:
                err = HTTPException(status_code=400, detail=str(e))
        if err is not None:
            if not self.isolate:
                raise err
            return err
        return rows

    def batch(self, inputs):
        return inputs  # a list of per-request row lists, of any tasks and lengths

    def predict(self, x):
        good = [r for r in x if not isinstance(r, HTTPException)]
        flat = [row for rows in good for row in rows]
        if os.environ.get("LIT_DEBUG") == "1":  # probes only: a row text "__raise__"/"__sleep__"
            texts = {t for row in flat for t in row["text"].values()}
            if "__raise__" in texts:
                raise RuntimeError("debug: predict raised")
            if "__sleep__" in texts:
                import time

                time.sleep(float(os.environ.get("LIT_DEBUG_SLEEP", "5")))
        preds = self.server.predict(flat) if flat else []
        out, start = [], 0
        for rows in x:
            if isinstance(rows, HTTPException):
                out.append(rows)
                continue
            out.append(preds[start : start + len(rows)])
            start += len(rows)
        if flat:
            s = self.stats_arr
            with s.get_lock():
                s[0] += 1
                s[1] += len(flat)
                s[2] += len(good)
                s[3] = max(s[3], len(flat))
                s[4] = max(s[4], len(good))
        return out

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        if isinstance(output, HTTPException):
            return JSONResponse(status_code=output.status_code, content={"detail": output.detail})
        return {"predictions": output}


class UntypedSptLitAPI(SptLitAPI):
    """decode_request takes the raw JSON (LitServe's default: Request -> await request.json()
    in the API-server process), validated with PredictBody in the worker."""

    def decode_request(self, request):
        from pydantic import ValidationError

        try:
            body = PredictBody.model_validate(request)
        except ValidationError as e:
            raise HTTPException(status_code=422, detail=str(e)[:300]) from None
        return SptLitAPI.decode_request(self, body)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", action="append", required=True)
    p.add_argument("--port", type=int, default=18732)
    p.add_argument("--isolate", action="store_true")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.005)
    p.add_argument("--no-payload-limit", action="store_true")
    p.add_argument("--untyped", action="store_true")
    p.add_argument("--timeout", type=float, default=LIMITS.timeout_s)
    args = p.parse_args()

    stats = mp.get_context("spawn").Array("q", 5)  # created before the worker is spawned / API servers forked
    api = (UntypedSptLitAPI if args.untyped else SptLitAPI)(
        args.run,
        stats,
        isolate=args.isolate,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        timeout=args.timeout,
        max_payload_size=None if args.no_payload_limit else LIMITS.max_body_bytes,
    )

    async def stats_route():
        with stats.get_lock():
            b, r, q, mr, mq = stats[:]
        n = max(1, b)
        return {
            "batches": b,
            "rows": r,
            "requests": q,
            "rows_per_batch_mean": r / n,
            "requests_per_batch_mean": q / n,
            "max_rows": mr,
            "max_requests": mq,
            "memory": _tree_memory(),
            "limits": LIMITS.model_dump(),
        }

    server.app.add_api_route("/stats", stats_route, methods=["GET"])
    server.run(
        host="127.0.0.1",
        port=args.port,
        generate_client_file=False,
        access_log=False,  # as spt's server (off by default)
        log_level="info",
    )


if __name__ == "__main__":
    main()
