"""Turn runs into one table, a mean over seeds, or a plot: ``python -m spt.compare RUNS_DIR [...]``.

Every run directory below the given roots that holds a ``metrics.json`` (written by
``spt.run``) becomes a row: method, model, data, its dev metrics, the trainable parameters
(count and percentage of the whole model), the parameters a served prompt needs (the
materialised prefix for reparameterised prefixes, from ``prompt.json``), steps, fit time,
artifact size, the seed, the regularizer (from the run's ``config.yaml``) and, for input-vector
prompts, ``prompt_norm``: the mean L2 norm of the saved prompt's vectors (what Nemesis
penalises). Such runs have ``status=done``. A run directory without ``metrics.json`` but with
Lightning's ``csv/metrics.csv`` (still training, or crashed) is a row with
``status=incomplete`` and the last dev values it logged (every logger config writes that
CSV, ``logger=wandb`` too: spt reads its own files, not W&B's binary offline log); a run with
neither (just started, or ``logger=none``) is an incomplete row without metrics. A root ``wandb:ENTITY/PROJECT[/GROUP]`` reads runs from the W&B server
instead (``GROUP``: one study, the runs' W&B group), through the W&B API. Prints a Markdown
table.

Options:
  --csv out.csv                 also write every column (or, with --mean, every statistic)
  --keys method.length,data.shots
                                any value of the run's resolved config as a column
  --done-only                   drop incomplete runs
  --mean [--group-by data,method,method.length]
                                one row per group: mean ± sample std (n) of each val/*
                                metric, prompt_norm and fit_seconds (default groups: every
                                identifying column but run and seed)
  --plot method.length --metric val/acc [--hue method] [--baseline 'majority=0.51']
        --out plot.png          the metric against a column or config key: every run a dot,
                                the mean ± std a marker (joined only for numeric x), one
                                series per hue value, baselines as dashed lines
  --curves [--metric val/acc] [--hue method] --out curves.png
                                training loss and the dev metric against the step, one
                                colour per run, from the runs' CSV logs
A root may also be a CSV that --csv wrote (a study's runs.csv): its rows, without the runs.

From Python (e.g. a notebook): ``rows = collect([root], keys=[...])``,
``aggregate(rows, group_by)``, ``plot(rows, x, metric, hue=..., out=...)``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import textwrap
from pathlib import Path

from spt import methods
from spt.core.trees import flatten
from spt.errors import SptError

FIXED = [
    "run",
    "data",
    "model",
    "method",
    "regularizer",
    "seed",
    "status",
    "steps",
    "trainable",
    "trainable_pct",
    "served_params",
    "served_pct",
    "prompt_norm",
    "fit_seconds",
    "artifact_bytes",
]
IDENTITY = ["data", "model", "method", "regularizer"]  # what a run is, apart from its seed
SUMMARISED = ["prompt_norm", "fit_seconds"]  # averaged over seeds besides the val/* metrics
_ABSENT = object()  # OmegaConf.select default: tells a missing key from a null value
WANDB_PREFIX = "wandb:"  # a root naming W&B runs on the server: wandb:entity/project[/group]
CONFIG = "_config"  # a row's own config, for runs with no directory (read through the W&B API)


# ---------------------------------------------------------------------------------------------
# Rows: one per run directory


def collect(
    roots: list[Path], keys: list[str] | tuple[str, ...] = (), done_only: bool = False
) -> list[dict]:
    """One row per run directory under ``roots`` (sorted by data, model, method, run).

    Finished runs (``metrics.json``) get ``status="done"``; a directory with only Lightning's
    ``csv/metrics.csv`` (or ``csv/version_*/metrics.csv``) gets ``status="incomplete"`` and the
    last value of each ``val/*`` column, unless ``done_only``. ``keys`` are dotted config keys
    (``method.length``) added as columns, see :func:`add_keys`.
    """
    rows, seen = [], set()
    for root in roots:
        if str(root).startswith(WANDB_PREFIX):  # wandb:entity/project[/group], via the API
            rows += [
                row for row in _api_rows(str(root)) if not done_only or row["status"] == "done"
            ]
            continue
        root = Path(root)
        if not root.exists():
            raise SptError(f"{root} does not exist: give run directories or their parents")
        if root.is_file() and root.suffix == ".csv":  # rows a --csv wrote (a study's runs.csv)
            rows += [r for r in read_rows(root) if not done_only or r.get("status") == "done"]
            continue
        for path in sorted(root.rglob("metrics.json")):
            if path.parent.resolve() not in seen:
                seen.add(path.parent.resolve())
                rows.append(_row(path))
        if done_only:
            continue
        for run in sorted({_run_of_csv(p) for p in root.rglob("metrics.csv")} - {None}):
            if run.resolve() not in seen and not (run / "metrics.json").exists():
                seen.add(run.resolve())
                rows.append(_incomplete_row(run))
        for run in sorted({p.parent for p in root.rglob(".hydra")}):
            if run.resolve() not in seen and _config(run) is not None:  # no log yet at all
                seen.add(run.resolve())
                rows.append(_progress_row(str(run), {}, _config(run), run))
    if not rows:
        raise SptError(
            f"no metrics.json under {', '.join(map(str, roots))}: point at the "
            "directories spt.run wrote (outputs/runs, a sweep dir, hydra.run.dir), "
            f"or at W&B runs ({WANDB_PREFIX}entity/project[/group])"
        )
    rows.sort(key=lambda r: (r["data"], r["model"], r["method"], r["run"]))
    return add_keys(rows, keys)


_INT_COLUMNS = {"seed", "steps", "trainable", "served_params", "artifact_bytes"}


def read_rows(path: Path) -> list[dict]:
    """The per-run rows of a CSV that ``--csv`` wrote (numbers parsed, empty cells None), so
    a study's committed ``runs.csv`` can be tabled and plotted again without its runs."""
    import pandas as pd

    try:  # only empty cells are missing: a value "NA" or "None" stays text
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as exc:
        raise SptError(f"{path} is not a readable CSV of runs ({exc})") from None
    if "run" not in df.columns or "status" not in df.columns:
        raise SptError(
            f"{path} is not a table of runs (no run/status columns): give a CSV that "
            "python -m spt.compare --csv wrote without --mean"
        )
    for col in df.columns:  # count columns with gaps come back as floats: ints again
        if col in _INT_COLUMNS and df[col].dtype == float:
            df[col] = df[col].astype("Int64")
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    for r in rows:
        r[CONFIG] = None  # the config's values that matter are columns already
    return rows


def _row(path: Path) -> dict:
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SptError(f"{path} is not a readable metrics.json ({exc})") from None
    if not isinstance(m, dict):
        raise SptError(f"{path} holds a JSON {type(m).__name__}, not spt.run's metrics object")
    run = path.parent
    meta_path = run / "prompt.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    cfg = _config(run)  # read once for every field below that needs it
    if m.get("params/served", meta.get("served_parameters")) is None:
        # runs from before spt recorded it: count from the artifact itself
        m["params/served"] = _served_from_artifact(run, cfg, m.get("params/trainable", 0))
    row = _metrics_row(str(run), m, cfg, meta, run)
    row["prompt_norm"] = _prompt_norm(run)
    return row


def _metrics_row(name: str, m: dict, cfg, meta: dict, run: Path | None) -> dict:
    """A finished run's row from its metrics (``metrics.json``, or a W&B run's summary) and
    config; ``run`` is its directory when it has one."""
    trainable = m.get("params/trainable", 0)
    total = trainable + m.get("params/backbone", 0)
    served = m.get("params/served", meta.get("served_parameters"))  # None: not recorded
    # Older metrics.json files (and W&B summaries) lack the identity: take it from the config.
    ident = _identity(run, cfg) if not all(m.get(k) for k in ("data", "model", "method")) else {}
    zero_shot = m.get("zero_shot", _select(cfg, "zero_shot")) is True  # W&B logs no booleans
    row = {
        "run": name,
        "data": m.get("data") or ident.get("data", ""),
        "model": m.get("model") or ident.get("model", ""),
        "method": (m.get("method") or ident.get("method", ""))
        + (" (zero-shot)" if zero_shot else ""),
        "steps": m.get("steps", 0),
        "trainable": trainable,
        "trainable_pct": round(m.get("params/trainable_pct", 0.0), 4),
        "served_params": served,
        "served_pct": round(100 * served / total, 4) if total and served is not None else None,
        "fit_seconds": m.get("fit_seconds", 0),
        "artifact_bytes": m.get("artifact_bytes"),
        "seed": m.get("seed", ident.get("seed")),
        "regularizer": _regularizer(cfg),
        "prompt_norm": None,
        "status": "done",
    }
    row.update({k: v for k, v in m.items() if k.startswith("val/") and not k.endswith("_best")})
    return row


def _run_of_csv(path: Path) -> Path | None:
    """The run directory of a CSVLogger file: ``<run>/csv/metrics.csv`` or
    ``<run>/csv/version_N/metrics.csv``; None for any other ``metrics.csv``."""
    if path.parent.name == "csv":
        return path.parent.parent
    if path.parent.name.startswith("version_") and path.parent.parent.name == "csv":
        return path.parent.parent.parent
    return None


def _latest_csv(run: Path) -> Path:
    """The newest CSVLogger file of ``run`` (by modification time, then version number)."""

    def version(p: Path) -> int:
        tail = p.parent.name.removeprefix("version_")
        return int(tail) if tail.isdigit() else -1

    found = [
        p
        for p in [run / "csv" / "metrics.csv", *(run / "csv").glob("version_*/metrics.csv")]
        if p.is_file()
    ]
    return max(found, key=lambda p: (p.stat().st_mtime, version(p)))


