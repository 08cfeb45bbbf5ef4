"""DataLoaders for every data module: torchdata's ``StatefulDataLoader`` (a drop-in
``torch.utils.data.DataLoader``) whose position, sampler and RNG state Lightning saves in each
checkpoint and restores on resume, so a run killed mid-epoch continues with the very next batch
(``resume=last``) rather than replaying or skipping part of the epoch.

Two choices make the resumed order exact:

- each epoch's order is a pure function of (run seed, epoch), and the sampler's iterator saves
  which epoch it is in and how far it got (:class:`EpochShuffle`). A generator-based shuffle is
  advanced again when the resumed fit re-creates its iterators, and Lightning's ``set_epoch``
  passes the wrong epoch when the checkpoint was taken on an epoch's last batch, so either would
  shuffle the epochs after a resume differently. (Under DDP the sampler is left to Lightning,
  which injects ``DistributedSampler``, one shard per process.)
- nothing draws from torch's global RNG, which the checkpoint restores for dropout: the loader
  has its own generator for its worker seeds.

Given the rows' token ``lengths``, evaluation reads rows longest first (padding then costs almost
nothing; metrics do not depend on the order) and each training epoch is a length-grouped
permutation: shuffled, cut into megabatches of 50 batches, each sorted by
length and cut into batches, the batches then shuffled (the scheme of transformers'
``LengthGroupedSampler``). Random SST-2 batches of 32 pad to 1.7x their real tokens; grouped
ones to 1.02x.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

log = logging.getLogger(__name__)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    collate_fn: Callable,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    lengths: list[int] | None = None,
) -> StatefulDataLoader:
    """A stateful loader over ``dataset``; ``sampler`` (e.g. a weighted mixture) replaces the
    shuffle. With ``lengths`` (tokens per row), training batches are grouped by length and
    evaluation (``shuffle=False``) reads the rows longest first."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if shuffle and lengths is not None and distributed:
        log.warning(
            "data.group_by_length does not group training batches under DDP "
            "(Lightning shards the rows with its DistributedSampler); evaluation still "
            "reads rows longest first"
        )
    if shuffle and sampler is None and not distributed:
        sampler = EpochShuffle(len(dataset), run_seed(), lengths=lengths, batch_size=batch_size)
    elif not shuffle and sampler is None and lengths is not None:
        sampler = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(run_seed()),
    )


def run_seed() -> int:
    """The run's seed (``lightning.seed_everything`` exports it), else torch's initial seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed())) % 2**63


class EpochShuffle(Sampler[int]):
    """A new permutation of ``range(n)`` each epoch, drawn from ``(seed, epoch)`` alone; the
    epoch counts the iterations started. Its iterators save ``{epoch, yielded}``, so a
    ``StatefulDataLoader`` restored mid-epoch continues that epoch and the next ones in order.
    With ``weights [n]`` an epoch is ``n`` draws with replacement in proportion to them (a
    task mixture's temperature sampling) instead of a permutation. With ``lengths [n]`` the
    permutation is grouped by length into batches of ``batch_size`` (see the module notes)."""

    megabatch = 50  # batches per length-sorted group

    def __init__(
        self,
        n: int,
        seed: int,
        weights: torch.Tensor | None = None,
        lengths: list[int] | None = None,
        batch_size: int = 1,
    ):
        self.n, self.seed, self.epoch = n, seed, 0
        self.weights = weights
        self.lengths, self.batch_size = lengths, batch_size

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return _EpochShuffleIterator(self)

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed((self.seed * 100_003 + epoch) % 2**63)
        if self.weights is not None:
            return torch.multinomial(
                self.weights, self.n, replacement=True, generator=generator
            ).tolist()
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.lengths is None:
            return order
        size = self.batch_size * self.megabatch
        batches = []
        for start in range(0, self.n, size):
            group = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [
                group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)
            ]
        # the loader cuts this order every batch_size rows: a short batch can only come last
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else []
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [i for b in shuffled for i in batches[b]] + short


class _EpochShuffleIterator(Iterator[int]):
    def __init__(self, sampler: EpochShuffle):
        self.sampler = sampler
        self._start(sampler.epoch, 0)

    def _start(self, epoch: int, yielded: int) -> None:
        self.epoch, self.yielded = epoch, yielded
        self.sampler.epoch = epoch + 1  # the next iteration is the next epoch
        self.order = self.sampler.permutation(epoch)

    def __next__(self) -> int:
        if self.yielded >= len(self.order):
            raise StopIteration
        self.yielded += 1
        return self.order[self.yielded - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict) -> None:
        self._start(int(state["epoch"]), int(state["yielded"]))


class SplitLoaders:
    """Mix into a data module that defines ``_loader(split, batch_size, shuffle)``, plus
    ``batch_size``, ``eval_batch_size`` and ``test_split``: shuffled train batches, and the dev
    and test splits in order."""

    test_split = "dev"  # the benchmarks' test labels are not public: test reads dev

    def train_dataloader(self):
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader("dev", self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_split, self.eval_batch_size, shuffle=False)
