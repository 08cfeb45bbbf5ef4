"""The one error type users see: a problem with their input and how to fix it."""

from __future__ import annotations

import sys


class SptError(Exception):
    """A user-facing error. The message names the problem and the fix.

    ``spt.run`` and the other command-line tools print it without a traceback and exit with
    status 2.
    """


def is_count(value, least: int = 1) -> bool:
    """An integer ``>= least`` and not a bool (YAML's ``true`` is an int to Python): what a
    count setting must be. Each caller words its own message (what null means there, the
    range)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def user_error(exc: BaseException) -> SptError | None:
    """The SptError behind ``exc``: Hydra's instantiate and Lightning wrap what they call."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SptError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def cli_error(exc: BaseException) -> int:
    """For a command-line tool's ``except Exception``: print the user error behind ``exc`` as
    one line ``spt: error: ...`` and return exit status 2; anything else is a bug, re-raised."""
    err = user_error(exc)
    if err is None:
        raise exc
    print(f"spt: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
    return 2