def _incomplete_row(run: Path) -> dict:
    """A run without ``metrics.json``: identity from its config, progress and the last logged
    ``val/*`` values from the CSVLogger's ``metrics.csv``."""
    path = _latest_csv(run)
    try:
        with path.open(newline="") as f:
            logged = list(csv.DictReader(f))
    except (OSError, csv.Error) as exc:
        raise SptError(
            f"{path} is not a readable CSVLogger file ({exc}): delete it or the "
            "run directory, or pass --done-only"
        ) from exc
    last: dict[str, float] = {}
    for entry in logged:  # later rows overwrite earlier ones: the last non-empty value wins
        for key, value in entry.items():
            number = _number(value)
            if key and number is not None:
                last[key] = number
    return _progress_row(str(run), last, _config(run), run)


def _progress(summary: dict) -> dict:
    """The numbers of a W&B summary, with Lightning's ``trainer/global_step`` as ``step``."""
    last = {k: float(v) for k, v in summary.items() if _is_number(v)}
    if "trainer/global_step" in last:
        last["step"] = last["trainer/global_step"]
    return last


def _as_config(tree: dict):
    from omegaconf import OmegaConf

    return OmegaConf.create(tree) if tree else None


def _api_rows(spec: str) -> list[dict]:
    """Rows of the W&B runs ``wandb:entity/project[/group]`` names, read through the API:
    finished runs from their summary (the metrics spt.run logs at the end), others as
    incomplete; each row's ``run`` is ``wandb:entity/project/<run id>``."""
    from spt.tools.wandb_runs import api_runs

    parts = spec.removeprefix(WANDB_PREFIX).strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise SptError(
            f"{spec}: name W&B runs as {WANDB_PREFIX}entity/project or "
            f"{WANDB_PREFIX}entity/project/group (a study; the default one is "
            "method/model/data)"
        )
    project, group = "/".join(parts[:2]), "/".join(parts[2:]) or None
    rows = []
    for logged in api_runs(project, group):
        name = f"{WANDB_PREFIX}{project}/{logged.id}"
        cfg = _as_config(logged.config)
        done = logged.finished and "fit_seconds" in logged.summary  # spt.run's last log
        row = (
            _metrics_row(name, logged.summary, cfg, {}, None)
            if done
            else _progress_row(name, _progress(logged.summary), cfg, None)
        )
        rows.append({**row, CONFIG: cfg})
    return rows


