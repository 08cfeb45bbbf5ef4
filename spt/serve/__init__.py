"""Multi-prompt inference and serving: many trained soft prompts on one frozen backbone.

Users train one soft prompt per task (``python -m spt.run data=sst2``, ``data=rte``, ...) on the
same frozen model. :class:`PromptServer` loads that backbone once and the prompts of several run
directories, stacks them along the prompt table's task axis (the table every method keeps,
``[n_tasks, ...]``, gathered per row by ``task_ids``) and answers a batch whose rows name
different tasks in one call of the table's method. Each task keeps its own template, label names and
verbalizer words, and on encoder-only backbones its own classification head; rows are scored
by the mixture path of :class:`~spt.core.objective.Classification` (each row against its
own task's labels; that path currently runs the backbone once per task present in a batch,
on that task's rows).

What is served (classification runs with one task each):

- input-level prompts: ``method=prompt``, ``ptuning`` and ``mpt`` (their artifacts hold the
  materialised prompt ``[1, length, d]``, served as a :class:`~spt.methods.prompt.PromptTuning`
  table row);
- every other served method by its own class, built from the settings its artifact gives
  (``serving_settings``) with one row per run of each tensor it names (``served_rows``):
  ``method=prefix`` and ``ptuning_v2`` (the materialised per-layer prefixes, ``reparam=false``)
  and ``dept`` (its prompt and embedding update).

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

from spt.serve.cli import main
from spt.serve.http import Batcher, create_app
from spt.serve.loadtest import load_test
from spt.serve.server import PromptServer, served_methods

__all__ = ["Batcher", "PromptServer", "create_app", "load_test", "main", "served_methods"]
