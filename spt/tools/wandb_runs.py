"""W&B runs for :mod:`spt.compare`: offline run directories (``<run dir>/wandb/offline-run-*``,
what ``WANDB_MODE=offline`` writes) and, with network, the W&B API.

wandb 0.31 has no public reader for an offline run's ``run-<id>.wandb`` log (wandb/wandb#1768,
#9448; a local reader is proposed in wandb/wandb#12745). The log uses the LevelDB log framing
behind a 7-byte ``:W&B`` header: 32 KiB blocks of chunks, each ``crc32 (u32 LE) | length (u16
LE) | kind (u8) | data``, a record either in one FULL chunk or split FIRST, MIDDLE..., LAST,
the checksum taken over the kind byte and the data. :func:`records` undoes only that framing;
each record is decoded by wandb's own protobuf class. A run still writing ends in a torn
chunk, where reading stops.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spt.errors import SptError

MAGIC = b":W&B"
FILE_HEADER = 7  # magic, u16 0xBEE1, u8 version
BLOCK = 32 * 1024
CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class WandbRun:
    """What spt.compare reads from a W&B run: identity, the logged config (spt logs its whole
    resolved config), the last value of each logged metric, and the history rows."""

    id: str
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    finished: bool = False  # the log holds the run's exit record


def records(path: Path) -> Iterator:
    """The ``wandb_internal_pb2.Record`` messages of an offline run log, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER:  # just created: wandb-core buffers until its first flush
        return
    if not data.startswith(MAGIC):
        raise SptError(
            f"{path} is not a W&B run log (no {MAGIC!r} header): delete it, or "
            "leave its run out (spt.compare --done-only)"
        )
    pos, parts = FILE_HEADER, []
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:  # a block's tail too short for a chunk: padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        body = data[pos + CHUNK.size : pos + CHUNK.size + length]
        if kind == 0 and length == 0:  # zero fill up to the block's end
            pos += BLOCK - pos % BLOCK
            continue
        if len(body) < length or zlib.crc32(bytes([kind]) + body) != crc:
            return  # torn tail of a run still writing (or killed mid-write)
        pos += CHUNK.size + length
        if kind in (FIRST, FULL):
            parts = []
        parts.append(body)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def _value(item):
    """A config/summary/history item's value (typed field or ``value_json``)."""
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind and kind != "json":
        return None if kind == "none" else getattr(item, kind)
    return json.loads(getattr(item, kind) if kind == "json" else item.value_json)


def _path(item) -> list[str]:
    return list(item.nested_key) or [item.key]


def _set(tree: dict, path: list[str], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def read_offline_run(path: Path, history: bool = False) -> WandbRun:
    """The run logged in ``path``: a local run directory (``offline-run-<time>-<id>``, or
    ``run-<time>-<id>`` of an online run) or its ``run-<id>.wandb`` file. ``history`` keeps
    every logged row (``WandbRun.history``); the summary always holds the last values."""
    path = Path(path)
    if path.is_dir():
        logs = sorted(path.glob("run-*.wandb"))
        if not logs:
            raise SptError(f"{path} holds no run-<id>.wandb: give a wandb/offline-run-* directory")
        path = logs[0]
    run = WandbRun(id=path.stem.removeprefix("run-"))
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.id = record.run.run_id or run.id
            run.group, run.tags = record.run.run_group, list(record.run.tags)
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = "/".join(_path(item))
                if not key.startswith("_"):
                    row[key] = _value(item)
            if row and history:
                run.history.append(row)
            run.summary.update(row)
            continue
        elif kind == "summary":
            for item in record.summary.update:
                key = "/".join(_path(item))
                if not key.startswith("_"):
                    run.summary[key] = _value(item)
            continue
        elif kind == "exit":
            run.finished = True
            continue
        else:
            continue
        for item in updates:
            if _path(item)[0] != "_wandb":
                _set(run.config, _path(item), _value(item))
    return run


def offline_runs(run_dir: Path) -> list[Path]:
    """The local W&B run directories of an spt run directory (``<run>/wandb/offline-run-*``,
    or ``run-*`` when it logged online), oldest first: a resumed run starts a new one."""
    found = [
        p
        for p in (Path(run_dir) / "wandb").glob("*run-*")
        if p.is_dir() and any(p.glob("run-*.wandb"))
    ]
    return sorted(found, key=lambda p: p.name.removeprefix("offline-"))  # by start time


def api_runs(path: str, group: str | None = None) -> list[WandbRun]:
    """The runs of ``entity/project`` on the W&B server (``group``: one study), through
    ``wandb.Api``; needs network and a login (``WANDB_API_KEY``)."""
    import wandb

    try:
        found = wandb.Api().runs(path, filters={"group": group} if group else None)
        out = []
        for r in found:
            config = {k: v for k, v in dict(r.config).items() if not k.startswith("_")}
            summary = {k: v for k, v in dict(r.summary).items() if not k.startswith("_")}
            out.append(
                WandbRun(
                    id=r.id,
                    group=r.group or "",
                    tags=list(r.tags or []),
                    config=config,
                    summary=summary,
                    finished=r.state == "finished",
                )
            )
    except Exception as exc:  # no network, no login, no such project
        raise SptError(
            f"wandb:{path}: the W&B API could not list the runs "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); check the "
            "network and `wandb login`, or compare the local run directories "
            "instead"
        ) from None
    if not out:
        raise SptError(f"wandb:{path}: no runs{f' in group {group!r}' if group else ''}")
    return out