def _progress_row(name: str, last: dict, cfg, run: Path | None) -> dict:
    """An unfinished run's row from the last value of each metric it logged."""
    ident = _identity(run, cfg)
    trainable = last.get("params/trainable")
    row = {
        "run": name,
        "data": ident.get("data", ""),
        "model": ident.get("model", ""),
        "method": ident.get("method", ""),
        "seed": ident.get("seed"),
        "regularizer": _regularizer(cfg),
        "status": "incomplete",
        "steps": int(last["step"]) if "step" in last else None,
        "trainable": int(trainable) if trainable is not None else None,
        "trainable_pct": round(last["params/trainable_pct"], 4)
        if "params/trainable_pct" in last
        else None,
        "served_params": None,
        "served_pct": None,
        "prompt_norm": None,
        "fit_seconds": None,
        "artifact_bytes": None,
    }
    row.update({k: v for k, v in last.items() if k.startswith("val/") and not k.endswith("_best")})
    return row


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _config(run: Path):
    """The run's configuration: the resolved ``config.yaml`` spt.run writes at the end, else
    (a run still going) Hydra's ``.hydra/config.yaml``, else the CSVLogger's ``hparams.yaml``.
    None without any."""
    from omegaconf import OmegaConf

    candidates = [
        run / "config.yaml",
        run / ".hydra" / "config.yaml",
        run / "csv" / "hparams.yaml",
        *sorted((run / "csv").glob("version_*/hparams.yaml"), reverse=True),
    ]
    for path in candidates:
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception as exc:  # YAML, UTF-8 or OmegaConf errors of a damaged file
                raise SptError(
                    f"{path} is not a readable config ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:160]}): delete or restore it, or leave "
                    "its run out"
                ) from None
            return cfg if OmegaConf.is_dict(cfg) else None
    return None


def _select(cfg, key: str):
    """``key`` (dotted) from ``cfg`` as a plain value; ``_ABSENT`` when the config lacks it."""
    from omegaconf import OmegaConf

    if cfg is None:
        return _ABSENT
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
    if OmegaConf.is_config(value):  # a subtree: a string, so that rows stay groupable
        return json.dumps(OmegaConf.to_container(value, resolve=False), sort_keys=True)
    return value


def _identity(run: Path, cfg) -> dict:
    """data, model, method and seed of a run from its config ``cfg`` (see :func:`_config`)
    and Hydra's group choices."""
    choices = {}
    if run is not None and (hydra_yaml := run / ".hydra" / "hydra.yaml").is_file():
        from omegaconf import OmegaConf

        choices = (
            OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices", default=None)
            or {}
        )

    def first(*values) -> str:
        return next((str(v) for v in values if v not in (None, _ABSENT, "")), "")

    method = methods.name_of_target(_select(cfg, "method._target_"))
    seed = _select(cfg, "seed")
    return {
        "data": first(_select(cfg, "data.name"), choices.get("data")),
        "model": first(
            _select(cfg, "model.name"),
            _select(cfg, "model.name_or_path"),
            _select(cfg, "model.package"),
            choices.get("model"),
        ),
        "method": first(choices.get("method"), method),
        "seed": seed if isinstance(seed, int) else None,
    }


