"""Run many ``python -m spt.run`` command lines in one interpreter, for the bad-input table
(tests/test_bad_input.py): each goes through the same entry (argv -> Hydra -> spt's handler)
as the real command, with its stderr and exit status recorded, and the seconds of imports
are paid once. Reads ``[[out_dir, arg, ...], ...]`` as JSON on stdin, writes
``[{"code", "stderr"}, ...]`` as JSON on stdout."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys


def main() -> int:
    cases = json.load(sys.stdin)
    import spt.run

    results = []
    root = logging.getLogger()
    for out, *args in cases:
        os.environ["SPT_OUTPUT_DIR"] = out
        sys.argv = ["spt.run", *args]
        spt.run._JOB_STARTED = False
        handlers = list(root.handlers)
        err = io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                spt.run.cli()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            finally:
                for h in root.handlers:
                    if h not in handlers:
                        root.removeHandler(h)
        results.append({"code": code, "stderr": err.getvalue()})
    json.dump(results, sys.__stdout__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
