"""Text classification as prompted input: SST-2, RTE, CB, BoolQ, AG News, TREC (one YAML each).

A row becomes ``[specials] {soft}<template with text fields> [specials]``; the method scores the
``label_words`` (the verbalizer) for each class. Data is read from a local copy under ``root``
(``SPT_DATA_DIR``), or, when ``root`` is None, from the Hugging Face Hub with ``datasets``.

Batch contract (every loader)::

    input_ids       [B, L] long   token ids, padded to the longest row of the batch
    attention_mask  [B, L] long   1 = real token (soft slots included), 0 = padding
    soft_mask       [B, L] bool   True at the n_soft placeholder slots the method fills
    labels          [B]    long   class index into task.label_names
    task_ids        [B]    long   task_index of this data module (for multi-task prompt tables)

Padding is on the left where the architecture says so (decoder-only: the label word is appended
at the end), on the right otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from spt.backbones.archs import arch_ops
from spt.data.batches import Collator, EncodedDataset
from spt.data.inputs import InputFormat
from spt.data.loaders import SplitLoaders, make_loader
from spt.data.readers import (
    HUB_KEYS,
    LOCAL_KEYS,
    ROOT_HINT,
    RawSplit,
    check_root,
    check_spec,
    read_hub,
    read_local,
    to_plain,
)
from spt.data.task import LABEL_SCORES, METRICS, TaskInfo
from spt.errors import SptError

log = logging.getLogger("spt.data")

SPLITS = ("train", "dev")


class TextClassificationDataModule(SplitLoaders, L.LightningDataModule):
    """Prompted text classification from local files or the Hub.

    Args:
        name: task name (``"sst2"``), used in logs and messages.
        tokenizer: a Hugging Face (fast) tokenizer; passed by the run, not the YAML.
        arch: ``"encoder"``, ``"decoder"`` or ``"encoder-decoder"``; decides the padding side.
        template: e.g. ``"{soft}Review: {sentence} Sentiment:"``; ``{field}`` for each text field
            and at most one ``{soft}`` (missing -> soft tokens right after the special prefix).
        text_fields: the field names the template uses.
        label_names: canonical class names; class index = position.
        label_words: one verbalizer string per class, same order (may be several tokens).
        root: local data folder; None -> ``datasets.load_dataset`` with ``hub``.
        local: ``{"train": spec, "dev": spec}``, see :mod:`spt.data.readers`.
        hub: ``{"train": spec, "dev": spec}`` for ``datasets.load_dataset``.
        metrics: names out of ``("acc", "f1_macro")``.
        max_length: total token budget per input, including specials, template, soft tokens and
            ``label_reserve``; only the text fields are truncated (longest first).
        batch_size / eval_batch_size: loader batch sizes (eval defaults to ``batch_size``).
        num_workers: DataLoader workers.
        train_limit / dev_limit: keep a seeded random subset of that many rows (None = all).
        seed: seed of those subsets (shuffling follows the run's Lightning seed).
        n_soft: soft-token slots per input; may be set as an attribute before ``setup()``.
        label_reserve: tokens kept free at the end for the label word a decoder appends;
            None = the architecture's (decoder-only: the longest label word; else 0).
        task_index: value of ``task_ids`` in every batch.
        group_by_length: training batches of rows of similar length, and evaluation in order
            of length, longest first (less padding; see :mod:`spt.data.loaders`).
        label_score: how a decoder or T5 scores a class whose label word is several tokens:
            ``sum`` (its total log-probability) or ``mean`` (per token, length-normalised, as
            rank-classification setups often do so long words are not penalised).
        soft_first: put the template's leading ``{soft}`` slot before the tokenizer's
            leading special token (BOS / CLS), where PEFT puts virtual tokens: a prompt
            trained so computes the same scores after ``spt peft export`` (with
            ``model.pooling=pooler`` on BERT, a PEFT ``SEQ_CLS`` adapter).
    """

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        arch: str,
        template: str,
        text_fields: Sequence[str],
        label_names: Sequence[str],
        label_words: Sequence[str],
        root: str | Path | None = None,
        local: Mapping[str, Mapping] | None = None,
        hub: Mapping[str, Mapping] | None = None,
        metrics: Sequence[str] = ("acc",),
        max_length: int = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        dev_limit: int | None = None,
        seed: int | None = 0,
        n_soft: int = 0,
        label_reserve: int | None = 0,
        task_index: int = 0,
        group_by_length: bool = False,
        label_score: str = "sum",
        soft_first: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"], logger=False)
        self.name = str(name)
        self.tokenizer = tokenizer
        self.ops = arch_ops(arch)  # padding side and label reserve follow the architecture
        self.ops.check_data("text", self.name)
        self.arch = arch
        self.text_fields = [str(f) for f in to_plain(text_fields)]
        self.label_names = [str(x) for x in to_plain(label_names)]
        self.label_words = [str(x) for x in to_plain(label_words)]
        if not self.label_names or len(set(self.label_names)) != len(self.label_names):
            raise SptError(
                f"data.label_names must be a non-empty list of distinct names, "
                f"got {self.label_names}."
            )
        if len(self.label_words) != len(self.label_names):
            raise SptError(
                f"{self.name}: data.label_words has {len(self.label_words)} entries "
                f"{self.label_words} but data.label_names has {len(self.label_names)} "
                f"{self.label_names}; give one label word per class, in the same order."
            )
        self.metrics = [str(m) for m in to_plain(metrics)]
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise SptError(
                f"data.metrics must be a non-empty subset of {list(METRICS)}, got {self.metrics}."
            )
        for key, value, low in (
            ("max_length", max_length, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("n_soft", n_soft, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise SptError(f"data.{key} must be an int >= {low}, got {value!r}.")
        for key, value in (
            ("train_limit", train_limit),
            ("dev_limit", dev_limit),
            ("eval_batch_size", eval_batch_size),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SptError(f"data.{key} must be null or an int >= 1, got {value!r}.")
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.limits = {"train": train_limit, "dev": dev_limit}
        self.seed = 0 if seed is None else int(seed)
        self.n_soft = n_soft
        self.task_index = int(task_index)
        self.group_by_length = bool(group_by_length)
        if label_score not in LABEL_SCORES:
            raise SptError(f"data.label_score={label_score!r}: choose {' or '.join(LABEL_SCORES)}")
        self.label_score = label_score

        self.soft_first = bool(soft_first)
        self.template = str(template)
        self._shape = shape = InputFormat(  # the template's half of self.formats
            kind="classification",
            name=self.name,
            template=self.template,
            text_fields=tuple(self.text_fields),
            label_names=tuple(self.label_names),
            label_words=tuple(self.label_words),
            soft_first=self.soft_first,
        )
        self.encoder = shape.encoder(tokenizer, arch)
        if label_reserve is None:
            label_reserve = shape.default_label_reserve(tokenizer, arch)
        if not isinstance(label_reserve, int) or label_reserve < 0:
            raise SptError(
                f"data.label_reserve must be null or an int >= 0, got {label_reserve!r}."
            )
        self.label_reserve = label_reserve
        self.pad_id = self.encoder.soft_id

        self.local = self._check_specs(local, "local", LOCAL_KEYS)
        self.hub = self._check_specs(hub, "hub", HUB_KEYS)
        self.root = check_root(self.name, root, self.local)
        if self.root is None and self.hub is None:
            raise SptError(f"{self.name}: no data.root and no data.hub to load from. {ROOT_HINT}")

        self._raw: dict[str, RawSplit] = {}
        self._datasets: dict[str, tuple[tuple, EncodedDataset]] = {}

    # ------------------------------------------------------------------ config checks
    def _check_specs(self, specs: Any, key: str, allowed: set[str]) -> dict[str, dict] | None:
        if specs is None:
            return None
        specs = to_plain(specs)
        if not isinstance(specs, dict) or set(specs) != set(SPLITS):
            got = sorted(specs) if isinstance(specs, dict) else specs
            raise SptError(f"data.{key} must have exactly the splits {list(SPLITS)}, got {got}.")
        return {
            s: check_spec(specs[s], f"data.{key}.{s}", self.text_fields, self.label_names, allowed)
            for s in SPLITS
        }

    # ------------------------------------------------------------------ public API
    @property
    def task(self) -> TaskInfo:
        return TaskInfo(
            name=self.name,
            label_names=tuple(self.label_names),
            label_words=tuple(self.label_words),
            metrics=tuple(self.metrics),
            num_classes=len(self.label_names),
            label_after_space=self.encoder.ends_with_space,
            label_score=self.label_score,
        )

    @property
    def formats(self) -> tuple[InputFormat, ...]:
        """How new text becomes a batch of this task (what an artifact carries)."""
        return (
            dataclasses.replace(
                self._shape,
                metrics=tuple(self.metrics),
                label_score=self.label_score,
                max_length=self.max_length,
                label_reserve=self.label_reserve,
            ),
        )

    def label_word_ids(self) -> list[list[int]]:
        """Token ids of each label word as it would follow the template (what a decoder appends)."""
        return [self.encoder.label_word_ids(w) for w in self.label_words]

    def train_texts(self, limit: int = 5000) -> list[str]:
        """Raw text of up to ``limit`` train rows (fields joined by a space); works before setup."""
        rows = self._rows("train")
        n = min(limit, len(rows))
        return [" ".join(rows.texts[f][i].strip() for f in self.text_fields) for i in range(n)]

    def num_rows(self, split: str) -> int:
        """Rows of ``"train"`` or ``"dev"`` after ``train_limit``/``dev_limit``."""
        return len(self._rows(split))

    # ------------------------------------------------------------------ loading
    def _rows(self, split: str) -> RawSplit:
        if split not in self._raw:
            where = f"data.{'local' if self.root is not None else 'hub'}.{split}"
            if self.root is not None:
                raw = read_local(
                    self.root, self.local[split], self.text_fields, self.label_names, where
                )
            else:
                raw = read_hub(self.hub[split], self.text_fields, self.label_names, where)
            limit = self.limits[split]
            if limit is not None and limit < len(raw):
                rng = random.Random(f"{self.seed}:{split}")  # str seeds are stable across runs
                raw = raw.subset(sorted(rng.sample(range(len(raw)), limit)))
            self._raw[split] = raw
        return self._raw[split]

    def _dataset(self, split: str) -> EncodedDataset:
        key = (self.n_soft, self.max_length, self.label_reserve)
        cached = self._datasets.get(split)
        if cached is not None and cached[0] == key:
            return cached[1]
        if not isinstance(self.n_soft, int) or self.n_soft < 0:
            raise SptError(f"n_soft must be an int >= 0, got {self.n_soft!r}.")
        rows = self._rows(split)
        enc = self.encoder.encode(rows.texts, self.n_soft, self.max_length, self.label_reserve)
        if enc.n_truncated:
            log.warning(
                "%s/%s: truncated %d of %d inputs to max_length=%d",
                self.name,
                split,
                enc.n_truncated,
                len(rows),
                self.max_length,
            )
        ds = EncodedDataset(enc, rows.labels)
        self._datasets[split] = (key, ds)
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenize the splits the stage needs (train + dev for fit, dev otherwise)."""
        for split in ("dev",) if stage in ("validate", "test", "predict") else SPLITS:
            self._dataset(split)

    # ------------------------------------------------------------------ loaders
    def _collator(self) -> Collator:
        return Collator(self.pad_id, left=self.ops.left_padded, task_index=self.task_index)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self._dataset(split)
        return make_loader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            lengths=[len(ids) for ids in ds.ids] if self.group_by_length else None,
        )

    # ------------------------------------------------------------------ in-context examples
    def context_examples(self, k: int, seed: int = 0, balanced: bool = True) -> list[dict]:
        """``k`` seeded train rows rendered for use as in-context demonstrations (CPT).

        Each row is the template without its soft slots and without the tokenizer's special
        tokens, followed by its gold label word, tokenized exactly as the queries are (the
        same :class:`TemplateEncoder` pieces, the label word as a decoder appends it). Returns
        one dict per example, in context order::

            ids    list[int]  token ids
            types  list[str]  per token: "input" (text fields), "format" (the template's own
                              words), "label" (the label word)
            label  int        class index

        ``balanced`` draws the classes in turn (as evenly as the split allows) before the
        order is shuffled; otherwise ``k`` rows are sampled uniformly. Text fields are cut
        (longest first) so one example fits in ``max_length`` tokens.
        """
        rows = self._rows("train")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(rows):
            raise SptError(
                f"{self.name}: cannot take {k!r} in-context examples from "
                f"{len(rows)} train rows (data.train_limit={self.limits['train']}); "
                f"ask for 1..{len(rows)}"
            )
        rng = random.Random(f"{seed}:context")  # str seeds are stable across runs
        picked = (
            self._balanced_pick(rows.labels, k, rng)
            if balanced
            else rng.sample(range(len(rows)), k)
        )
        rng.shuffle(picked)
        return [
            self._render_example({f: rows.texts[f][i] for f in self.text_fields}, rows.labels[i])
            for i in picked
        ]

    @staticmethod
    def _balanced_pick(labels: Sequence[int], k: int, rng: random.Random) -> list[int]:
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(labels):
            by_class.setdefault(y, []).append(i)
        pools = [rng.sample(v, len(v)) for _, v in sorted(by_class.items())]
        rng.shuffle(pools)
        picked: list[int] = []
        while len(picked) < k:  # one from each class in turn; empty pools drop out
            for pool in pools:
                if pool and len(picked) < k:
                    picked.append(pool.pop())
        return picked

    def _render_example(self, fields: Mapping[str, str], label: int) -> dict:
        from spt.data.template import fit_lengths

        enc = self.encoder
        label_ids = enc.label_word_ids(self.label_words[label])
        field_ids = {
            p.value: enc._enc([enc._piece_text(p, fields[p.value])])[0]
            for p in enc.pieces
            if p.kind == "field"
        }
        template = sum(len(v) for v in enc._text_ids.values())
        budget = max(1, self.max_length - template - len(label_ids))
        names = list(field_ids)
        keep = dict(
            zip(names, fit_lengths([len(field_ids[n]) for n in names], budget), strict=True)
        )
        ids: list[int] = []
        types: list[str] = []
        for i, p in enumerate(enc.pieces):
            piece = (
                enc._text_ids[i]
                if p.kind == "text"
                else field_ids[p.value][: keep[p.value]]
                if p.kind == "field"
                else []
            )
            ids += piece
            types += ["format" if p.kind == "text" else "input"] * len(piece)
        ids += label_ids
        types += ["label"] * len(label_ids)
        return {"ids": ids, "types": types, "label": int(label)}
