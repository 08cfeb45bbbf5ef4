"""Table-to-text generation data (E2E, WebNLG 2017) for prefix tuning vs prompt tuning.

Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", arXiv:2101.00190.
An input table is linearised (see :mod:`spt.data.tables`), put into a template such as
``"{soft}{table} Text:"`` and the model learns to continue with the reference text.

Splits: ``train`` (one row per (table, reference) pair), ``dev`` and ``test`` (one row per table,
every reference kept for BLEU/ROUGE). E2E: only the challenge's dev and test files are available
locally (the 42k-row train file is not), so **train and dev are both carved out of
``e2e/devset.csv`` by MR**: a seeded shuffle of its 547 distinct MRs, ``dev_fraction`` (10%, 55
MRs) -> dev, the other 492 MRs -> train, so all references of one MR stay on one side; the
challenge's ``testset_w_refs.csv`` (630 MRs) is the held-out test split. The carving happens when
a source (``local`` or ``hub``) has ``dev: null``.

Batch contract, training (``train_dataloader``)::

    input_ids       [B, L] long   decoder: prompt + target + eos, LEFT padded
                                  encoder-decoder: prompt only, right padded
    attention_mask  [B, L] long   1 = real token (soft slots included), 0 = padding
    soft_mask       [B, L] bool   True at the n_soft slots of {soft}, exactly n_soft per row
    labels          decoder: [B, L] long, aligned with input_ids (not shifted; HF causal LMs
                                  shift inside), -100 on padding, specials, template, table
                                  and soft slots, the target ids (+ eos) elsewhere
                    encoder-decoder: [B, T] long, target ids + eos, right padded with -100
    task_ids        [B]    long   task_index of this data module

Evaluation (``val_dataloader`` = dev, ``test_dataloader``/``predict_dataloader`` = test)::

    input_ids, attention_mask, soft_mask, task_ids   the prompt only (left padded for decoders,
                                                     so generation continues from the end)
    ref_index       [B]    long   row index into ``references(split)`` / ``sources(split)``

The table text (never the template or the soft slots) is cut so that the prompt has at most
``max_source_length`` tokens; a reference is cut so that reference + eos has at most
``max_target_length`` tokens (a cut reference gets no eos: the model is not taught to stop
mid-sentence). Cuts are counted and logged once per split.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from spt.backbones.archs import arch_ops
from spt.data.batches import TextToTextCollator, TextToTextDataset, encode_rows
from spt.data.generation import GENERATION_METRICS, GenerationTaskInfo, generation_metrics
from spt.data.inputs import InputFormat
from spt.data.loaders import SplitLoaders, make_loader
from spt.data.readers import ROOT_HINT, check_root, to_plain
from spt.data.tables import (
    HUB_KEYS,
    KINDS,
    LOCAL_KEYS,
    Entry,
    carve_dev,
    check_split_spec,
    read_hub_entries,
    read_local_entries,
)
from spt.errors import SptError, is_count

__all__ = ["GenerationTaskInfo", "TextToTextDataModule", "generation_metrics"]

log = logging.getLogger("spt.data")

SPLITS = ("train", "dev", "test")
FIELD = "table"  # the template's text field


class TextToTextDataModule(SplitLoaders, L.LightningDataModule):
    """Table-to-text generation from local files or the Hub.

    Args:
        name: task name (``"e2e"``, ``"webnlg"``), used in logs, messages and the task info.
        tokenizer: a Hugging Face tokenizer with an eos token; passed by the run, not the YAML.
        arch: ``"decoder"`` or ``"encoder-decoder"`` (generation needs a decoder).
        kind: reader, ``"e2e"`` (``mr,ref`` rows grouped by MR) or ``"webnlg"`` (triples +
            lexicalizations per entry); see :mod:`spt.data.tables`.
        template: e.g. ``"{soft}{table} Text:"``: ``{table}`` once, at most one ``{soft}``
            (missing -> soft tokens right after the special prefix). The target follows it.
        root: local data folder; None -> ``datasets.load_dataset`` with ``hub``.
        local: ``{"train": {"path": ...}, "dev": spec | None, "test": spec | None}``, paths
            relative to ``root``. ``dev: None`` -> dev is carved out of train by table.
        hub: ``{"train": {"path", "name", "split", "revision"}, "dev": ..., "test": ...}``.
        dev_fraction: share of train tables held out as dev when the source has ``dev: None``.
        split_seed: seed of that carving (independent of ``seed``).
        metrics: names out of ``("bleu", "rougeL")``.
        max_source_length: prompt token budget (specials + template + soft + table).
        max_target_length: reference token budget, eos included.
        max_new_tokens: generation budget reported in :attr:`task`; None = ``max_target_length``.
        num_beams: beams when generating at evaluation (1 = greedy), reported in :attr:`task`.
        batch_size / eval_batch_size: loader batch sizes (eval defaults to ``batch_size``).
        num_workers: DataLoader workers.
        train_limit: keep a seeded random subset of that many train rows (pairs).
        dev_limit / test_limit: keep a seeded random subset of that many tables.
        seed: seed of those subsets (shuffling follows the run's Lightning seed).
        n_soft: soft-token slots per input; may be set as an attribute before ``setup()``.
        task_index: value of ``task_ids`` in every batch.
        soft_first: the leading ``{soft}`` slot before the tokenizer's leading special token
            (PEFT's placement; see :class:`~spt.data.text_classification.TextClassificationDataModule`).
    """

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        arch: str,
        kind: str,
        template: str = "{soft}{table} Text:",
        root: str | Path | None = None,
        local: Mapping[str, Mapping | None] | None = None,
        hub: Mapping[str, Mapping | None] | None = None,
        dev_fraction: float = 0.1,
        split_seed: int = 0,
        metrics: Sequence[str] = GENERATION_METRICS,
        max_source_length: int = 256,
        max_target_length: int = 128,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        dev_limit: int | None = None,
        test_limit: int | None = None,
        seed: int | None = 0,
        n_soft: int = 0,
        task_index: int = 0,
        soft_first: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"], logger=False)
        self.name = str(name)
        self.tokenizer = tokenizer
        self.soft_first = bool(soft_first)
        self.ops = arch_ops(arch)  # padding side and where the target goes
        self.ops.check_data("text", self.name)
        self.ops.check_generation(f"data={self.name} (text-to-text generation)")
        self.arch = arch
        if kind not in KINDS:
            raise SptError(f"data.kind must be one of {KINDS}, got {kind!r}.")
        self.kind = kind
        self.metrics = [str(m) for m in to_plain(metrics)]
        bad = [m for m in self.metrics if m not in GENERATION_METRICS]
        if bad or not self.metrics:
            raise SptError(
                f"data.metrics must be a non-empty subset of {list(GENERATION_METRICS)}"
                f", got {self.metrics}."
            )
        for key, value, low in (
            ("max_source_length", max_source_length, 1),
            ("max_target_length", max_target_length, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("n_soft", n_soft, 0),
            ("split_seed", split_seed, 0),
            ("num_beams", num_beams, 1),
        ):
            if not is_count(value, low):
                raise SptError(f"data.{key} must be an int >= {low}, got {value!r}.")
        for key, value in (
            ("train_limit", train_limit),
            ("dev_limit", dev_limit),
            ("test_limit", test_limit),
            ("eval_batch_size", eval_batch_size),
            ("max_new_tokens", max_new_tokens),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SptError(f"data.{key} must be null or an int >= 1, got {value!r}.")
        if not isinstance(dev_fraction, int | float) or not 0 < dev_fraction < 1:
            raise SptError(f"data.dev_fraction must be a number in (0, 1), got {dev_fraction!r}.")
        self.dev_fraction = float(dev_fraction)
        self.split_seed = split_seed
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.max_new_tokens = max_new_tokens or max_target_length
        self.num_beams = num_beams
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.limits = {"train": train_limit, "dev": dev_limit, "test": test_limit}
        self.seed = 0 if seed is None else int(seed)
        self.n_soft = n_soft
        self.task_index = int(task_index)

        self.template = str(template)
        self.encoder = self.formats[0].encoder(tokenizer, arch)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise SptError(
                f"{self.name}: the tokenizer {type(tokenizer).__name__} has no eos "
                "token; generation targets need one to mark their end."
            )
        self.pad_id = self.encoder.soft_id

        self.local = self._check_specs(local, "local", LOCAL_KEYS)
        self.hub = self._check_specs(hub, "hub", HUB_KEYS)
        self.root = check_root(self.name, root, self.local)
        if self.root is None and self.hub is None:
            raise SptError(f"{self.name}: no data.root and no data.hub to load from. {ROOT_HINT}")

        self._entries: dict[str, list[Entry]] = {}
        self._rows: dict[str, tuple[list[str], list[list[str]], list[dict]]] = {}
        self._datasets: dict[str, tuple[tuple, TextToTextDataset]] = {}

    # ------------------------------------------------------------------ config checks
    def _check_specs(self, specs: Any, key: str, allowed: set[str]) -> dict | None:
        if specs is None:
            return None
        specs = to_plain(specs)
        if not isinstance(specs, dict) or not set(specs) <= set(SPLITS) or "train" not in specs:
            got = sorted(specs) if isinstance(specs, dict) else specs
            raise SptError(
                f"data.{key} must map train (required), dev and test to file specs "
                f"(dev/test may be null), got {got}."
            )
        out = {s: check_split_spec(specs.get(s), f"data.{key}.{s}", allowed) for s in SPLITS}
        if out["train"] is None:
            raise SptError(f"data.{key}.train is required.")
        return out

    # ------------------------------------------------------------------ public API
    @property
    def formats(self) -> tuple[InputFormat, ...]:
        """How a new source becomes a batch of this task (what an artifact carries)."""
        return (
            InputFormat(
                kind="text-to-text",
                name=self.name,
                template=self.template,
                text_fields=(FIELD,),
                metrics=tuple(self.metrics),
                max_length=self.max_source_length,
                max_target_length=self.max_target_length,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                table=self.kind,
                soft_first=self.soft_first,
            ),
        )

    @property
    def task(self) -> GenerationTaskInfo:
        return GenerationTaskInfo(
            name=self.name,
            metrics=tuple(self.metrics),
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
        )

    def sources(self, split: str) -> list[str]:
        """Linearised tables, one per row of ``split`` (train: per pair; dev/test: per table)."""
        return list(self._split_rows(split)[0])

    def references(self, split: str) -> list[list[str]]:
        """Reference texts per row of ``split``; eval batches index it with ``ref_index``."""
        return [list(r) for r in self._split_rows(split)[1]]

    def metadata(self, split: str) -> list[dict]:
        """Extra fields per row (WebNLG ``category``, test ``seen_category``; E2E raw ``mr``)."""
        return [dict(m) for m in self._split_rows(split)[2]]

    def num_rows(self, split: str) -> int:
        """Rows of ``split`` after its limit."""
        return len(self._split_rows(split)[0])

    def train_texts(self, limit: int = 5000) -> list[str]:
        """Table and reference text of up to ``limit`` train rows; works before setup."""
        sources, refs, _ = self._split_rows("train")
        return [f"{s} {r[0]}" for s, r in zip(sources[:limit], refs[:limit], strict=True)]

    def score(
        self, split: str, predictions: Sequence[str], ref_index: Sequence[int] | None = None
    ) -> dict[str, float]:
        """:func:`generation_metrics` of predictions against ``references(split)`` (all rows in
        order, or the rows ``ref_index`` names), restricted to ``task.metrics``."""
        refs = self._split_rows(split)[1]
        picked = refs if ref_index is None else [refs[int(i)] for i in ref_index]
        scores = generation_metrics(list(predictions), picked)
        return {k: v for k, v in scores.items() if k in self.metrics}

    # ------------------------------------------------------------------ loading
    def _source(self) -> tuple[str, dict]:
        return ("local", self.local) if self.root is not None else ("hub", self.hub)

    def _read(self, split: str) -> list[Entry]:
        where, specs = self._source()
        if where == "local":
            return read_local_entries(self.root, specs[split], self.kind, f"data.local.{split}")
        return read_hub_entries(specs[split], self.kind, f"data.hub.{split}")

    def _split_entries(self, split: str) -> list[Entry]:
        """All tables of ``split`` (before limits); dev may be carved out of train."""
        if split in self._entries:
            return self._entries[split]
        where, specs = self._source()
        if split in ("train", "dev") and specs["dev"] is None:
            everything = self._read("train")
            train, dev = carve_dev(everything, self.dev_fraction, self.split_seed)
            self._entries["train"] = [everything[i] for i in train]
            self._entries["dev"] = [everything[i] for i in dev]
        elif specs[split] is None:
            raise SptError(
                f"{self.name}: data.{where}.{split} is null, so there is no {split} split to load."
            )
        else:
            self._entries[split] = self._read(split)
        return self._entries[split]

    def _split_rows(self, split: str) -> tuple[list[str], list[list[str]], list[dict]]:
        """(sources, references, metadata) per row, after the split's limit."""
        if split not in SPLITS:
            raise SptError(f"split must be one of {SPLITS}, got {split!r}.")
        if split in self._rows:
            return self._rows[split]
        entries = self._split_entries(split)
        if split == "train":  # one row per (table, reference) pair
            rows = [(e.source, [ref], e.meta) for e in entries for ref in e.refs]
        else:  # one row per table with every reference
            rows = [(e.source, list(e.refs), e.meta) for e in entries]
        limit = self.limits[split]
        if limit is not None and limit < len(rows):
            rng = random.Random(f"{self.seed}:{split}")  # str seeds are stable across runs
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]
        sources = [r[0] for r in rows]
        refs = [r[1] for r in rows]
        meta = [r[2] for r in rows]
        self._rows[split] = (sources, refs, meta)
        return self._rows[split]

    def _dataset(self, split: str) -> TextToTextDataset:
        key = (self.n_soft, self.max_source_length, self.max_target_length)
        cached = self._datasets.get(split)
        if cached is not None and cached[0] == key:
            return cached[1]
        if not isinstance(self.n_soft, int) or self.n_soft < 0:
            raise SptError(f"n_soft must be an int >= 0, got {self.n_soft!r}.")
        room = self.max_source_length - self.encoder.n_template_tokens - self.n_soft
        if room < 1:
            raise SptError(
                f"data.max_source_length={self.max_source_length} is too small for the template: "
                f"special tokens and template words take {self.encoder.n_template_tokens}, "
                f"n_soft={self.n_soft}, leaving {room} tokens for the table. "
                "Raise data.max_source_length or shorten data.template."
            )
        sources, refs, _ = self._split_rows(split)
        targets = [r[0] for r in refs] if split == "train" else None
        ds, n_truncated, n_cut = encode_rows(
            self.encoder,
            self.ops,
            sources,
            targets,
            self.n_soft,
            self.max_source_length,
            self.max_target_length,
            field=FIELD,
        )
        if n_truncated or n_cut:
            msg = (
                f"{self.name}/{split}: truncated {n_truncated} of {len(sources)} sources to "
                f"max_source_length={self.max_source_length}"
            )
            if split == "train":
                msg += (
                    f" and {n_cut} of {len(sources)} targets to "
                    f"max_target_length={self.max_target_length}"
                )
            log.warning(msg)
        self._datasets[split] = (key, ds)
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenize the splits the stage needs: fit -> train + dev, validate -> dev,
        test/predict -> test, None -> every split the source has."""
        splits = {
            "fit": ("train", "dev"),
            "validate": ("dev",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage)
        if splits is None:
            _, specs = self._source()
            splits = tuple(s for s in SPLITS if specs[s] is not None or s == "dev")
        for split in splits:
            self._dataset(split)

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        collate = TextToTextCollator(
            self.pad_id,
            left=self.ops.left_padded,
            labels_aligned=self.ops.target_follows_prompt,
            task_index=self.task_index,
        )
        return make_loader(
            self._dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    test_split = "test"  # E2E and WebNLG have references for their test splits

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
