"""``python -m spt.serve predict|http|load-test``: the command line of :mod:`spt.serve`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from spt.data.readers import read_jsonl
from spt.errors import SptError, cli_error
from spt.serve.http import Limits, create_app
from spt.serve.loadtest import load_test
from spt.serve.server import PromptServer

log = logging.getLogger("spt.serve")

# -- command line ----------------------------------------------------------------------------


def _parse_run(text: str) -> tuple[str | None, str]:
    """``NAME=DIR`` or ``DIR`` (a ``=`` inside a path, after a ``/``, is part of the path)."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, path
    return None, text


def _read_jsonl(path: str) -> list[dict]:
    hint = 'write one {"task": ..., "text": {...}} object per line'
    return [row for _, row in read_jsonl(path, hint)]


def _server(args) -> PromptServer:
    if args.threads:
        torch.set_num_threads(args.threads)
    return PromptServer.from_runs([_parse_run(v) for v in args.run])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spt.serve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_runs(p):
        p.add_argument(
            "--run",
            action="append",
            required=True,
            metavar="[TASK=]DIR",
            help="a run directory to serve, optionally named (repeat per task)",
        )
        p.add_argument(
            "--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)"
        )

    p = sub.add_parser("predict", help="classify the rows of a JSON-lines file")
    add_runs(p)
    p.add_argument("--input", required=True, help="JSON lines of {task, text}; - for stdin")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward")

    p = sub.add_parser("http", help="serve POST /predict with dynamic batching")
    add_runs(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="rows per forward at most")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the first request of a batch waits for company",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: it costs throughput)",
    )
    for name, field in Limits.model_fields.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=field.annotation,
            default=field.default,
            help=f"{field.description} (default {field.default})",
        )

    p = sub.add_parser("load-test", help="measure a running server")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--input", required=True, help="JSON lines of {task, text} to send")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, help="seconds (default 10, unless --requests)")
    p.add_argument("--requests", type=int, help="requests per client, in place of --duration")
    p.add_argument("--rows-per-request", type=int, default=1)
    p.add_argument(
        "--hostile",
        type=float,
        default=0.0,
        help="fraction of requests that are hostile (bad JSON, lone surrogates, past each "
        "limit), cycling through every kind; each must get its 4xx",
    )

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per load-test request
    try:
        if args.command == "load-test":
            print(
                json.dumps(
                    load_test(
                        args.url,
                        _read_jsonl(args.input),
                        args.concurrency,
                        duration_s=args.duration,
                        rows_per_request=args.rows_per_request,
                        requests_per_client=args.requests,
                        hostile=args.hostile,
                    )
                )
            )
            return 0
        if args.command == "http":  # settings first, before the model loads
            if not 0 < args.port < 65536:
                raise SptError(f"--port {args.port}: a TCP port is 1..65535")
            try:
                limits = Limits(**{n: getattr(args, n) for n in Limits.model_fields})
            except ValueError as err:
                raise SptError(f"server limits: {' '.join(str(err).split())[:300]}") from None
        if args.command == "predict":
            if args.batch_size < 1:
                raise SptError(f"--batch-size={args.batch_size} must be >= 1")
            rows = _read_jsonl(args.input)  # a bad file fails before the model loads
        server = _server(args)
        if args.command == "predict":
            server.check_rows(rows)  # every row, before the first forward
            for start in range(0, len(rows), args.batch_size):
                for pred in server.predict(rows[start : start + args.batch_size]):
                    print(json.dumps(pred))
            return 0
        import uvicorn

        app = create_app(
            server, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits
        )
        uvicorn.run(
            app, host=args.host, port=args.port, log_level="info", access_log=args.access_log
        )
        return 0
    except Exception as exc:  # a user error (also behind Hydra's wrapper): one line, status 2
        return cli_error(exc)