def _regularizer(cfg) -> str:
    """The run's regularizer group (``none`` without one) from its config (``""`` without a
    config)."""
    if cfg is None:
        return ""
    target = _select(cfg, "regularizer._target_")
    return target.rsplit(".", 1)[-1].lower() if isinstance(target, str) and target else "none"


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


def _served_from_artifact(run: Path, cfg, default: int) -> int:
    artifact = run / "prompt.safetensors"
    target = _select(cfg, "method._target_")
    if not artifact.exists() or not isinstance(target, str):
        return default
    from hydra.utils import get_class
    from safetensors import safe_open

    from spt.core.mixin import served_numel

    with safe_open(str(artifact), "pt") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    numel = {k: math.prod(shape) for k, shape in sizes.items()}
    return served_numel(get_class(target).served_tensors, numel)


def add_keys(rows: list[dict], keys: list[str] | tuple[str, ...]) -> list[dict]:
    """Add each dotted config key (``method.length``) as a column named by the key, read from
    each run's config. A name that is already a column (``data``, ``val/acc``) is left as it
    is. A run whose config lacks the key gets None (an empty cell); a key that no run has is an
    SptError naming it and the config's top-level keys. Changes ``rows`` in place; returns it.
    """
    missing = [k for k in dict.fromkeys(keys) if k and not any(k in r for r in rows)]
    if not missing:
        return rows
    configs = [r[CONFIG] if CONFIG in r else _config(Path(r["run"])) for r in rows]
    for key in missing:
        values = [_select(cfg, key) for cfg in configs]
        if all(v is _ABSENT for v in values):
            raise SptError(_unknown_key_message(key, rows, configs))
        for row, value in zip(rows, values, strict=True):
            row[key] = None if value is _ABSENT else value
    return rows


def _unknown_key_message(key: str, rows: list[dict], configs: list) -> str:
    top = list(dict.fromkeys(k for cfg in configs if cfg is not None for k in cfg))
    shown = ", ".join(top[:12]) + (", ..." if len(top) > 12 else "")
    where = (
        f"the configs' top-level keys are {shown}; name a leaf such as method.length"
        if top
        else "no run has a config.yaml (spt.run writes it when a run finishes)"
    )
    return (
        f"{key!r} is neither a column ({', '.join(columns(rows)[1:8])}, ...) nor a config "
        f"key of any of the {len(rows)} runs: check the spelling; {where}"
    )


def columns(rows: list[dict]) -> list[str]:
    """Every column of ``rows``: the fixed ones, config keys (after ``regularizer``), then the
    sorted ``val/*`` metrics."""
    extra = _extra_columns(rows)
    metrics = sorted({k for r in rows for k in r if k.startswith("val/")})
    cut = FIXED.index("regularizer") + 1
    return FIXED[:cut] + extra + FIXED[cut:] + metrics


def _extra_columns(rows: list[dict]) -> list[str]:
    """Columns added by :func:`add_keys`, in the order they were added."""
    return list(
        dict.fromkeys(
            k
            for r in rows
            for k in r
            if k not in FIXED and k != CONFIG and not k.startswith("val/")
        )
    )


def _cell(v) -> str:
    """A table cell: floats to 4 significant digits, ints and text as they are, None empty."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def frame(rows: list[dict], cols: list[str] | None = None):
    """``rows`` as a pandas DataFrame of ``cols`` (default: :func:`columns`), values as they
    are (object dtype: an int column with gaps stays ints)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=cols or columns(rows), dtype=object)


def markdown(rows: list[dict], cols: list[str] | None = None) -> str:
    """A Markdown table (pandas ``to_markdown``, i.e. tabulate's GitHub format)."""
    cols = cols or [c for c in columns(rows) if c not in ("run", "artifact_bytes")]
    cells = frame(rows, cols).map(_cell)
    return cells.to_markdown(index=False, tablefmt="github", disable_numparse=True)


def rich_table(rows: list[dict], cols: list[str] | None = None, title: str | None = None):
    """The same table for a terminal (``rich``): numbers right-aligned, status coloured."""
    from rich.table import Table

    cols = cols or [c for c in columns(rows) if c not in ("run", "artifact_bytes")]
    table = Table(title=title, header_style="bold", show_lines=False)
    numeric = {c: all(_is_number(r.get(c)) or r.get(c) is None for r in rows) for c in cols}
    for c in cols:
        table.add_column(c, justify="right" if numeric[c] else "left", overflow="fold")
    for r in rows:
        cells = [_cell(r.get(c)) for c in cols]
        style = "yellow" if r.get("status") == "incomplete" else None
        table.add_row(*cells, style=style)
    return table


