"""The library server: many trained prompts on one frozen backbone (see :mod:`spt.serve`)."""

from __future__ import annotations

import dataclasses
import logging
import operator
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from spt import methods
from spt.backbones import load_source
from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.data.batches import EncodedDataset
from spt.data.inputs import InputFormat
from spt.data.multitask import MixCollator, MultiTaskInfo
from spt.errors import SptError

log = logging.getLogger("spt.serve")


def served_methods() -> list[str]:
    """What is served: every method whose prompt is a table of input vectors (served by a
    Prompt Tuning module, whatever method trained it), and every method that names the
    artifact tensors it stacks (``served_rows``) and how its served module is built
    (``serving_settings``: served by its own module), so a new method is served by declaring
    both, with no list here to extend."""
    return [
        name
        for name, info in methods.registry().items()
        if info.prompt == "input"
        or (getattr(info.cls, "served_rows", ()) and hasattr(info.cls, "serving_settings"))
    ]


# -- runs ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """One run's prompt artifact (its directory, or the file itself)."""

    name: str | None  # the task name asked for (None: the run's data name)
    dir: Path
    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def method(self) -> str:
        return str(self.meta.get("method"))

    @property
    def base(self) -> dict:
        return self.meta.get("base") or {}

    @property
    def source(self) -> dict:
        return self.meta.get("backbone") or {}


def _read_run(name: str | None, path: str | Path) -> _Run:
    """A run directory (or its ``prompt.safetensors``), checked to be a servable run.

    Only the artifact is read: it names its base model's loader, its input format and its
    settings as plain values (:mod:`spt.api`), so nothing a run directory holds is ever
    instantiated; its ``config.yaml`` is not read at all."""
    path = Path(path).expanduser()
    artifact = path if path.suffix in (".safetensors", ".json") else path / "prompt.safetensors"
    artifact = artifact.with_suffix(".safetensors")
    run_dir = artifact.parent
    if not run_dir.is_dir():
        raise SptError(
            f"run directory not found: {run_dir} (pass the directory spt.run "
            "printed, holding prompt.safetensors)"
        )
    if not artifact.is_file():
        raise SptError(
            f"{run_dir} has no prompt.safetensors: a zero-shot run (zero_shot=true) "
            "or an unfinished one; serve a trained run"
        )
    tensors, meta = load_artifact(artifact)
    run = _Run(name, run_dir, tensors, meta)
    if run.method not in served_methods():
        raise SptError(
            f"{run_dir} holds a method={run.method} prompt, which spt.serve does "
            f"not serve: it serves method={', '.join(served_methods())} "
            "(classification runs)"
        )
    if meta.get("task_kind") == "text-to-text" or "label_names" not in meta:
        raise SptError(
            f"{run_dir} is a text-to-text run (data={meta.get('data')}): spt.serve "
            "serves classification prompts; generate text with spt.generate"
        )
    if meta.get("n_tasks", 1) != 1:
        raise SptError(
            f"{run_dir} holds a {meta.get('n_tasks')}-task prompt table "
            f"({meta.get('task_names')}): spt.serve stacks single-task runs; serve "
            "runs trained on one task each"
        )
    missing = [k for k in ("inputs", "backbone", "settings") if k not in meta]
    if missing:
        raise SptError(
            f"{artifact} lacks {missing}: it was written before artifacts described "
            "themselves; re-save it with this spt (python -m spt.run train=false "
            f"method.init=file method.init_file={artifact} ...)"
        )
    return run


def _normalise_runs(runs) -> list[tuple[str | None, str | Path]]:
    if isinstance(runs, (str, Path)):
        runs = [runs]
    items = (
        list(runs.items())
        if isinstance(runs, Mapping)
        else [tuple(r) if isinstance(r, tuple) else (None, r) for r in runs]
    )
    if not items:
        raise SptError("no runs to serve: give at least one run directory")
    for name, _ in items:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise SptError(f"task name {name!r} must be a non-empty string")
    return items


