"""Datasets of tokenized rows and the collators that pad them into batches: what the data
modules' loaders and :meth:`spt.data.inputs.InputFormat.batch` share (the batch contracts are
in :mod:`spt.data.text_classification` and :mod:`spt.data.text_to_text`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from spt.data.template import Encoded, TemplateEncoder, mark_soft

IGNORE = -100  # label value the loss skips


def pad_rows(rows: list[dict[str, Any]], pad_id: int, left: bool):
    """``input_ids``, ``attention_mask``, ``soft_mask`` ``[B, L]`` of rows padded to the
    longest (on the left or right), and each row's offset."""
    b = len(rows)
    length = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    soft = torch.zeros((b, length), dtype=torch.bool)
    offsets = []
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        off = length - n if left else 0
        input_ids[i, off : off + n] = torch.tensor(r["input_ids"], dtype=torch.long)
        attention[i, off : off + n] = 1
        mark_soft(soft[i], off, r["soft_start"], r["soft_counts"])
        offsets.append(off)
    return input_ids, attention, soft, offsets


class EncodedDataset(Dataset):
    """One tokenized split: ids per row, where its soft slots start, and its class index."""

    def __init__(self, encoded: Encoded, labels: Sequence[int]):
        self.ids = encoded.ids
        self.soft_start = encoded.soft_start
        self.soft_counts = encoded.soft_counts
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input_ids": self.ids[i],
            "soft_start": self.soft_start[i],
            "soft_counts": self.soft_counts,
            "label": self.labels[i],
        }


class Collator:
    """Pads a list of rows to the longest one (left or right) and builds the batch dict."""

    def __init__(self, pad_id: int, left: bool, task_index: int = 0):
        self.pad_id = pad_id
        self.left = left
        self.task_index = task_index

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b = len(rows)
        input_ids, attention, soft, _ = pad_rows(rows, self.pad_id, self.left)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "soft_mask": soft,
            "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
            "task_ids": torch.full((b,), self.task_index, dtype=torch.long),
        }


class TextToTextDataset(Dataset):
    """One tokenized split. Train rows carry labels; eval rows carry ``ref_index``."""

    def __init__(
        self,
        ids: list[list[int]],
        soft_start: list[tuple[int, ...]],
        soft_counts: tuple[int, ...],
        labels: list[list[int]] | None,
    ):
        self.ids = ids
        self.soft_start = soft_start
        self.soft_counts = soft_counts
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = {
            "input_ids": self.ids[i],
            "soft_start": self.soft_start[i],
            "soft_counts": self.soft_counts,
        }
        if self.labels is None:
            row["ref_index"] = i
        else:
            row["labels"] = self.labels[i]
        return row


class TextToTextCollator:
    """Pads rows to the longest one and builds the batch dict (see the module docstring).

    ``labels_aligned``: labels have the length of ``input_ids`` and are padded on the same side
    (decoder); otherwise they are a separate right-padded target sequence (encoder-decoder).
    """

    def __init__(self, pad_id: int, left: bool, labels_aligned: bool, task_index: int = 0):
        self.pad_id = pad_id
        self.left = left
        self.labels_aligned = labels_aligned
        self.task_index = task_index

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b = len(rows)
        input_ids, attention, soft, offsets = pad_rows(rows, self.pad_id, self.left)
        length = input_ids.shape[1]
        train = "labels" in rows[0]
        if train:
            width = length if self.labels_aligned else max(len(r["labels"]) for r in rows)
            labels = torch.full((b, width), IGNORE, dtype=torch.long)
            for i, (r, off) in enumerate(zip(rows, offsets, strict=True)):
                lab = torch.tensor(r["labels"], dtype=torch.long)
                if self.labels_aligned:
                    labels[i, off : off + len(r["input_ids"])] = lab
                else:
                    labels[i, : len(lab)] = lab
        batch = {"input_ids": input_ids, "attention_mask": attention, "soft_mask": soft}
        if train:
            batch["labels"] = labels
        else:
            batch["ref_index"] = torch.tensor([r["ref_index"] for r in rows], dtype=torch.long)
        batch["task_ids"] = torch.full((b,), self.task_index, dtype=torch.long)
        return batch


def encode_rows(
    encoder: TemplateEncoder,
    ops,
    sources: list[str],
    targets: list[str] | None,
    n_soft: int,
    max_source_length: int,
    max_target_length: int,
    field: str,
) -> tuple[TextToTextDataset, int, int]:
    """Sources (and, for training, one target each) as a dataset; also how many sources and
    targets were cut. A target is cut so that it + eos has at most ``max_target_length``
    tokens; a cut target gets no eos (the model is not taught to stop mid-sentence)."""
    enc = encoder.encode({field: sources}, n_soft, max_source_length)
    if targets is None:
        return TextToTextDataset(enc.ids, enc.soft_start, enc.soft_counts, None), enc.n_truncated, 0
    tok, eos = encoder.tokenizer, encoder.tokenizer.eos_token_id
    if ops.target_follows_prompt:  # the text follows the template's last piece
        ids = [encoder.label_word_ids(r) for r in targets]
    else:
        ids = [
            list(x)
            for x in tok([r.strip() for r in targets], add_special_tokens=False)["input_ids"]
        ]
    cut_ids, n_cut = [], 0
    for x in ids:
        if len(x) + 1 > max_target_length:
            cut_ids.append(x[:max_target_length])
            n_cut += 1
        else:
            cut_ids.append(x + [eos])
    if ops.target_follows_prompt:  # one sequence, labels aligned with it
        labels = [[IGNORE] * len(p) + t for p, t in zip(enc.ids, cut_ids, strict=True)]
        rows = [p + t for p, t in zip(enc.ids, cut_ids, strict=True)]
    else:
        labels, rows = cut_ids, enc.ids
    return TextToTextDataset(rows, enc.soft_start, enc.soft_counts, labels), enc.n_truncated, n_cut
