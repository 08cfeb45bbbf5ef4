"""A low-rank update of the input tokens' embeddings, per task (DePT's ``A @ B``)."""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRankEmbeddingUpdate(nn.Module):
    """``scale * A[t] @ B[t]``: one ``[positions, dim]`` update per task ``t``, of rank
    ``rank``, added to the embedding of the k-th input token of a row (k < ``positions``).

    Parameters (fp32): ``a [n_tasks, positions, rank]``, Kaiming-uniform as DePT's
    ``lora_embedding_A`` (U(-1/sqrt(rank), 1/sqrt(rank))), and ``b [n_tasks, rank, dim]``,
    zeros as its ``lora_embedding_B`` (ZhengxiangShi/DePT, peft/tuners/prompt_tuning_lora.py,
    PromptEmbeddingLoRA), so the update starts at zero. ``forward(task_ids [B], index [B, T],
    valid [B, T]) -> [B, T, dim]``: the update of each token, where ``index`` is the token's
    input position and ``valid`` marks the tokens that get one (zero elsewhere and past
    ``positions``).
    """

    def __init__(self, n_tasks: int, positions: int, rank: int, dim: int, scale: float):
        super().__init__()
        bound = 1.0 / math.sqrt(rank)  # kaiming_uniform_(a=sqrt(5)) with fan_in = rank
        self.a = nn.Parameter(torch.empty(n_tasks, positions, rank).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(n_tasks, rank, dim))
        self.scale = float(scale)

    @property
    def n_tasks(self) -> int:
        return self.a.shape[0]

    @property
    def positions(self) -> int:
        return self.a.shape[1]

    @property
    def rank(self) -> int:
        return self.a.shape[2]

    def table(self) -> torch.Tensor:
        """Every task's full update, ``[n_tasks, positions, dim]``."""
        return self.scale * torch.bmm(self.a, self.b)

    def forward(
        self, task_ids: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        keep = valid & (index < self.positions) & (index >= 0)
        rows = self.a[task_ids].gather(  # each token's row of A: [B, T, rank]
            1, index.clamp(0, self.positions - 1).unsqueeze(-1).expand(-1, -1, self.rank)
        )
        return self.scale * torch.bmm(rows, self.b[task_ids]) * keep.unsqueeze(-1)

    def extra_repr(self) -> str:
        n, s, r = self.a.shape
        return f"n_tasks={n}, positions={s}, rank={r}, dim={self.b.shape[-1]}, scale={self.scale:g}"