def write_csv(rows: list[dict], path: Path, cols: list[str] | None = None) -> None:
    """Write ``rows`` (per-run or aggregated) with ``cols`` (default: :func:`columns`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame(rows, cols).to_csv(path, index=False)
    except OSError as exc:
        raise SptError(f"cannot write {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------
# Means over seeds


def default_group_by(rows: list[dict]) -> list[str]:
    """Every identifying column except ``run`` and ``seed``: data, model, method, regularizer,
    the config-key columns, and ``status`` (so a half-trained run is never averaged with
    finished ones)."""
    return IDENTITY + _extra_columns(rows) + ["status"]


def summarised_metrics(rows: list[dict]) -> list[str]:
    """The columns :func:`aggregate` summarises: every ``val/*`` metric, prompt_norm and
    fit_seconds."""
    return sorted({k for r in rows for k in r if k.startswith("val/")}) + SUMMARISED


def aggregate(rows: list[dict], group_by: list[str] | None = None) -> list[dict]:
    """One row per distinct value of the ``group_by`` columns (default
    :func:`default_group_by`; dotted config keys are read as by :func:`add_keys`).

    Each row holds the group columns, ``n`` (runs in the group) and for every metric of
    :func:`summarised_metrics` ``<metric>_mean``, ``<metric>_std`` (sample std, ddof=1; None
    for fewer than two values) and ``<metric>_n`` (runs that reported it). Groups are sorted by
    their values (numbers numerically).
    """
    import pandas as pd

    group_by = list(group_by) if group_by else default_group_by(rows)
    add_keys(rows, group_by)
    metrics = summarised_metrics(rows)
    df = frame(rows, list(dict.fromkeys([*group_by, *metrics])))
    keys = df[group_by].map(lambda v: "\0none" if v is None else v)  # None is a group too
    values = df[metrics].apply(pd.to_numeric, errors="coerce")
    grouped = values.groupby([keys[c] for c in group_by], sort=False, dropna=False)
    mean, std, count = grouped.mean(), grouped.std(), grouped.count()  # std: ddof=1
    out = []
    for key, idx in grouped.indices.items():
        key = key if isinstance(key, tuple) else (key,)
        where = key if len(key) > 1 else key[0]
        _refuse_unlike([rows[i] for i in idx], group_by)
        agg = dict(zip(group_by, (None if v == "\0none" else v for v in key), strict=True))
        agg["n"] = len(idx)
        for metric in metrics:
            n = int(count.at[where, metric])
            agg[f"{metric}_mean"] = float(mean.at[where, metric]) if n else None
            agg[f"{metric}_std"] = float(std.at[where, metric]) if n > 1 else None
            agg[f"{metric}_n"] = n
        out.append(agg)
    out.sort(key=lambda a: tuple(_order(a[c]) for c in group_by))
    return out


# Config keys that differ between seeds of one experiment without changing it: where the run
# writes and logs, its name, and the resume mode.
_PER_RUN_PREFIXES = ("paths.", "logger.", "hydra.", "callbacks.")
_PER_RUN_KEYS = {"seed", "run_name", "resume", "trainer.default_root_dir"}


def _run_settings(row: dict) -> dict | None:
    """A run's resolved config, flattened to dotted keys, less the per-run keys and the keys
    that only repeat its seed (``method.seed: ${seed}``); None for a run without a local
    config (a W&B API row)."""
    from omegaconf import OmegaConf

    run = Path(str(row.get("run", "")))
    cfg = _config(run) if run.is_dir() else None
    if cfg is None:
        return None
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    seed = flat.get("seed")
    here = str(run.resolve())
    return {
        k: v
        for k, v in flat.items()
        if k not in _PER_RUN_KEYS
        and not k.startswith(_PER_RUN_PREFIXES)
        and not (k.endswith(".seed") and v in (seed, "${seed}"))
        and not (isinstance(v, str) and here in v)
    }  # a path inside the run itself


def _refuse_unlike(members: list[dict], group_by: list[str]) -> None:
    """A mean is over seeds of one experiment: refuse a group whose runs differ in any other
    setting, naming the keys (``method.length`` 2, 8 and 20 were once averaged into one cell,
    and a training run with its own ``train=false`` re-evaluation)."""
    settings = [s for s in map(_run_settings, members) if s is not None]
    if len(settings) < 2:
        return
    keys = sorted({k for s in settings for k in s})
    differ = [
        k
        for k in keys
        if k not in group_by
        and len({json.dumps(s.get(k, "<absent>"), sort_keys=True, default=str) for s in settings})
        > 1
    ]
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise SptError(
            f"--mean would average runs that differ in {shown}, not only in the "
            f"seed: add them to the groups (--group-by {','.join([*group_by, *differ[:3]])}) "
            "or point at runs of one setting"
        )


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _order(v) -> tuple:
    """Sort key for mixed cells: numbers numerically, then strings, then empty cells."""
    if _is_number(v):
        return (0, float(v), "")
    return (2, 0.0, "") if v is None else (1, 0.0, str(v))


def _agg_metrics(agg: list[dict]) -> list[str]:
    return list(
        dict.fromkeys(k.removesuffix("_mean") for r in agg for k in r if k.endswith("_mean"))
    )


def aggregate_columns(agg: list[dict], group_by: list[str]) -> list[str]:
    """CSV columns of :func:`aggregate`'s rows: the group columns, ``n``, then per metric
    ``_mean`` and ``_std``, plus ``_n`` where some group has the metric for only part of its
    runs (e.g. a run still going has no fit time)."""
    cols = list(group_by) + ["n"]
    for metric in _agg_metrics(agg):
        cols += [f"{metric}_mean", f"{metric}_std"]
        if any(0 < r[f"{metric}_n"] < r["n"] for r in agg):
            cols.append(f"{metric}_n")
    return cols


def mean_cell(mean: float | None, std: float | None, n: int) -> str:
    """``0.8123 ± 0.0104 (n=3)``, the std with the mean's decimals (4 below 10, 1 below 10^4,
    else 0; 3 significant digits for values under 10^-3); no ``±`` for one value; empty for
    none."""
    if mean is None or n == 0:
        return ""
    size = abs(mean)
    spec = ".3g" if 0 < size < 1e-3 else ".4f" if size < 10 else ".1f" if size < 1e4 else ".0f"
    text = format(mean, spec) + (f" ± {format(std, spec)}" if std is not None else "")
    return f"{text} (n={n})"


def _mean_rows(agg: list[dict], group_by: list[str]) -> list[dict]:
    """:func:`aggregate`'s rows as table rows: group columns, then ``mean ± std (n)`` per
    metric (metrics no group has are left out)."""
    metrics = [m for m in _agg_metrics(agg) if any(r[f"{m}_n"] for r in agg)]
    return [
        {
            **{c: r.get(c) for c in group_by},
            **{m: mean_cell(r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_n"]) for m in metrics},
        }
        for r in agg
    ]


def markdown_mean(agg: list[dict], group_by: list[str]) -> str:
    """Markdown table of :func:`aggregate`'s rows (see :func:`_mean_rows`)."""
    rows = _mean_rows(agg, group_by)
    return markdown(rows, list(rows[0]) if rows else list(group_by))


def _show(text: str, rows: list[dict], group_by: list[str] | None) -> None:
    """The table: Markdown when stdout is a file or pipe (what READMEs and logs keep), a
    ``rich`` table in a terminal."""
    if not sys.stdout.isatty():
        print(text)
        return
    from rich.console import Console

    cols = list(rows[0]) if group_by is not None and rows else None
    Console().print(rich_table(rows, cols))


# ---------------------------------------------------------------------------------------------
# Plots


def plot(
    rows: list[dict],
    x: str,
    metric: str,
    hue: str | None = None,
    out: Path | str | None = None,
    baselines: dict[str, float] | None = None,
):
    """Plot ``metric`` against ``x`` (a column or dotted config key), one series per ``hue``
    value; return the matplotlib ``Figure`` (its axes: ``fig.axes[0]``).

    Every run is a small dot (seeds side by side, so a failed seed shows), and each (hue, x)
    cell's mean a larger marker with the sample std as error bar. Numeric ``x`` is sorted and
    its means joined by a line, on a log axis when its positive values span more than 20x;
    other ``x`` is categorical (first-seen order): points only, the series of each category
    side by side, since a line between categories means nothing. ``baselines`` (name ->
    value: majority class, zero-shot) are dashed horizontal lines. Runs that differ in an
    identifying column other than ``x`` and ``hue`` (say two datasets) are refused rather than
    averaged. Writes a PNG to ``out`` when given. Uses matplotlib's Agg canvas directly (no
    pyplot, so a notebook's backend is left alone).
    """
    add_keys(rows, [x] + ([hue] if hue else []))
    have = [r for r in rows if _is_number(r.get(metric))]
    if not have:
        known = sorted({k for r in rows for k in r if k.startswith("val/")}) + SUMMARISED
        raise SptError(f"no run reports {metric!r}: choose one of {', '.join(known)}")
    have = [r for r in have if r.get(x) is not None]
    if not have:
        raise SptError(f"no run that reports {metric!r} has a value for {x!r}")
    _refuse_mixed(have, x, hue)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs = list(dict.fromkeys(r[x] for r in have))
    numeric = all(_is_number(v) for v in xs)
    if numeric:
        xs.sort()
    positive = [float(v) for v in xs if numeric and v > 0]
    log = numeric and len(positive) == len(xs) and max(positive) / min(positive) > 20

    fig = Figure(figsize=(6.4, 4.8 if hue or baselines else 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    hues = list(dict.fromkeys(r.get(hue) for r in have)) if hue else [None]
    width = 0.7 / len(hues)  # categorical: each hue's slot within a category

    def where(v, k: int, spread: float = 0.0) -> float:
        """x of hue ``k``'s point at ``v``; ``spread`` in [-1, 1] moves a run's dot aside."""
        if not numeric:
            return xs.index(v) - 0.35 + width * (k + 0.5 + 0.35 * spread)
        shift = 0.04 * (k - (len(hues) - 1) / 2) + 0.06 * spread
        return float(v) * math.exp(shift) if log else float(v) + _step(xs) * shift

    for k, h in enumerate(hues):
        series = [r for r in have if not hue or r.get(hue) == h]
        points, color = [], f"C{k}"
        for v in xs:
            values = [float(r[metric]) for r in series if r[x] == v]
            if not values:
                continue
            half = max((len(values) - 1) / 2, 1)
            offsets = [(i - (len(values) - 1) / 2) / half for i in range(len(values))]
            ax.scatter(
                [where(v, k, o) for o in offsets],
                values,
                s=12,
                color=color,
                alpha=0.55,
                linewidths=0,
                zorder=3,
            )
            std = statistics.stdev(values) if len(values) > 1 else None
            points.append((where(v, k), statistics.fmean(values), std))
        label = None if hue is None else f"{hue}={h}"
        ax.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            yerr=[p[2] or 0.0 for p in points],
            fmt="o-" if numeric else "o",
            color=color,
            markersize=6,
            capsize=3,
            label=label,
            zorder=4,
        )
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"0.{3 + 2 * i % 6}", label=f"{name} ({value:.3g})")
    if log:
        ax.set_xscale("log")
    ticks = [textwrap.fill(str(v), 14) for v in xs] if not numeric else []
    if not numeric:
        ax.set_xticks(range(len(xs)), ticks)
        ax.set_xlim(-0.6, len(xs) - 0.4)
    elif len(xs) <= 12:
        ax.set_xticks([float(v) for v in xs], [str(v) for v in xs])
        ax.minorticks_off()
    cells = {(r.get(hue) if hue else None, r[x]) for r in have}
    ax.set_xlabel(x + (" (log scale)" if log else ""))
    ax.set_ylabel(
        f"{metric} (dots: runs; marker: mean ± std)" if len(have) > len(cells) else metric
    )
    same = [
        f"{c}={have[0][c]}"
        for c in IDENTITY  # what all points share, for the subtitle
        if c not in (x, hue) and have[0].get(c) and len({r.get(c) for r in have}) == 1
    ]
    title = f"{metric} vs {x}" + (f" by {hue}" if hue else "")
    ax.set_title(title + (f"\n{', '.join(same)}" if same else ""), fontsize=10)
    if hue or baselines:  # under the axes, where it hides no point
        below = 0.2 + 0.06 * max([t.count("\n") for t in ticks] + [0])  # past the tick labels
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -below), ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out)
    return fig


def _save(fig, out) -> None:
    if out is None:
        return
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, bbox_inches="tight")
    except OSError as exc:
        raise SptError(f"cannot write {out}: {exc.strerror or exc}") from None


def _step(xs: list) -> float:
    """The smallest gap between sorted numeric x values (1 for a single value)."""
    gaps = [float(b) - float(a) for a, b in zip(xs, xs[1:], strict=False) if b != a]
    return min(gaps) if gaps else 1.0


def curves(
    runs: list[Path | str],
    metric: str = "val/acc",
    hue: str | None = None,
    out: Path | str | None = None,
):
    """Training and validation curves of runs from their CSV logs (``<run>/csv/metrics.csv``,
    what every logger config writes): ``train/loss`` and ``metric`` against the step, one
    colour per run (labelled by ``hue``'s value, else the run's method/model). Finished and
    running runs alike; returns the Figure and writes a PNG to ``out`` when given."""
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    found = []
    for root in runs:
        root = Path(root)
        if not root.exists():
            raise SptError(f"{root} does not exist: give run directories or their parents")
        dirs = {_run_of_csv(p) for p in root.rglob("metrics.csv")} - {None}
        found += sorted(dirs)
    if not found:
        raise SptError(
            f"no CSV logs (csv/metrics.csv) under {', '.join(map(str, runs))}: every logger "
            "config writes one; logger=none does not"
        )
    fig = Figure(figsize=(9.6, 3.8))
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    drawn = 0
    for i, run in enumerate(found):
        try:
            log = pd.read_csv(_latest_csv(run))
        except (OSError, ValueError) as exc:
            raise SptError(f"{_latest_csv(run)} is not a readable CSV log ({exc})") from None
        cfg = _config(run)
        ident = _identity(run, cfg)
        label = (
            f"{hue}={_select(cfg, hue) if _select(cfg, hue) is not _ABSENT else '?'}"
            if hue
            else f"{ident.get('method', '?')} / {ident.get('model', run.name)}"
        )
        if len(found) > 1 and not hue:
            label += f" ({run.name})"
        color = f"C{i % 10}"
        if "train/loss" in log and log["train/loss"].notna().any():
            train = log[["step", "train/loss"]].dropna()
            loss_ax.plot(train["step"], train["train/loss"], color=color, alpha=0.3, lw=0.8)
            smooth = train["train/loss"].rolling(max(1, len(train) // 10), min_periods=1).mean()
            loss_ax.plot(train["step"], smooth, color=color, lw=1.6, label=label)
            drawn += 1
        if metric in log and log[metric].notna().any():
            dev = log[["step", metric]].dropna()
            metric_ax.plot(dev["step"], dev[metric], "o-", color=color, ms=4, label=label)
            drawn += 1
    if not drawn:
        raise SptError(f"the CSV logs hold neither train/loss nor {metric!r}")
    loss_ax.set(xlabel="step", ylabel="train/loss (faint: logged; bold: running mean)")
    metric_ax.set(xlabel="step", ylabel=f"{metric} (each validation)")
    loss_ax.set_title("training loss", fontsize=10)
    metric_ax.set_title(f"dev {metric.removeprefix('val/')}", fontsize=10)
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
    metric_ax.legend(fontsize=7) if metric_ax.get_legend_handles_labels()[0] else None
    fig.tight_layout()
    _save(fig, out)
    return fig


def _refuse_mixed(rows: list[dict], x: str, hue: str | None) -> None:
    """Runs in one (hue, x) cell must agree on every identifying column but the seed."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r.get(hue) if hue else None, r[x]), []).append(r)
    for col in IDENTITY + _extra_columns(rows) + ["status"]:
        if col in (x, hue):
            continue
        for members in cells.values():
            values = list(dict.fromkeys(str(r.get(col)) for r in members))
            if len(values) > 1:
                fix = (
                    "pass --done-only"
                    if col == "status"
                    else f"pass --hue {col}, or roots holding one {col} only"
                )
                raise SptError(
                    f"the runs to plot differ in {col} ({', '.join(values[:4])}); "
                    f"a point would average them: {fix}"
                )


# ---------------------------------------------------------------------------------------------
# Command line


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            "give comma-separated names, e.g. method.length,data.shots"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spt.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "roots",
        nargs="+",
        type=Path,
        help="run directories or their parents, or wandb:ENTITY/PROJECT[/GROUP]",
    )
    parser.add_argument("--csv", type=Path, help="also write every column to this CSV file")
    parser.add_argument(
        "--keys",
        type=_names,
        default=[],
        help="comma-separated dotted config keys to add as columns",
    )
    parser.add_argument(
        "--done-only",
        action="store_true",
        help="leave out runs without metrics.json (still going or crashed)",
    )
    parser.add_argument(
        "--mean", action="store_true", help="one row per group: mean ± std (n) over seeds"
    )
    parser.add_argument(
        "--group-by",
        type=_names,
        help="comma-separated columns or config keys to group by (implies "
        "--mean; default: data,model,method,regularizer,<--keys>,status)",
    )
    parser.add_argument("--plot", metavar="X", help="plot --metric against this column or key")
    parser.add_argument("--metric", help="the metric to plot, e.g. val/acc")
    parser.add_argument("--hue", help="one line per value of this column or key")
    parser.add_argument("--out", type=Path, help="the PNG file --plot or --curves writes")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a dashed reference line on --plot (repeatable): 'majority class=0.509'",
    )
    parser.add_argument(
        "--curves",
        action="store_true",
        help="training loss and --metric against the step, from the runs' CSV logs",
    )
    args = parser.parse_args(argv)
    if args.curves:
        if not args.out:
            parser.error("--curves needs --out (e.g. curves.png)")
        try:
            curves(args.roots, args.metric or "val/acc", hue=args.hue, out=args.out)
        except SptError as exc:
            print(f"spt: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out} (training curves)", file=sys.stderr)
        return 0
    if args.plot and not (args.metric and args.out):
        parser.error("--plot needs --metric (e.g. val/acc) and --out (e.g. plot.png)")
    if not args.plot and (args.metric or args.hue or args.out or args.baseline):
        parser.error(
            "--metric, --hue, --baseline and --out go with --plot X (e.g. --plot method.length)"
        )
    baselines = {}
    for item in args.baseline:
        name, sep, value = item.rpartition("=")
        try:
            baselines[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            parser.error(f"--baseline {item!r}: give NAME=VALUE, e.g. 'majority class=0.509'")
    try:
        rows = collect(args.roots, keys=args.keys, done_only=args.done_only)
        if args.mean or args.group_by:
            group_by = args.group_by or default_group_by(rows)
            agg = aggregate(rows, group_by)
            _show(markdown_mean(agg, group_by), _mean_rows(agg, group_by), group_by)
            if args.csv:
                write_csv(agg, args.csv, aggregate_columns(agg, group_by))
        else:
            _show(markdown(rows), rows, None)
            if args.csv:
                write_csv(rows, args.csv)
        if args.plot:
            fig = plot(
                rows, args.plot, args.metric, hue=args.hue, out=args.out, baselines=baselines
            )
            print(
                f"wrote {args.out} ({args.metric} vs {args.plot}, "
                f"{fig.axes[0].get_xscale()} x axis)",
                file=sys.stderr,
            )
    except SptError as exc:
        print(f"spt: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
