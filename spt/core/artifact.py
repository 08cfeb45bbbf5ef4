"""Soft-prompt artifacts: ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (metadata).

No pickle anywhere. The metadata names the method, shapes, task names, init and the base
model's identity (see :meth:`spt.backbones.Backbone.identity`). It lives in the safetensors
header, which is the source of truth: the tensors and their metadata are one file, replaced in
one rename, so a reader sees the old artifact or the new one, never a mix. The ``.json`` beside
it is a copy for people and tools; a copy that disagrees with the header (a crash between the
two writes, or a hand edit) is ignored with a warning. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spt.errors import SptError

FORMAT_VERSION = 1
MAX_METADATA_BYTES = 16 * 2**20  # a prompt.json past this is refused unread (real ones: KBs)
log = logging.getLogger(__name__)


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a temp file beside ``path``, then rename it over ``path``. Temp files
    of this name that a killed writer left (older than a minute) are removed first; a full
    disk, a file-size limit (EFBIG) or a read-only folder is an SptError naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if now - stale.stat().st_mtime > 60:
                    stale.unlink()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise SptError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:  # safetensors reports EFBIG/ENOSPC as its own
        Path(tmp).unlink(missing_ok=True)
        text = getattr(err, "strerror", None) or str(err).removeprefix("Error while serializing: ")
        raise SptError(f"cannot write {path}: {text}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(Path(path), write)


def output_path(target: str, flag: str) -> Path:
    """``target`` of an output flag (``--out``), checked before the work that fills it: not a
    folder, and under a folder this process may write to (or one it may create)."""
    path = Path(target).expanduser()
    if path.is_dir():
        raise SptError(f"{flag} {target} is a directory: name a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SptError(
            f"cannot write {flag} {target}: {parent} is "
            + ("not a folder" if not parent.is_dir() else "not writable")
            + ": name a file in a folder you can write to"
        )
    return path


def save_artifact(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` sibling; returns the tensor path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    meta = {
        "format_version": FORMAT_VERSION,
        **meta,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    check_tensors(tensors, path)
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    # clone: two names may view one tensor (e.g. a materialised table that is the parameter)
    clean = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata={"spt": text}))
    atomic_write_text(path.with_suffix(".json"), text + "\n")
    return path


def load_artifact(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an artifact; any unreadable or inconsistent file raises :class:`SptError`."""
    path = Path(path).expanduser()
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise SptError(f"prompt file not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            header = (f.metadata() or {}).get("spt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SptError(f"{path} is not a readable safetensors prompt file: {err}") from None
    meta = _parse_metadata(header, f"the header of {path}") if header is not None else None
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            size = side.stat().st_size
            if size > MAX_METADATA_BYTES:
                raise SptError(
                    f"{side} is {size:,} bytes, past the {MAX_METADATA_BYTES:,} an artifact's "
                    "metadata may take: it is not spt's (delete it; the .safetensors header "
                    "holds the metadata)"
                )
            copy = _parse_metadata(side.read_text(encoding="utf-8"), str(side))
        except (OSError, UnicodeDecodeError) as err:
            raise SptError(f"{side} is not a readable UTF-8 JSON file: {err}") from None
        if meta is None:  # a safetensors file without spt's header: the JSON is all there is
            meta = copy
        elif copy != meta:
            log.warning(
                "%s differs from the metadata inside %s (a crash between the two writes, or "
                "an edit): using the header, the copy is ignored",
                side.name,
                path.name,
            )
    if meta is None:
        raise SptError(f"{path} has no metadata: neither {side.name} nor an 'spt' header entry")
    shapes = meta.get("tensors", {})
    if not isinstance(shapes, dict) or not all(
        isinstance(v, list) and all(isinstance(d, int) for d in v) for v in shapes.values()
    ):
        raise SptError(
            f"metadata of {path}: 'tensors' must map tensor names to shapes "
            f"(lists of ints), got {str(shapes)[:100]}"
        )
    for name, tensor in tensors.items():
        if name in shapes and list(tensor.shape) != shapes[name]:
            raise SptError(
                f"{path}: tensor {name!r} has shape {list(tensor.shape)} but the "
                f"metadata says {shapes[name]}"
            )
    check_tensors(tensors, path)
    return tensors, meta


# The integer tensors an artifact may hold: CPT's context tokens, their types and examples.
INDEX_TENSORS = ("context_ids", "context_types", "context_example")


def check_tensors(tensors: dict[str, torch.Tensor], where) -> None:
    """Every floating-point tensor is finite (an inf or NaN prompt scores nothing: the server
    answered ``scores: null``), and every tensor but the token indices of :data:`INDEX_TENSORS`
    is floating point (prompts, prefixes, gates, memories, heads, weights: a new method's
    tensors are checked without a list to extend)."""
    for name, t in tensors.items():
        if name not in INDEX_TENSORS and not torch.is_floating_point(t):
            raise SptError(
                f"{where}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, not a "
                "floating-point prompt: the file is not a trained spt prompt"
            )
        if torch.is_floating_point(t) and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SptError(
                f"{where}: tensor {name!r} holds {bad} non-finite value(s) (inf or NaN): the "
                "prompt diverged or the file is damaged; retrain it (lower the learning rate)"
            )


def _parse_metadata(text: str, where: str) -> dict:
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise SptError(f"metadata in {where} is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(meta, dict):
        raise SptError(f"metadata in {where} is not a JSON object")
    return meta


def check_base(meta: dict, identity: dict, path: str | Path) -> None:
    """Refuse a prompt trained on another base model, naming both identities."""
    base = meta.get("base") or {}
    if base.get("fingerprint") != identity.get("fingerprint"):
        raise SptError(
            f"{path} was trained on base model {base.get('name')!r} (fingerprint "
            f"{base.get('fingerprint')}), but the loaded backbone is {identity.get('name')!r} "
            f"(fingerprint {identity.get('fingerprint')}). Load it with the model it was trained "
            f"on (model=...), or train a new prompt for this one."
        )


def load_module_tensors(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], key_prefix: str, path, hint: str
) -> None:
    """Copy ``tensors[key_prefix + name]`` into each parameter of ``module``; a missing key or
    a shape that differs is an SptError (``hint`` says which settings to compare)."""
    own = dict(module.named_parameters())
    for name, p in own.items():
        key = key_prefix + name
        if key not in tensors:
            raise SptError(f"{path} lacks {key!r}: it was saved with another setup ({hint})")
        if tuple(tensors[key].shape) != tuple(p.shape):
            raise SptError(
                f"{path}: {key} has shape {list(tensors[key].shape)}, this run "
                f"expects {list(p.shape)} (check {hint})"
            )
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(tensors[key_prefix + name])