def _check_same_base(runs: list[_Run]) -> None:
    """All prompts were trained on one base model (fingerprints agree), which is what one
    backbone can serve; and encoder pooling, which changes scores, agrees too."""
    first = runs[0]
    for run in runs[1:]:
        if run.base.get("fingerprint") != first.base.get("fingerprint"):
            raise SptError(
                f"{run.dir} was trained on base model {run.base.get('name')!r} (fingerprint "
                f"{run.base.get('fingerprint')}) but {first.dir} on {first.base.get('name')!r} "
                f"(fingerprint {first.base.get('fingerprint')}): one server loads one backbone. "
                "Serve them from two servers, or train both prompts on the same model."
            )
        pools = [r.source.get("pooling") for r in (first, run)]
        if pools[0] != pools[1]:
            raise SptError(
                f"{run.dir} was trained with model.pooling={pools[1]} but {first.dir} "
                f"with model.pooling={pools[0]}: the served backbone pools one way; "
                "serve them from two servers"
            )


def _input_format(run: _Run) -> InputFormat:
    """The run's classification input format (template, fields, labels, limits)."""
    entries = run.meta["inputs"]
    if not isinstance(entries, list) or len(entries) != 1:
        raise SptError(f"{run.dir}: a single-task run has one input format, it has {entries!r}")
    fmt = InputFormat.from_meta(entries[0], str(run.dir / "prompt.safetensors"))
    if fmt.kind != "classification":
        raise SptError(
            f"{run.dir}: data={fmt.name} is a {fmt.kind} task: spt.serve serves text "
            "classification prompts"
        )
    return fmt


# -- the server ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Task:
    name: str
    run: Path
    method: str
    format: InputFormat  # template, fields, label names, limits
    encoder: Any  # its TemplateEncoder for the served tokenizer
    group: int  # which served module
    row: int  # its row in that module's prompt table
    n_soft: int = 0  # soft slots the served module fills

    @property
    def fields(self) -> list[str]:
        return list(self.format.text_fields)

    @property
    def labels(self) -> list[str]:
        return list(self.format.label_names)

    @property
    def template(self) -> str:
        return str(self.format.template)


@dataclasses.dataclass
class _Group:
    """Tasks whose prompts share one table: one module, one forward per batch."""

    key: tuple
    module: torch.nn.Module
    tasks: list[str]
    collator: MixCollator


def _group_key(run: _Run) -> tuple:
    info = methods.get(run.method)
    if info.prompt == "input":
        return ("input", int(_tensor(run, "prompt").shape[1]))
    for key, _ in info.cls.served_rows:
        _tensor(run, key)  # each there, or an error naming it
    return (run.method, tuple(sorted(info.cls.serving_settings(run.meta, run.tensors).items())))


def _tensor(run: _Run, key: str) -> torch.Tensor:
    if key not in run.tensors:
        raise SptError(
            f"{run.dir}/prompt.safetensors holds no {key!r} tensor (it has "
            f"{sorted(run.tensors)}): re-save it with this version of spt.run"
        )
    return run.tensors[key]


def _build_group(key: tuple, backbone, names: list[str], runs: list[_Run], tasks: list) -> Any:
    """A method module with one prompt-table row (and head) per task, holding the runs'
    materialised prompts."""
    info = MultiTaskInfo("serve", tuple(tasks))
    common = dict(backbone=backbone, task=info, n_tasks=len(runs), task_names=names)
    if key[0] == "input":  # every input-vector method serves as Prompt Tuning's table
        module = methods.get("prompt").cls(length=key[1], init="uniform", **common)
        rows = (("prompt", "prompt.weight"),)
    else:  # the method itself, built from the settings its artifact gives
        cls = methods.get(key[0]).cls
        module = cls(**dict(key[1]), **common)
        rows = cls.served_rows
    with torch.no_grad():
        for t, run in enumerate(runs):
            for name, attr in rows:
                table, saved = operator.attrgetter(attr)(module), _tensor(run, name)
                if tuple(saved.shape[1:]) != tuple(table.shape[1:]):
                    raise SptError(
                        f"{run.dir}: {name} has shape {list(saved.shape)}, the served "
                        f"backbone expects [1, {', '.join(map(str, table.shape[1:]))}]"
                    )
                table[t].copy_(saved[0])
            if module.objective.head is not None:
                load_module_tensors(
                    module.objective.head[t],
                    run.tensors,
                    "head.",
                    run.dir,
                    "the run's data.label_names",
                )
    module.requires_grad_(False)
    return module.to(next(backbone.model.parameters()).device).eval()


