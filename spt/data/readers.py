"""Read one labelled split from a local file (tsv/csv/jsonl) or from the Hugging Face Hub.

A *split spec* says where the text and the label live:

- ``fields``: template field name -> column name (every text field of the task must be present)
- ``label``: the label column
- ``label_map``: raw label value -> label name, or ``None`` when the raw value already is the name

A local spec adds ``path`` (relative to the data root), ``format`` (``tsv``/``csv``/``jsonl``,
default from the file extension), ``columns`` (names for a file without a header row; ``None`` =
the first row is the header) and ``quoting`` (``minimal``, the csv default, or ``none`` for files
whose text holds raw ``"`` characters). A hub spec adds ``path``, ``name`` and ``split`` for
``datasets.load_dataset``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spt.errors import SptError
from spt.hub import offline_reason

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
LOCAL_KEYS = {"path", "format", "columns", "quoting", "fields", "label", "label_map"}
HUB_KEYS = {"path", "name", "split", "fields", "label", "label_map"}
ROOT_HINT = "Set SPT_DATA_DIR=/path/to/data or pass data.root=/path/to/data."


@dataclass
class RawSplit:
    """Text columns and class indices of one split, plus where they came from (for messages)."""

    texts: dict[str, list[str]]
    labels: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> RawSplit:
        texts = {f: [col[i] for i in indices] for f, col in self.texts.items()}
        return RawSplit(texts, [self.labels[i] for i in indices], self.source)


def label_key(value: Any) -> str:
    """Canonical string of a raw label: 1, "1" and 1.0 match; JSON true matches "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def to_plain(obj: Any) -> Any:
    """Recursively turn mappings/sequences (e.g. OmegaConf containers) into dicts/lists."""
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [to_plain(v) for v in obj]
    return obj


def check_spec(
    spec: Any, where: str, text_fields: Sequence[str], label_names: Sequence[str], allowed: set[str]
) -> dict:
    """Validate a split spec; ``where`` is its YAML key (e.g. ``data.local.train``) for messages."""
    if not isinstance(spec, Mapping):
        raise SptError(f"{where} must be a mapping with keys {sorted(allowed)}, got {spec!r}.")
    spec = dict(spec)
    unknown = set(spec) - allowed
    if unknown:
        raise SptError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
    for key in ("path", "label", "fields"):
        if not spec.get(key):
            raise SptError(f"{where}.{key} is required.")
    fields = spec["fields"]
    if not isinstance(fields, Mapping):
        raise SptError(f"{where}.fields must map template field -> column, got {fields!r}.")
    missing = [f for f in text_fields if f not in fields]
    if missing:
        raise SptError(
            f"{where}.fields has no column for text field(s) {missing} "
            f"(data.text_fields = {list(text_fields)})."
        )
    label_map = spec.get("label_map")
    if label_map is not None:
        if not isinstance(label_map, Mapping):
            raise SptError(
                f"{where}.label_map must map raw label -> label name, got {label_map!r}."
            )
        bad = sorted({str(v) for v in label_map.values() if v not in label_names})
        if bad:
            raise SptError(
                f"{where}.label_map maps to {bad}, which are not in data.label_names "
                f"{list(label_names)}."
            )
        spec["label_map"] = {label_key(k): v for k, v in label_map.items()}
    if "format" in spec and spec["format"] not in ("tsv", "csv", "jsonl"):
        raise SptError(f"{where}.format must be tsv, csv or jsonl, got {spec['format']!r}.")
    if spec.get("quoting", "minimal") not in QUOTING:
        raise SptError(
            f"{where}.quoting must be one of {sorted(QUOTING)}, got {spec['quoting']!r}."
        )
    return spec


def map_labels(
    raw: Sequence[Any],
    label_map: Mapping[str, str] | None,
    label_names: Sequence[str],
    source: str,
    where: str,
    int2str: Any = None,
) -> list[int]:
    """Raw label values -> class indices (position in ``label_names``); unmapped ones are errors."""
    index = {name: i for i, name in enumerate(label_names)}
    out: list[int] = []
    for row, value in enumerate(raw):
        key = label_key(value)
        if label_map is not None:
            name = label_map.get(key)
        elif int2str is not None and isinstance(value, int) and not isinstance(value, bool):
            name = int2str(value)
        else:
            name = key
        if name not in index:
            raise SptError(
                f"label {value!r} (row {row}) in {source} is not one of data.label_names "
                f"{list(label_names)}"
                + (f" and has no entry in {where}.label_map" if label_map is not None else "")
                + f". Fix data.label_names / data.label_words (same order) or add it to "
                f"{where}.label_map."
            )
        out.append(index[name])
    return out


