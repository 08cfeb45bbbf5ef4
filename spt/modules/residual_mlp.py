"""Residual Prompt Tuning's reparameterisation of a prompt through a shallow MLP."""

from __future__ import annotations

from torch import nn


class ResidualReparam(nn.Module):
    """``P' = P + LN(W_up relu(W_down P))``, one MLP shared by every prompt vector (and task).

    Razdaibiedina et al. 2023, arXiv:2305.03937; the authors' ``ResMLP``
    (arazd/ResidualPrompts, prompt_tuner2.py): Linear(d, b), ReLU, Linear(b, d), dropout when
    ``dropout > 0``, LayerNorm(d), then the skip connection; PyTorch's default inits (so
    ``P' != P`` at step 0). ``forward(prompts [..., d]) -> [..., d]``; fp32 like the table.
    """

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.0):
        super().__init__()
        # Dropout always has its slot (a no-op at 0), so the LayerNorm's parameter names do not
        # depend on the dropout setting.
        self.mlp = nn.Sequential(
            nn.Linear(dim, bottleneck),
            nn.ReLU(),
            nn.Linear(bottleneck, dim),
            nn.Dropout(dropout),
            nn.LayerNorm(dim),
        )

    def forward(self, prompts):
        return prompts + self.mlp(prompts)
