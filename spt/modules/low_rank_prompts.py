"""Task prompts as a shared prompt times a low-rank task matrix (Multitask Prompt Tuning,
Wang et al. 2023, arXiv:2303.02861)."""

from __future__ import annotations

import torch
from torch import nn


class LowRankTaskPrompts(nn.Module):
    """``P_k = P* ∘ (U_k V_k^T / r)`` for task k.

    - ``shared`` ``P*``: ``[length, d]``;
    - ``u``: ``[n_tasks, length, r]``, ``v``: ``[n_tasks, r, d]``, both ~ N(1, 0.02), so each
      task starts at ``P_k ≈ P*`` (the ``1/r`` keeps the product near 1 for any rank).

    ``forward(task_ids [B]) -> [B, length, d]``; ``table() -> [n_tasks, length, d]``.
    """

    def __init__(
        self,
        n_tasks: int,
        length: int,
        d: int,
        rank: int = 1,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.rank = rank
        self.shared = nn.Parameter(torch.zeros(length, d))
        self.u = nn.Parameter(1 + 0.02 * torch.randn(n_tasks, length, rank, generator=generator))
        self.v = nn.Parameter(1 + 0.02 * torch.randn(n_tasks, rank, d, generator=generator))

    @property
    def length(self) -> int:
        return self.shared.shape[0]

    @property
    def n_tasks(self) -> int:
        return self.u.shape[0]

    def task_matrices(self) -> torch.Tensor:
        """``W_k = U_k V_k^T / r``: ``[n_tasks, length, d]``."""
        return torch.bmm(self.u, self.v) / self.rank

    def table(self) -> torch.Tensor:
        return self.shared.unsqueeze(0) * self.task_matrices()

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        return self.shared.unsqueeze(0) * (
            torch.bmm(self.u[task_ids], self.v[task_ids]) / self.rank
        )