def read_jsonl(path: str, hint: str) -> list[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSON-lines file (``-``: stdin),
    for the command lines that take inputs so; ``hint`` says what a line should hold."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).expanduser().read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SptError(f"cannot read --input {path}: {err}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except (ValueError, RecursionError) as err:
            raise SptError(f"{path} line {n} is not JSON ({str(err)[:120]}): {hint}") from None
    return rows


def read_rows(path: Path, fmt: str, columns: Sequence[str] | None, quoting: str) -> Iterator[dict]:
    """The rows of a local csv / tsv / jsonl file as dicts; a malformed line, bytes that are
    not UTF-8 (a binary file) or text that is not valid Unicode (a lone surrogate escaped in
    JSON, which no tokenizer takes) is an SptError naming the file and line."""
    try:
        for lineno, row in _rows(path, fmt, columns, quoting):
            for key, value in row.items():
                if isinstance(value, str):
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError:
                        raise SptError(
                            f"{path}:{lineno}: column {key!r} holds text that is not valid "
                            "Unicode (a lone surrogate, e.g. \\ud800): fix or drop the row"
                        ) from None
            yield row
    except UnicodeDecodeError as e:
        raise SptError(
            f"{path}: byte {e.start} is not UTF-8 ({e.reason}): the file is binary or in "
            "another encoding; convert it to UTF-8"
        ) from None
    except csv.Error as e:
        raise SptError(f"{path}: not a readable {fmt} file ({e})") from None


def _rows(path: Path, fmt: str, columns: Sequence[str] | None, quoting: str):
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                    raise SptError(f"{path}:{lineno}: not valid JSON ({msg}).") from None
                if not isinstance(row, dict):
                    raise SptError(f"{path}:{lineno}: a JSON {type(row).__name__}, not an object")
                yield lineno, row
        return
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    delimiter = "\t" if fmt == "tsv" else ","
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=QUOTING[quoting])
        header = list(columns) if columns is not None else next(reader, None)
        if header is None:
            return
        for lineno, row in enumerate(reader, 2 if columns is None else 1):
            if not row:
                continue
            if len(row) != len(header):
                raise SptError(
                    f"{path}:{lineno}: expected {len(header)} columns {header}, found {len(row)}. "
                    "Check the file's format/quoting/columns keys in the data config."
                )
            yield lineno, dict(zip(header, row, strict=True))


def read_local(
    root: Path, spec: Mapping, text_fields: Sequence[str], label_names: Sequence[str], where: str
) -> RawSplit:
    """Read one split described by a local spec (see module docstring)."""
    path = root / spec["path"]
    if not path.is_file():
        raise SptError(f"data file not found: {path} (from {where}.path). {ROOT_HINT}")
    fmt = spec.get("format") or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SptError(
            f"cannot tell the format of {path}; set {where}.format to tsv, csv or jsonl."
        )
    texts: dict[str, list[str]] = {f: [] for f in text_fields}
    raw: list[Any] = []
    fields = spec["fields"]
    label_col = spec["label"]
    rows = read_rows(path, fmt, spec.get("columns"), spec.get("quoting", "minimal"))
    for n, row in enumerate(rows):
        try:
            for f in text_fields:
                value = row[fields[f]]
                texts[f].append("" if value is None else str(value))
            raw.append(row[label_col])
        except KeyError as e:
            raise SptError(
                f"{path}: row {n} has no column {e.args[0]!r} (columns: {sorted(row)}). "
                f"Fix {where}.fields / {where}.label / {where}.columns."
            ) from None
    labels = map_labels(raw, spec.get("label_map"), label_names, str(path), where)
    return RawSplit(texts, labels, str(path))


