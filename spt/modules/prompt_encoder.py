"""The P-tuning prompt encoder (Liu et al. 2021, "GPT Understands, Too", arXiv:2103.10385)."""

from __future__ import annotations

import torch
from torch import nn


class PromptEncoder(nn.Module):
    """Pseudo-token embeddings through a bi-LSTM + MLP (``kind="lstm"``) or an MLP only.

    Parameters: ``embedding [n_tasks, length, dim]`` and the encoder. ``table()`` runs the
    encoder once over every task's sequence and returns ``[n_tasks, length, dim]``;
    ``forward(task_ids [B]) -> [B, length, dim]`` gathers rows of that table, so the LSTM runs
    once per step, not once per batch row.
    """

    def __init__(
        self,
        n_tasks: int,
        length: int,
        dim: int,
        kind: str = "lstm",
        hidden: int | None = None,
        dropout: float = 0.0,
        init_std: float = 1.0,
    ):
        super().__init__()
        hidden = hidden or dim
        self.kind = kind
        self.embedding = nn.Parameter(torch.randn(n_tasks, length, dim) * init_std)
        if kind == "lstm":
            self.lstm = nn.LSTM(
                dim,
                hidden // 2,
                num_layers=2,
                bidirectional=True,
                batch_first=True,
                dropout=dropout,
            )
            self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        elif kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        else:
            raise ValueError(f"kind must be lstm or mlp, got {kind!r}")

    @property
    def length(self) -> int:
        return self.embedding.shape[1]

    @property
    def n_tasks(self) -> int:
        return self.embedding.shape[0]

    def table(self) -> torch.Tensor:
        x = self.embedding
        if self.kind == "lstm":
            x = self.lstm(x)[0]
        return self.mlp(x)

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        # The LSTM (and its inter-layer dropout) runs once per task, shared by the task's rows:
        # the authors' encoder runs once per step on the one pseudo-token sequence and every
        # row gets its output (THUDM/P-tuning PromptEncoder.forward, embedding(seq).unsqueeze(0)).
        return self.table().index_select(0, task_ids)
