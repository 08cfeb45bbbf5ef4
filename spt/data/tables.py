"""Table-to-text sources (E2E meaning representations, WebNLG triples) read into one shape.

Every split becomes a list of :class:`Entry`: one input table, linearised to a string, and all of
its reference texts. Two readers (``kind``) exist, each for a local file and for the Hugging Face
Hub:

- ``e2e``: rows of ``(mr, ref)``; rows that share an MR are grouped into one entry (file order of
  first appearance). Local: a CSV with header ``mr,ref`` (the E2E challenge files). Hub (e.g.
  ``GEM/e2e_nlg``): columns ``meaning_representation``, ``target`` and optional ``references``.
- ``webnlg``: one entry per WebNLG ``<entry>``. Local: JSON lines with ``triples`` (list of
  ``[subject, predicate, object]``), ``lexicalizations`` (list of ``{"text": ...}``), optional
  ``category`` / ``seen_category``. Hub (``web_nlg``): ``modified_triple_sets.mtriple_set[0]``
  (``"s | p | o"`` strings) and ``lex.text``.

Linearisation follows Li & Liang, "Prefix-Tuning" (arXiv:2101.00190):
``name[The Vaults], eatType[pub]`` -> ``name : The Vaults | eatType : pub`` and triples ->
``subj : pred : obj | ...`` with underscores turned into spaces.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spt.data.readers import ROOT_HINT, hub_source, load_hub_split
from spt.errors import SptError

KINDS = ("e2e", "webnlg")
LOCAL_KEYS = {"path"}
HUB_KEYS = {"path", "name", "split", "revision"}

_MR_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*(?:,|\Z)")


@dataclass
class Entry:
    """One input table: its linearised text, every reference text, and extra fields (category)."""

    source: str
    refs: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def linearize_mr(mr: str) -> str:
    """``"name[The Vaults], eatType[pub]"`` -> ``"name : The Vaults | eatType : pub"``."""
    slots: list[str] = []
    pos = 0
    text = mr.strip()
    while pos < len(text):
        m = _MR_SLOT.match(text, pos)
        if m is None:
            raise SptError(
                f"cannot parse the E2E meaning representation {mr!r} at character "
                f"{pos}: expected comma-separated 'attribute[value]' slots."
            )
        slots.append(f"{m.group(1)} : {m.group(2).strip()}")
        pos = m.end()
    if not slots:
        raise SptError(f"empty E2E meaning representation {mr!r}.")
    return " | ".join(slots)


def linearize_triples(triples: Sequence[Sequence[str]]) -> str:
    """``[["Aarhus_Airport", "cityServed", "Aarhus"]]`` -> ``"Aarhus Airport : cityServed : Aarhus"``
    (several triples joined by ``" | "``)."""
    parts = []
    for t in triples:
        if len(t) != 3:
            raise SptError(f"a WebNLG triple must be [subject, predicate, object], got {t!r}.")
        parts.append(" : ".join(str(x).replace("_", " ").strip() for x in t))
    if not parts:
        raise SptError("a WebNLG entry has no triples.")
    return " | ".join(parts)


def group_by_mr(pairs: Sequence[tuple[str, str]]) -> list[Entry]:
    """``(mr, ref)`` rows -> one entry per distinct MR (order of first appearance)."""
    grouped: dict[str, list[str]] = {}
    for mr, ref in pairs:
        grouped.setdefault(mr, []).append(ref)
    return [Entry(linearize_mr(mr), refs, {"mr": mr}) for mr, refs in grouped.items()]


# ---------------------------------------------------------------------------- local files
def _read_e2e_csv(path: Path) -> list[Entry]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"mr", "ref"} <= set(reader.fieldnames):
            raise SptError(
                f"{path}: expected a CSV with header columns 'mr' and 'ref', "
                f"found {reader.fieldnames}."
            )
        pairs = [(row["mr"], row["ref"]) for row in reader]
    return group_by_mr(pairs)


def _read_webnlg_jsonl(path: Path) -> list[Entry]:
    entries = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                triples, lex = obj["triples"], obj["lexicalizations"]
            except json.JSONDecodeError as e:
                raise SptError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
            except KeyError as e:
                raise SptError(
                    f"{path}:{lineno}: entry has no {e.args[0]!r} field; expected "
                    "'triples' and 'lexicalizations'."
                ) from None
            meta = {k: obj[k] for k in ("eid", "category", "seen_category") if k in obj}
            entries.append(Entry(linearize_triples(triples), [x["text"] for x in lex], meta))
    return entries


def read_local_entries(root: Path, spec: Mapping, kind: str, where: str) -> list[Entry]:
    """Entries of one split from ``root / spec["path"]``."""
    path = root / spec["path"]
    if not path.is_file():
        raise SptError(f"data file not found: {path} (from {where}.path). {ROOT_HINT}")
    return _read_e2e_csv(path) if kind == "e2e" else _read_webnlg_jsonl(path)


# ---------------------------------------------------------------------------- the Hub
def _hub_entries(ds: Any, kind: str, source: str, where: str) -> list[Entry]:
    need = (
        ["meaning_representation", "target"] if kind == "e2e" else ["modified_triple_sets", "lex"]
    )
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise SptError(
            f"{source} has no column(s) {missing} (columns: {ds.column_names}); "
            f"data.kind={kind!r} expects {need}. Fix {where} or data.kind."
        )
    if kind == "e2e":
        targets: dict[str, list[str]] = {}
        listed: dict[str, list[str]] = {}
        has_refs = "references" in ds.column_names
        for row in ds:
            mr = row["meaning_representation"]
            targets.setdefault(mr, []).append(row["target"])
            if has_refs and row["references"]:
                known = listed.setdefault(mr, [])
                for ref in row["references"]:
                    if ref not in known:
                        known.append(ref)
        # eval splits list every reference of an MR in ``references``; train has one per row
        return [
            Entry(linearize_mr(mr), listed.get(mr) or refs, {"mr": mr})
            for mr, refs in targets.items()
        ]
    entries = []
    for row in ds:
        triples = [t.split(" | ") for t in row["modified_triple_sets"]["mtriple_set"][0]]
        meta = {k: row[k] for k in ("eid", "category") if k in row}
        entries.append(Entry(linearize_triples(triples), list(row["lex"]["text"]), meta))
    return entries


def read_hub_entries(spec: Mapping, kind: str, where: str) -> list[Entry]:
    """Entries of one split via ``datasets.load_dataset``; failures become an SptError."""
    source = hub_source(spec)
    ds = load_hub_split(spec)
    return _hub_entries(ds, kind, source, where)


def check_split_spec(spec: Any, where: str, allowed: set[str]) -> dict | None:
    """Validate one split spec (``None`` allowed: the split is absent)."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise SptError(
            f"{where} must be null or a mapping with keys {sorted(allowed)}, got {spec!r}."
        )
    spec = dict(spec)
    unknown = set(spec) - allowed
    if unknown:
        raise SptError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
    if not spec.get("path"):
        raise SptError(f"{where}.path is required.")
    return spec


# ---------------------------------------------------------------------------- splits
def carve_dev(entries: Sequence[Entry], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/dev partition of entries (whole tables, so every reference of one MR
    stays on one side): a seeded shuffle of the entry indices, the first ``round(fraction * n)``
    (at least 1) go to dev. Returns ``(train_indices, dev_indices)``, each in file order."""
    n = len(entries)
    if n < 2:
        raise SptError(f"cannot carve a dev split out of {n} table(s).")
    order = list(range(n))
    random.Random(f"carve:{seed}").shuffle(order)  # a str seed is stable across runs/platforms
    n_dev = min(n - 1, max(1, round(fraction * n)))
    dev = sorted(order[:n_dev])
    train = sorted(order[n_dev:])
    return train, dev