class PromptServer:
    """Soft prompts of several runs on one frozen backbone; :meth:`predict` scores a batch
    whose rows name different tasks.

    Build it with :meth:`from_runs`. ``tasks`` maps each task name to its template fields,
    labels, method and run directory.
    """

    def __init__(self, backbone, tasks: dict[str, _Task], groups: list[_Group]):
        self.backbone = backbone
        self._tasks = tasks
        self._groups = groups
        self._device = next(backbone.model.parameters()).device
        self._lock = threading.Lock()  # one forward at a time (torch runs it multi-threaded)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_runs(cls, runs: Sequence | Mapping[str, str | Path] | str | Path) -> PromptServer:
        """Load the backbone of the first run's config and the prompts of all ``runs``.

        ``runs``: run directories (each task is named by its run's ``data.name``), a mapping
        task name -> run directory, or ``(name or None, directory)`` pairs. Every run must
        have been trained on the same base model (artifact fingerprints agree), with a served
        method (:func:`served_methods`) on one classification task. Runs whose prompts share
        a shape are stacked into one table (see the module docstring).
        """
        loaded = [_read_run(name, path) for name, path in _normalise_runs(runs)]
        _check_same_base(loaded)
        names = [r.name or str(r.meta.get("data")) for r in loaded]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            dirs = [str(r.dir) for r, n in zip(loaded, names, strict=True) if n in repeated]
            raise SptError(
                f"task name(s) {repeated} are given to several runs ({dirs}): name "
                "each run, e.g. --run sst2_a=DIR --run sst2_b=DIR or "
                "from_runs({'sst2_a': dir1, 'sst2_b': dir2})"
            )
        source = loaded[0].source
        log.info("loading backbone <%s> from %s", source.get("loader"), loaded[0].dir)
        backbone = load_source(source)  # spt's own loaders only, plain arguments
        for run in loaded:
            check_base(run.meta, backbone.identity(), run.dir / "prompt.safetensors")
        formats = {n: _input_format(r) for n, r in zip(names, loaded, strict=True)}
        tok, arch = backbone.tokenizer, backbone.arch
        by_key: dict[tuple, list[int]] = defaultdict(list)
        for i, run in enumerate(loaded):
            by_key[_group_key(run)].append(i)
        tasks: dict[str, _Task] = {}
        groups: list[_Group] = []
        for g, (key, members) in enumerate(by_key.items()):
            gnames = [names[i] for i in members]
            infos = [dataclasses.replace(formats[n].task(tok, arch), name=n) for n in gnames]
            module = _build_group(key, backbone, gnames, [loaded[i] for i in members], infos)
            for row, (i, n) in enumerate(zip(members, gnames, strict=True)):
                enc = formats[n].encoder(tok, arch)
                tasks[n] = _Task(
                    n, loaded[i].dir, loaded[i].method, formats[n], enc, g, row,
                    module.n_soft_tokens,
                )  # fmt: skip
            pad = tasks[gnames[0]].encoder.soft_id
            groups.append(
                _Group(key, module, gnames, MixCollator(pad, left=backbone.ops.left_padded))
            )
            log.info("serving %s as one %s table", gnames, key[0])
        return cls(backbone, tasks, groups)

    # -- description -----------------------------------------------------------------------
    @property
    def tasks(self) -> dict[str, dict]:
        """Task name -> ``fields`` (the template's text fields), ``labels``, ``method``,
        ``template`` and ``run``."""
        return {
            n: {
                "fields": t.fields,
                "labels": t.labels,
                "method": t.method,
                "template": t.template,
                "run": str(t.run),
            }
            for n, t in self._tasks.items()
        }

    def describe(self) -> dict:
        """The backbone's identity and the served tasks (what ``GET /health`` reports)."""
        ident = self.backbone.identity()
        return {
            "backbone": ident["name"],
            "arch": ident["arch"],
            "fingerprint": ident["fingerprint"],
            "tasks": self.tasks,
            "groups": [g.tasks for g in self._groups],
        }

    # -- inference -------------------------------------------------------------------------
    def check_rows(self, rows: Iterable) -> list[tuple[_Task, dict[str, str]]]:
        """Each row as (its task, its text fields); a malformed row, an unknown task or a
        missing text field raises :class:`SptError` naming the row and the fix."""
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
            raise SptError("rows must be a list of {'task': name, 'text': {field: value}}")
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or "task" not in row or "text" not in row:
                raise SptError(
                    f"row {i} must be {{'task': name, 'text': {{field: value}}}}, "
                    f"got {str(row)[:120]}"
                )
            task = self._tasks.get(row["task"]) if isinstance(row["task"], str) else None
            if task is None:
                raise SptError(
                    f"row {i}: unknown task {row['task']!r}; this server knows "
                    f"{sorted(self._tasks)}"
                )
            text = row["text"]
            if not isinstance(text, Mapping):
                raise SptError(
                    f"row {i}: 'text' must map field names to strings, e.g. "
                    f"{ {f: '...' for f in task.fields} }"
                )
            missing = [f for f in task.fields if f not in text]
            if missing:
                raise SptError(
                    f"row {i}: task {task.name!r} needs text field(s) {missing}; its "
                    f"template {task.template!r} uses {task.fields}"
                )
            bad = [f for f in task.fields if not isinstance(text[f], str)]
            if bad:
                raise SptError(
                    f"row {i}: text field(s) {bad} of task {task.name!r} must be strings"
                )
            out.append((task, {f: text[f] for f in task.fields}))
        return out

    def _batch(self, group: _Group, rows: list[tuple[_Task, dict[str, str]]]) -> dict:
        """Tokenise each row with its task's template (its format's encoder, one call per
        task) and pad them into one batch with per-row ``task_ids``."""
        encoded: list[dict | None] = [None] * len(rows)
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, (task, _) in enumerate(rows):
            by_task[task.name].append(i)
        for name, idx in by_task.items():
            task = self._tasks[name]
            fmt = task.format
            # cut before tokenising: max_length tokens never need more than 64 characters
            # each, so the result is the same and a 5 MB text costs nothing extra
            cut = 64 * fmt.max_length
            texts = {f: [rows[i][1][f][:cut] for i in idx] for f in task.fields}
            enc = EncodedDataset(
                task.encoder.encode(texts, task.n_soft, fmt.max_length, fmt.label_reserve),
                [0] * len(idx),
            )
            for j, i in enumerate(idx):  # the data module's own row layout, plus the task
                encoded[i] = {**enc[j], "task": task.row}
        batch = group.collator(encoded)
        return {k: v.to(self._device) for k, v in batch.items()}

    def predict(self, rows: Sequence[Mapping]) -> list[dict]:
        """``[{"task", "label", "scores"}]`` for ``rows`` of ``{"task": name, "text": {field:
        value}}``, in order. ``scores`` maps each of the task's label names to its class
        score (the head's logit on encoder-only backbones, the label words' log-probability
        otherwise). Rows of tasks that share a prompt table go through one call of that
        table's method, whose mixture scorer runs the backbone once per task present."""
        checked = self.check_rows(rows)
        out: list[dict | None] = [None] * len(checked)
        by_group: dict[int, list[int]] = defaultdict(list)
        for i, (task, _) in enumerate(checked):
            by_group[task.group].append(i)
        with self._lock, torch.inference_mode():
            for g, idx in by_group.items():
                group = self._groups[g]
                scores = group.module(self._batch(group, [checked[i] for i in idx]))
                scores = scores.float().cpu().tolist()
                for i, row_scores in zip(idx, scores, strict=True):
                    task = checked[i][0]
                    values = row_scores[: len(task.labels)]
                    best = max(range(len(values)), key=values.__getitem__)
                    out[i] = {
                        "task": task.name,
                        "label": task.labels[best],
                        "scores": dict(zip(task.labels, values, strict=True)),
                    }
        return out
