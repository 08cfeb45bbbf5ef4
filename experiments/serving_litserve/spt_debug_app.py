"""spt's own create_app around a PromptServer whose predict raises / sleeps on a magic row text
(probes only; nothing in /work/main is changed)."""
import argparse, os, time

import uvicorn

from spt.serve.cli import _parse_run
from spt.serve.http import Limits, create_app
from spt.serve.server import PromptServer

p = argparse.ArgumentParser()
p.add_argument("--run", action="append", required=True)
p.add_argument("--port", type=int, default=18741)
p.add_argument("--timeout", type=float, default=30.0)
a = p.parse_args()
server = PromptServer.from_runs([_parse_run(v) for v in a.run])
real = server.predict


def predict(rows):
    texts = {t for r in rows for t in r["text"].values()}
    if "__raise__" in texts:
        raise RuntimeError("debug: predict raised")
    if "__sleep__" in texts:
        time.sleep(float(os.environ.get("LIT_DEBUG_SLEEP", "5")))
    return real(rows)


server.predict = predict
app = create_app(server, limits=Limits(timeout_s=a.timeout))
uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="info", access_log=False)
