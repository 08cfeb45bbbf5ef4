"""Multi-prompt inference and serving: many trained soft prompts on one frozen backbone.

Users train one soft prompt per task (``python -m spt.run data=sst2``, ``data=rte``, ...) on the
same frozen model. :class:`PromptServer` loads that backbone once and the prompts of several run
directories, stacks them along the prompt table's task axis (the table every method keeps,
``[n_tasks, ...]``, gathered per row by ``task_ids``) and answers a batch whose rows name
different tasks in one call of the table's method. Each task keeps its own template, label names and
verbalizer words, and on encoder-only backbones its own classification head; rows are scored
by the mixture path of :class:`~spt.core.classify.ClassificationMixin` (each row against its
own task's labels; that path currently runs the backbone once per task present in a batch,
on that task's rows).

What is served (classification runs with one task each):

- input-level prompts: ``method=prompt``, ``ptuning`` and ``mpt`` (their artifacts hold the
  materialised prompt ``[1, length, d]``, served as a :class:`~spt.methods.prompt.PromptTuning`
  table row);
- key/value prompts: ``method=prefix`` and ``ptuning_v2`` (the materialised per-layer prefixes,
  served by the run's own class with ``reparam=false``).

Runs whose prompts cannot share one table (another method family, another prompt length, P-Tuning
v2's pooling) form separate groups: a mixed batch then takes one method call per group.

Three ways in::

    server = PromptServer.from_runs({"sst2": "runs/sst2/...", "rte": "runs/rte/..."})
    server.predict([{"task": "sst2", "text": {"sentence": "a gem"}}])
    # -> [{"task": "sst2", "label": "positive", "scores": {"negative": -1.2, "positive": 0.8}}]

    python -m spt.serve predict --run sst2=DIR --run rte=DIR --input rows.jsonl
    python -m spt.serve http --run sst2=DIR --run rte=DIR --port 8000 --max-batch 32 --max-wait-ms 5
    python -m spt.serve load-test --url http://127.0.0.1:8000 --input rows.jsonl --concurrency 8

The HTTP server (FastAPI + uvicorn) batches dynamically across requests: requests wait in an
asyncio queue; one worker takes the first, gathers more for up to ``max_wait_ms`` or until
``max_batch`` rows, runs one :meth:`PromptServer.predict` in a worker thread (the event loop keeps
accepting requests meanwhile) and answers every request of the batch. ``GET /stats`` counts the
rows each forward served, so the batching can be measured (:func:`load_test`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pydantic import BaseModel, Field

from spt import methods
from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.data.multitask import MixCollator, MultiTaskInfo
from spt.data.text_classification import EncodedDataset
from spt.errors import SptError, cli_error

log = logging.getLogger("spt.serve")

# The prompt kinds (spt.methods.PROMPT_KINDS) served: a materialised table of input vectors
# (served by a Prompt Tuning module, whatever method trained it) or of key/value prefixes
# (served by the module of the method that trained it).
SERVED_KINDS = ("input", "kv")


def served_methods() -> list[str]:
    return [n for kind in SERVED_KINDS for n in methods.names(prompt=kind)]


# -- runs ----------------------------------------------------------------------------------

@dataclasses.dataclass
class _Run:
    """One run directory: its resolved config and its prompt artifact."""

    name: str | None  # the task name asked for (None: the run's data name)
    dir: Path
    cfg: Any  # DictConfig
    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def method(self) -> str:
        return str(self.meta.get("method"))

    @property
    def base(self) -> dict:
        return self.meta.get("base") or {}


def _read_run(name: str | None, path: str | Path) -> _Run:
    """A run directory (or its ``prompt.safetensors``), checked to be a servable run."""
    path = Path(path).expanduser()
    run_dir = path.parent if path.suffix in (".safetensors", ".json") else path
    if not run_dir.is_dir():
        raise SptError(f"run directory not found: {run_dir} (pass the directory spt.run "
                       "printed, holding config.yaml and prompt.safetensors)")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise SptError(f"{run_dir} is not a run directory: it has no config.yaml (spt.run writes "
                       "one with prompt.safetensors when a run finishes)")
    artifact = run_dir / "prompt.safetensors"
    if not artifact.is_file():
        raise SptError(f"{run_dir} has no prompt.safetensors: a zero-shot run (zero_shot=true) "
                       "or an unfinished one; serve a trained run")
    try:
        cfg = OmegaConf.load(config)
    except Exception as err:  # a YAML parse error from a hand-edited file
        raise SptError(f"{config} is not a readable config: {err}") from None
    missing = [k for k in ("model", "data", "method") if k not in cfg]
    if missing:
        raise SptError(f"{config} lacks {missing}: it was not written by spt.run")
    tensors, meta = load_artifact(artifact)
    run = _Run(name, run_dir, cfg, tensors, meta)
    if run.method not in served_methods():
        raise SptError(f"{run_dir} holds a method={run.method} prompt, which spt.serve does "
                       f"not serve: it serves method={', '.join(served_methods())} "
                       "(classification runs)")
    if meta.get("task_kind") == "text-to-text" or "label_names" not in meta:
        raise SptError(f"{run_dir} is a text-to-text run (data={meta.get('data')}): spt.serve "
                       "serves classification prompts; generate text with spt.generate")
    if meta.get("n_tasks", 1) != 1:
        raise SptError(f"{run_dir} holds a {meta.get('n_tasks')}-task prompt table "
                       f"({meta.get('task_names')}): spt.serve stacks single-task runs; serve "
                       "runs trained on one task each")
    return run


def _normalise_runs(runs) -> list[tuple[str | None, str | Path]]:
    if isinstance(runs, (str, Path)):
        runs = [runs]
    items = list(runs.items()) if isinstance(runs, Mapping) else [
        tuple(r) if isinstance(r, tuple) else (None, r) for r in runs]
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
                "Serve them from two servers, or train both prompts on the same model.")
        pools = [r.cfg.model.get("pooling") for r in (first, run)]
        if pools[0] != pools[1]:
            raise SptError(f"{run.dir} was trained with model.pooling={pools[1]} but {first.dir} "
                           f"with model.pooling={pools[0]}: the served backbone pools one way; "
                           "serve them from two servers")


def _data_module(run: _Run, backbone):
    """The run's own classification data module, used only for its template encoder, label
    names and limits (no rows are read). With a Hub source configured, the local data root is
    not needed, so it is dropped."""
    data = OmegaConf.to_container(run.cfg.data, resolve=True)
    if data.get("hub") and data.get("root"):
        data["root"], data["local"] = None, None
    if "tasks" in data:
        raise SptError(f"{run.dir}: data={data.get('name')} is a task mixture: spt.serve stacks "
                       "single-task runs")
    try:
        dm = instantiate(OmegaConf.create(data), _partial_=True)(tokenizer=backbone.tokenizer,
                                                                 arch=backbone.arch)
    except SptError as err:
        raise SptError(f"{run.dir}: cannot rebuild its data settings: {err}") from None
    if not hasattr(dm, "encoder") or not hasattr(dm.task, "label_words"):
        raise SptError(f"{run.dir}: data={dm.name} ({type(dm).__name__}) is not a text "
                       "classification task: spt.serve serves classification prompts")
    return dm


def _check_labels(run: _Run, dm) -> None:
    saved = [str(x) for x in run.meta.get("label_names") or []]
    if saved and saved != list(dm.label_names):
        raise SptError(f"{run.dir}: the artifact's label names {saved} differ from its "
                       f"config.yaml's {list(dm.label_names)}: the run directory was edited")


# -- the server ----------------------------------------------------------------------------

@dataclasses.dataclass
class _Task:
    name: str
    run: Path
    method: str
    data: Any  # TextClassificationDataModule: template encoder, label names, limits
    group: int  # which served module
    row: int  # its row in that module's prompt table

    @property
    def fields(self) -> list[str]:
        return list(self.data.text_fields)

    @property
    def labels(self) -> list[str]:
        return list(self.data.label_names)


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
    settings = tuple(sorted(info.cls.serving_settings(run.cfg.method).items()))
    return (run.method, int(_tensor(run, "prefix").shape[1]),
            bool(run.meta.get("cross_attention", False)), settings)


def _tensor(run: _Run, key: str) -> torch.Tensor:
    if key not in run.tensors:
        raise SptError(f"{run.dir}/prompt.safetensors holds no {key!r} tensor (it has "
                       f"{sorted(run.tensors)}): re-save it with this version of spt.run")
    return run.tensors[key]


def _build_group(key: tuple, backbone, names: list[str], runs: list[_Run], tasks: list) -> Any:
    """A method module with one prompt-table row (and head) per task, holding the runs'
    materialised prompts."""
    info = MultiTaskInfo("serve", tuple(tasks))
    common = dict(backbone=backbone, task=info, n_tasks=len(runs), task_names=names)
    if key[0] == "input":
        module = methods.get("prompt").cls(length=key[1], init="uniform", **common)
        table, name = module.prompt.weight, "prompt"
    else:
        cls = methods.get(key[0]).cls
        module = cls(length=key[1], reparam=False, cross_attention=key[2], **dict(key[3]),
                     **common)
        table, name = module.prefix.weight, "prefix"
    with torch.no_grad():
        for t, run in enumerate(runs):
            saved = _tensor(run, name)
            if tuple(saved.shape[1:]) != tuple(table.shape[1:]):
                raise SptError(f"{run.dir}: {name} has shape {list(saved.shape)}, the served "
                               f"backbone expects [1, {', '.join(map(str, table.shape[1:]))}]")
            table[t].copy_(saved[0])
            if module.head is not None:
                load_module_tensors(module.head[t], run.tensors, "head.", run.dir,
                                    "the run's data.label_names")
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
        names = [r.name or str(r.cfg.data.get("name") or r.meta.get("data")) for r in loaded]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            dirs = [str(r.dir) for r, n in zip(loaded, names, strict=True) if n in repeated]
            raise SptError(f"task name(s) {repeated} are given to several runs ({dirs}): name "
                           "each run, e.g. --run sst2_a=DIR --run sst2_b=DIR or "
                           "from_runs({'sst2_a': dir1, 'sst2_b': dir2})")
        log.info("loading backbone <%s> from %s", loaded[0].cfg.model.get("_target_"),
                 loaded[0].dir)
        backbone = instantiate(loaded[0].cfg.model)
        for run in loaded:
            check_base(run.meta, backbone.identity(), run.dir / "prompt.safetensors")
        data = {}
        for name, run in zip(names, loaded, strict=True):
            dm = _data_module(run, backbone)
            _check_labels(run, dm)
            data[name] = dm
        by_key: dict[tuple, list[int]] = defaultdict(list)
        for i, run in enumerate(loaded):
            by_key[_group_key(run)].append(i)
        tasks: dict[str, _Task] = {}
        groups: list[_Group] = []
        for g, (key, members) in enumerate(by_key.items()):
            gnames = [names[i] for i in members]
            infos = [dataclasses.replace(data[n].task, name=n) for n in gnames]
            module = _build_group(key, backbone, gnames, [loaded[i] for i in members], infos)
            for row, (i, n) in enumerate(zip(members, gnames, strict=True)):
                data[n].n_soft = module.n_soft_tokens
                tasks[n] = _Task(n, loaded[i].dir, loaded[i].method, data[n], g, row)
            pad = data[gnames[0]].pad_id
            groups.append(_Group(key, module, gnames,
                                 MixCollator(pad, left=backbone.ops.left_padded)))
            log.info("serving %s as one %s table", gnames, key[0])
        return cls(backbone, tasks, groups)

    # -- description -----------------------------------------------------------------------
    @property
    def tasks(self) -> dict[str, dict]:
        """Task name -> ``fields`` (the template's text fields), ``labels``, ``method``,
        ``template`` and ``run``."""
        return {n: {"fields": t.fields, "labels": t.labels, "method": t.method,
                    "template": t.data.template, "run": str(t.run)}
                for n, t in self._tasks.items()}

    def describe(self) -> dict:
        """The backbone's identity and the served tasks (what ``GET /health`` reports)."""
        ident = self.backbone.identity()
        return {"backbone": ident["name"], "arch": ident["arch"],
                "fingerprint": ident["fingerprint"], "tasks": self.tasks,
                "groups": [g.tasks for g in self._groups]}

    # -- inference -------------------------------------------------------------------------
    def check_rows(self, rows: Iterable) -> list[tuple[_Task, dict[str, str]]]:
        """Each row as (its task, its text fields); a malformed row, an unknown task or a
        missing text field raises :class:`SptError` naming the row and the fix."""
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
            raise SptError("rows must be a list of {'task': name, 'text': {field: value}}")
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or "task" not in row or "text" not in row:
                raise SptError(f"row {i} must be {{'task': name, 'text': {{field: value}}}}, "
                               f"got {str(row)[:120]}")
            task = self._tasks.get(row["task"]) if isinstance(row["task"], str) else None
            if task is None:
                raise SptError(f"row {i}: unknown task {row['task']!r}; this server knows "
                               f"{sorted(self._tasks)}")
            text = row["text"]
            if not isinstance(text, Mapping):
                raise SptError(f"row {i}: 'text' must map field names to strings, e.g. "
                               f"{ {f: '...' for f in task.fields} }")
            missing = [f for f in task.fields if f not in text]
            if missing:
                raise SptError(f"row {i}: task {task.name!r} needs text field(s) {missing}; its "
                               f"template {task.data.template!r} uses {task.fields}")
            bad = [f for f in task.fields if not isinstance(text[f], str)]
            if bad:
                raise SptError(f"row {i}: text field(s) {bad} of task {task.name!r} must be "
                               "strings")
            out.append((task, {f: text[f] for f in task.fields}))
        return out

    def _batch(self, group: _Group, rows: list[tuple[_Task, dict[str, str]]]) -> dict:
        """Tokenise each row with its task's template (the data module's encoder, one call per
        task) and pad them into one batch with per-row ``task_ids``."""
        encoded: list[dict | None] = [None] * len(rows)
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, (task, _) in enumerate(rows):
            by_task[task.name].append(i)
        for name, idx in by_task.items():
            task = self._tasks[name]
            dm = task.data
            texts = {f: [rows[i][1][f] for i in idx] for f in task.fields}
            enc = EncodedDataset(dm.encoder.encode(texts, dm.n_soft, dm.max_length,
                                                   dm.label_reserve), [0] * len(idx))
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
                    out[i] = {"task": task.name, "label": task.labels[best],
                              "scores": dict(zip(task.labels, values, strict=True))}
        return out


# -- HTTP: dynamic batching ------------------------------------------------------------------

class Batcher:
    """Gathers concurrent requests into one :meth:`PromptServer.predict` call.

    A single worker task takes the first queued request, then more for up to ``max_wait_ms``
    or until ``max_batch`` rows (a request that would overflow the batch waits for the next
    one; a request larger than ``max_batch`` is served alone), runs the forward in a
    one-thread executor and resolves each request's future. If a merged batch fails, its
    requests are retried one by one so that only the faulty one sees the error.
    """

    def __init__(self, predict, max_batch: int = 32, max_wait_ms: float = 5.0):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise SptError(f"max_batch={max_batch!r} must be an integer >= 1")
        if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise SptError(f"max_wait_ms={max_wait_ms!r} must be a number >= 0")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batches = 0  # predict calls
        self.rows = 0  # rows they served
        self.requests = 0  # requests they answered
        self.max_rows = 0  # largest batch
        self.sizes: dict[int, int] = defaultdict(int)  # rows per batch -> how many batches
        self._queue: asyncio.Queue | None = None
        self._getter: asyncio.Future | None = None
        self._carry: tuple | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def stats(self) -> dict:
        """Counters since start: ``batches``, ``rows``, ``requests``, ``rows_per_batch_mean``,
        ``requests_per_batch_mean``, ``max_rows``, ``batch_sizes`` (rows -> batches)."""
        n = max(1, self.batches)
        return {"batches": self.batches, "rows": self.rows, "requests": self.requests,
                "rows_per_batch_mean": self.rows / n, "requests_per_batch_mean":
                self.requests / n, "max_rows": self.max_rows,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000.0}

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spt-serve")
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._getter is not None:
            self._getter.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, rows: list) -> list[dict]:
        """Queue ``rows`` (checked already) and wait for their predictions."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, future))
        return await future

    async def _next(self, timeout: float | None):
        """The next queued request, or None after ``timeout`` seconds. The pending ``get``
        survives a timeout (never cancelled), so no request is lost."""
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if self._getter is None:
            self._getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return None
        item, self._getter = self._getter.result(), None
        return item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch, n = [first], len(first[0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                item = await self._next(max(0.0, deadline - loop.time()))
                if item is None:
                    break
                if n + len(item[0]) > self.max_batch:
                    self._carry = item  # opens the next batch
                    break
                batch.append(item)
                n += len(item[0])
            await self._serve(batch)

    async def _serve(self, batch: list[tuple[list, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        rows = [r for request, _ in batch for r in request]
        try:
            preds = await loop.run_in_executor(self._executor, self.predict, rows)
        except Exception as err:
            if len(batch) > 1:
                for item in batch:
                    await self._serve([item])
                return
            if not batch[0][1].done():
                batch[0][1].set_exception(err)
            return
        self.batches += 1
        self.rows += len(rows)
        self.requests += len(batch)
        self.max_rows = max(self.max_rows, len(rows))
        self.sizes[len(rows)] += 1
        start = 0
        for request, future in batch:
            if not future.done():  # a client that went away leaves a cancelled future
                future.set_result(preds[start:start + len(request)])
            start += len(request)


class Row(BaseModel):
    """One row of ``POST /predict``."""

    task: str = Field(description="a task name from GET /health")
    text: dict[str, str] = Field(description="the task's template fields -> text")


class PredictBody(BaseModel):
    """The body of ``POST /predict``."""

    rows: list[Row] = Field(description="rows to classify, of any served tasks")


def create_app(server: PromptServer, max_batch: int = 32, max_wait_ms: float = 5.0):
    """The FastAPI app: ``GET /health``, ``GET /stats``, ``POST /predict`` (``{"rows":
    [...]}`` -> ``{"predictions": [...]}``). A body that is not valid JSON or not of that shape
    gets 422, an unknown task or a missing text field 400, each with a message."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    batcher = Batcher(server.predict, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="spt prompt server", lifespan=lifespan,
                  description="Soft prompts of several tasks on one frozen backbone.")
    app.state.batcher = batcher
    app.state.server = server

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # no traceback to clients
        log.exception("request failed")
        return JSONResponse(status_code=500,
                            content={"detail": f"internal error: {type(exc).__name__}: {exc}"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **server.describe(), "batching": batcher.stats()}

    @app.get("/stats")
    async def stats() -> dict:
        return batcher.stats()

    @app.post("/predict")
    async def predict(body: PredictBody) -> dict:
        rows = [r.model_dump() for r in body.rows]
        try:
            server.check_rows(rows)
        except SptError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        if not rows:
            return {"predictions": []}
        try:
            return {"predictions": await batcher.submit(rows)}
        except SptError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    return app


# -- load test -------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _stats(client) -> dict | None:
    try:
        response = await client.get("/stats")
        return response.json() if response.status_code == 200 else None
    except Exception:  # connection refused or reset, a body that is not JSON
        return None


async def _load_test(url: str, rows: list[dict], concurrency: int, duration_s: float,
                     rows_per_request: int, timeout_s: float) -> dict:
    try:
        import httpx
    except ImportError:
        raise SptError("the load test needs httpx: pip install httpx (it is in spt's dev "
                       "extra)") from None

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s,
                                 limits=limits) as client:
        before = await _stats(client)
        if before is None:
            raise SptError(f"no spt.serve server answers GET {url}/stats: start one with "
                           "python -m spt.serve http --run ...")
        latencies: list[float] = []
        errors = 0
        sent = 0
        stop = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors, sent
            while time.perf_counter() < stop:
                body = {"rows": [rows[(sent * rows_per_request + j) % len(rows)]
                                 for j in range(rows_per_request)]}
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post("/predict", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000.0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = await _stats(client)  # None if the server went away during the test
    batches = after["batches"] - before["batches"] if after else None
    return {"requests_per_s": len(latencies) / elapsed,
            "rows_per_s": len(latencies) * rows_per_request / elapsed,
            "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99),
            "errors": errors, "requests": len(latencies) + errors,
            "rows_per_batch_mean": (after["rows"] - before["rows"]) / max(1, batches)
            if after else None,
            "batches": batches, "concurrency": concurrency, "duration_s": elapsed}


def load_test(url: str, rows: Sequence[dict], concurrency: int = 8, duration_s: float = 10.0,
              rows_per_request: int = 1, timeout_s: float = 30.0) -> dict:
    """Drive a running server at ``url`` with ``concurrency`` clients, each posting
    ``rows_per_request`` rows (cycling through ``rows``) back to back for ``duration_s``.

    Returns ``requests_per_s``, ``rows_per_s``, ``p50_ms``/``p99_ms`` (latency of successful
    requests), ``errors`` (non-200 answers and failed connections), ``requests``,
    ``rows_per_batch_mean`` and ``batches`` (from the server's ``/stats`` during the test).
    Call it outside a running event loop (it runs its own)."""
    if not rows:
        raise SptError("load_test needs at least one row to send")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise SptError(f"concurrency={concurrency!r} must be an integer >= 1")
    if not isinstance(rows_per_request, int) or rows_per_request < 1:
        raise SptError(f"rows_per_request={rows_per_request!r} must be an integer >= 1")
    return asyncio.run(_load_test(url, list(rows), concurrency, float(duration_s),
                                  rows_per_request, timeout_s))


# -- command line ----------------------------------------------------------------------------

def _parse_run(text: str) -> tuple[str | None, str]:
    """``NAME=DIR`` or ``DIR`` (a ``=`` inside a path, after a ``/``, is part of the path)."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, path
    return None, text


def _read_jsonl(path: str) -> list[dict]:
    f = sys.stdin if path == "-" else None
    try:
        lines = (f.read() if f else Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as err:
        raise SptError(f"cannot read --input {path}: {err}") from None
    rows = []
    for n, line in enumerate(lines.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as err:
            raise SptError(f"{path} line {n} is not JSON ({err}): write one "
                           '{"task": ..., "text": {...}} object per line') from None
    return rows


def _server(args) -> PromptServer:
    if args.threads:
        torch.set_num_threads(args.threads)
    return PromptServer.from_runs([_parse_run(v) for v in args.run])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spt.serve", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_runs(p):
        p.add_argument("--run", action="append", required=True, metavar="[TASK=]DIR",
                       help="a run directory to serve, optionally named (repeat per task)")
        p.add_argument("--threads", type=int, default=0,
                       help="torch intra-op threads (0 = torch's default)")

    p = sub.add_parser("predict", help="classify the rows of a JSON-lines file")
    add_runs(p)
    p.add_argument("--input", required=True, help="JSON lines of {task, text}; - for stdin")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward")

    p = sub.add_parser("http", help="serve POST /predict with dynamic batching")
    add_runs(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="rows per forward at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first request of a batch waits for company")
    p.add_argument("--access-log", action="store_true",
                   help="log every request (off by default: it costs throughput)")

    p = sub.add_parser("load-test", help="measure a running server")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--input", required=True, help="JSON lines of {task, text} to send")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--rows-per-request", type=int, default=1)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per load-test request
    try:
        if args.command == "load-test":
            print(json.dumps(load_test(args.url, _read_jsonl(args.input), args.concurrency,
                                       args.duration, args.rows_per_request)))
            return 0
        if args.command == "predict":
            if args.batch_size < 1:
                raise SptError(f"--batch-size={args.batch_size} must be >= 1")
            rows = _read_jsonl(args.input)  # a bad file fails before the model loads
        server = _server(args)
        if args.command == "predict":
            server.check_rows(rows)  # every row, before the first forward
            for start in range(0, len(rows), args.batch_size):
                for pred in server.predict(rows[start:start + args.batch_size]):
                    print(json.dumps(pred))
            return 0
        import uvicorn

        app = create_app(server, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                    access_log=args.access_log)
        return 0
    except Exception as exc:  # a user error (also behind Hydra's wrapper): one line, status 2
        return cli_error(exc)


if __name__ == "__main__":
    sys.exit(main())
