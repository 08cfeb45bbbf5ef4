"""Turn finished runs into one table: ``python -m spt.compare RUNS_DIR [...] [--csv out.csv]``.

Every run directory below the given roots that holds a ``metrics.json`` (written by
``spt.run``) becomes a row: method, model, data, its dev metrics, the trainable parameters
(count and percentage of the whole model), the parameters a served prompt needs (the
materialised prefix for reparameterised prefixes, from ``prompt.json``), steps, fit time,
artifact size, the seed, the regularizer (from the run's ``config.yaml``) and, for input-vector
prompts, ``prompt_norm``: the mean L2 norm of the saved prompt's vectors (what Nemesis
penalises). Prints a Markdown table; ``--csv`` also writes every column.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from spt.core.errors import SptError

FIXED = ["run", "data", "model", "method", "regularizer", "seed", "steps", "trainable",
         "trainable_pct", "served_params", "served_pct", "prompt_norm", "fit_seconds",
         "artifact_bytes"]


def collect(roots: list[Path]) -> list[dict]:
    """One row per run directory under ``roots`` (sorted by data, model, method, run)."""
    rows = []
    for root in roots:
        if not root.exists():
            raise SptError(f"{root} does not exist: give run directories or their parents")
        for path in sorted(root.rglob("metrics.json")):
            rows.append(_row(path))
    if not rows:
        raise SptError(f"no metrics.json under {', '.join(map(str, roots))}: point at the "
                       "directories spt.run wrote (outputs/runs, a sweep dir, hydra.run.dir)")
    return sorted(rows, key=lambda r: (r["data"], r["model"], r["method"], r["run"]))


def _row(path: Path) -> dict:
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SptError(f"{path} is not a readable metrics.json ({exc})") from exc
    meta_path = path.parent / "prompt.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    trainable = m.get("params/trainable", 0)
    total = trainable + m.get("params/backbone", 0)
    served = m.get("params/served", meta.get("served_parameters"))
    if served is None:  # runs from before spt recorded it: count from the artifact itself
        served = _served_from_artifact(path.parent, trainable)
    row = {
        "run": str(path.parent), "data": m.get("data", ""), "model": m.get("model", ""),
        "method": m.get("method", "") + (" (zero-shot)" if m.get("zero_shot") else ""),
        "steps": m.get("steps", 0), "trainable": trainable,
        "trainable_pct": round(m.get("params/trainable_pct", 0.0), 4),
        "served_params": served, "served_pct": round(100 * served / total, 4) if total else 0,
        "fit_seconds": m.get("fit_seconds", 0), "artifact_bytes": m.get("artifact_bytes", 0),
        "seed": m.get("seed"), "regularizer": _regularizer(path.parent),
        "prompt_norm": _prompt_norm(path.parent),
    }
    row.update({k: v for k, v in m.items() if k.startswith("val/") and not k.endswith("_best")})
    return row


def _regularizer(run: Path) -> str:
    """The run's regularizer group (``none`` without one), from its resolved ``config.yaml``."""
    config = run / "config.yaml"
    if not config.exists():
        return ""
    from omegaconf import OmegaConf

    target = (OmegaConf.load(config).get("regularizer") or {}).get("_target_")
    return target.rsplit(".", 1)[-1].lower() if target else "none"


def _prompt_norm(run: Path) -> float | None:
    """Mean L2 norm over the vectors of the artifact's ``prompt`` tensor (``[..., N, d]``),
    None without one (e.g. a prefix)."""
    artifact = run / "prompt.safetensors"
    if not artifact.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(artifact), "pt") as f:
        if "prompt" not in f.keys():
            return None
        prompt = f.get_tensor("prompt").float()
    return round(float(prompt.norm(dim=-1).mean()), 4)


def _served_from_artifact(run: Path, default: int) -> int:
    artifact, config = run / "prompt.safetensors", run / "config.yaml"
    if not (artifact.exists() and config.exists()):
        return default
    from hydra.utils import get_class
    from omegaconf import OmegaConf
    from safetensors import safe_open

    from spt.core.mixin import served_numel

    target = OmegaConf.load(config).method._target_
    with safe_open(str(artifact), "pt") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    numel = {k: math.prod(shape) for k, shape in sizes.items()}
    return served_numel(get_class(target).served_tensors, numel)


def columns(rows: list[dict]) -> list[str]:
    metrics = sorted({k for r in rows for k in r if k.startswith("val/")})
    return FIXED + metrics


def markdown(rows: list[dict], cols: list[str] | None = None) -> str:
    cols = cols or [c for c in columns(rows) if c not in ("run", "artifact_bytes")]

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spt.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="run directories or their parents")
    parser.add_argument("--csv", type=Path, help="also write every column to this CSV file")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.roots)
    except SptError as exc:
        print(f"spt: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns(rows), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
