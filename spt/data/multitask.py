"""A mixture of classification tasks: every batch row carries its own ``task_ids`` and its
label index within its own task's label set.

Used by Multitask Prompt Tuning's source stage (Wang et al. 2023, arXiv:2303.02861) and by any
method with ``n_tasks > 1``. Each task is an ordinary :class:`TextClassificationDataModule`
(its own files, template, verbalizer and limits); its position in ``tasks`` is its row of the
prompt table. Training draws from the concatenated train splits, either in proportion to their
sizes (``mixing_temperature: 1``) or flattened towards uniform (``T > 1``: a task of size n is
drawn with weight n^(1/T), as in T5's temperature-scaled mixing). Validation runs one loader
per task; metrics are logged per task (``val/<task>/acc``) and as their mean (``val/acc``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from spt.backbones.archs import arch_ops
from spt.data.batches import Collator
from spt.data.loaders import EpochShuffle, make_loader
from spt.data.task import TaskInfo
from spt.errors import SptError


@dataclass(frozen=True)
class MultiTaskInfo:
    """The tasks of a mixture, in prompt-table order (``task_ids`` value = position)."""

    name: str
    tasks: tuple[TaskInfo, ...]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metrics every task reports (their mean is logged as ``val/<metric>``)."""
        return tuple(m for m in self.tasks[0].metrics if all(m in t.metrics for t in self.tasks))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


class _Tagged(Dataset):
    """Rows of one task's dataset, tagged with that task's index."""

    def __init__(self, data: Dataset, task: int):
        self.data, self.task = data, task

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.data[i], "task": self.task}


class MixCollator(Collator):
    """The classification collator, with each row's own task index in ``task_ids``."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        batch["task_ids"] = torch.tensor([r["task"] for r in rows], dtype=torch.long)
        return batch


class MultiTaskDataModule(L.LightningDataModule):
    """Several classification tasks trained as one mixture.

    Args:
        name: the mixture's name (logs, artifact).
        tokenizer / arch: as for :class:`TextClassificationDataModule`.
        tasks: task name -> a callable building that task's data module from ``tokenizer``,
            ``arch`` and ``task_index`` (the YAML gives partials of the tasks' own configs).
        mixing_temperature: 1 = draw rows in proportion to task sizes; larger flattens towards
            uniform over tasks.
        batch_size / eval_batch_size / num_workers: of the mixture's loaders.
        seed: seeds the temperature sampler (proportional mixing shuffles with the run seed).
    """

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        arch: str,
        tasks: Mapping[str, Callable[..., Any]],
        mixing_temperature: float = 1.0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if not tasks or len(tasks) < 2:
            raise SptError(
                f"data={name}: a mixture needs at least two tasks in data.tasks, "
                f"got {list(tasks or {})}"
            )
        if not isinstance(mixing_temperature, int | float) or mixing_temperature < 1:
            raise SptError(
                f"data.mixing_temperature={mixing_temperature!r} must be a number "
                ">= 1 (1 = proportional to task sizes)"
            )
        for key, value in (("batch_size", batch_size), ("num_workers", num_workers + 1)):
            if not isinstance(value, int) or value < 1:
                raise SptError(f"data.{key}={value!r} must be a positive integer")
        self.name = str(name)
        self.arch = arch
        self.children = []
        for i, (task_name, make) in enumerate(tasks.items()):
            child = make(tokenizer=tokenizer, arch=arch, task_index=i)
            if not hasattr(child.task, "label_words"):
                raise SptError(
                    f"data.tasks.{task_name} is not a classification task: a "
                    "mixture holds classification tasks only"
                )
            self.children.append(child)
        names = [c.name for c in self.children]
        if len(set(names)) != len(names):
            raise SptError(f"data.tasks has repeated task names {names}: give each a distinct name")
        self.mixing_temperature = float(mixing_temperature)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pad_id = self.children[0].pad_id

    # ------------------------------------------------------------------ public API
    @property
    def task(self) -> MultiTaskInfo:
        return MultiTaskInfo(self.name, tuple(c.task for c in self.children))

    @property
    def formats(self) -> tuple:
        """Each task's input format, in prompt-table order."""
        return tuple(c.formats[0] for c in self.children)

    @property
    def n_soft(self) -> int:
        return self.children[0].n_soft

    @n_soft.setter
    def n_soft(self, value: int) -> None:
        for c in self.children:
            c.n_soft = value

    def train_texts(self, limit: int = 5000) -> list[str]:
        per = max(1, limit // len(self.children))
        return [t for c in self.children for t in c.train_texts(per)]

    def num_rows(self, split: str) -> int:
        return sum(c.num_rows(split) for c in self.children)

    def setup(self, stage: str | None = None) -> None:
        for c in self.children:
            c.setup(stage)

    # ------------------------------------------------------------------ loaders
    def _collator(self) -> MixCollator:
        return MixCollator(self.pad_id, left=arch_ops(self.arch).left_padded)

    def train_dataloader(self) -> DataLoader:
        parts = [_Tagged(c._dataset("train"), i) for i, c in enumerate(self.children)]
        data = ConcatDataset(parts)
        sizes = torch.tensor([len(p) for p in parts], dtype=torch.double)
        if any(sizes == 0):
            raise SptError(f"data={self.name}: a task has no training rows")
        sampler = None
        if self.mixing_temperature != 1.0:  # else a plain shuffle is proportional already
            share = sizes ** (1 / self.mixing_temperature)  # per task, spread over its rows
            weights = torch.cat(
                [
                    torch.full((len(p),), float(s / n))
                    for p, s, n in zip(parts, share, sizes, strict=True)
                ]
            )
            sampler = EpochShuffle(len(data), self.seed, weights=weights)  # resumable
        return make_loader(
            data,
            batch_size=self.batch_size,
            shuffle=True,
            sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
        )

    def _eval_loaders(self) -> list[DataLoader]:
        return [
            make_loader(
                _Tagged(c._dataset("dev"), i),
                batch_size=self.eval_batch_size,
                shuffle=False,
                collate_fn=self._collator(),
                num_workers=self.num_workers,
            )
            for i, c in enumerate(self.children)
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()