@contextlib.contextmanager
def _offline_as_env_says() -> Iterator[str | None]:
    """Apply HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as set *now*; go offline if the Hub is down.

    ``datasets`` and ``huggingface_hub`` read these variables once, at import; a variable set later
    (a test's monkeypatch, a launcher) would otherwise be ignored, and each request retried for
    ~25 s.
    Offline mode still serves datasets that are already in the local HF cache. Yields why offline
    mode was forced (for the error message), or None.
    """
    import datasets.config
    from huggingface_hub import constants

    reason = offline_reason()
    if reason is None:
        yield None
        return
    saved = [
        (mod, attr, getattr(mod, attr))
        for mod, attr in (
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
            (constants, "HF_HUB_OFFLINE"),
        )
        if hasattr(mod, attr)
    ]
    try:
        for mod, attr, _ in saved:
            setattr(mod, attr, True)
        yield reason
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


def hub_source(spec: Mapping) -> str:
    """How a hub split is named in messages: ``path/name split 'x' (Hugging Face Hub)``."""
    source = f"{spec['path']}" + (f"/{spec['name']}" if spec.get("name") else "")
    return source + f" split {spec.get('split', 'train')!r} (Hugging Face Hub)"


def load_hub_split(spec: Mapping, fix: str | None = None):
    """``datasets.load_dataset`` for one split spec (path, name, split, optional revision),
    offline as the environment says now; any failure becomes an SptError naming the source,
    the cause and ``fix`` (default: point data.root at local files). A gated dataset's
    refusal also says how to get access."""
    offline = None
    try:
        import datasets

        with _offline_as_env_says() as offline:
            kwargs = {"revision": spec["revision"]} if spec.get("revision") else {}
            return datasets.load_dataset(
                spec["path"], spec.get("name"), split=spec.get("split", "train"), **kwargs
            )
    except Exception as e:  # any hub failure has the same fix
        summary = (str(e).strip().splitlines() or [""])[0]
        note = f" (offline mode, {offline}: only the local HF cache was tried)" if offline else ""
        gated = any(w in str(e).lower() for w in ("gated", "401", "403", "unauthorized"))
        access = (
            "This dataset is gated: accept its terms on huggingface.co and set HF_TOKEN. "
            if gated
            else ""
        )
        fix = fix or f"To use a local copy instead, {ROOT_HINT[0].lower()}{ROOT_HINT[1:]}"
        raise SptError(
            f"data.root is null, so {hub_source(spec)} was loaded from the Hub, and that "
            f"failed{note}: {type(e).__name__}: {summary}. {access}{fix}"
        ) from None


def check_root(name: str, root, local: Mapping | None) -> Path | None:
    """The data root as a Path (None = use the hub); a root that is set must exist and hold
    every local file (``local`` maps split -> spec with a ``path``, or None for no file)."""
    root = Path(root).expanduser() if root not in (None, "") else None
    if root is None:
        return None
    if local is None:
        raise SptError(f"{name}: data.root is set ({root}) but data.local describes no files.")
    if not root.is_dir():
        raise SptError(f"data root not found: {root} (from data.root / SPT_DATA_DIR). {ROOT_HINT}")
    for split, spec in local.items():
        if spec is None:
            continue
        path = root / spec["path"]
        folder = spec.get("format") == "folder"  # images, a subfolder per class
        if not (path.is_dir() if folder else path.is_file()):
            raise SptError(
                f"{name}: data {'folder' if folder else 'file'} not found: {path} "
                f"(data.local.{split}.path under data.root). {ROOT_HINT}"
            )
    return root


def read_hub(
    spec: Mapping, text_fields: Sequence[str], label_names: Sequence[str], where: str
) -> RawSplit:
    """Load one split with ``datasets.load_dataset``; a failure becomes an SptError with the fix."""
    source = hub_source(spec)
    ds = load_hub_split(spec)
    fields = spec["fields"]
    missing = [c for c in [*fields.values(), spec["label"]] if c not in ds.column_names]
    if missing:
        raise SptError(
            f"{source} has no column(s) {missing} (columns: {ds.column_names}). "
            f"Fix {where}.fields / {where}.label."
        )
    texts = {f: [str(v) for v in ds[fields[f]]] for f in text_fields}
    feature = ds.features.get(spec["label"])
    int2str = getattr(feature, "int2str", None)
    labels = map_labels(
        ds[spec["label"]], spec.get("label_map"), label_names, source, where, int2str=int2str
    )
    return RawSplit(texts, labels, source)
