"""Per-layer key/value prefixes (Li & Liang 2021, arXiv:2101.00190), with a task axis."""

from __future__ import annotations

import torch
from torch import nn


class PrefixEncoder(nn.Module):
    """Key/value prefixes for every attention layer of a frozen model.

    Sizes come from the backbone's config: ``n_layers``, ``n_kv_heads`` (the KV heads of
    grouped-query attention, not the query heads) and ``head_dim``.

    - ``reparam=False``: a direct parameter ``[n_tasks, length, n_layers * 2 * n_kv_heads *
      head_dim]``.
    - ``reparam=True``: an embedding ``[n_tasks, length, d_model]`` through
      ``Linear(d_model, hidden) -> Tanh -> Linear(hidden, n_layers * 2 * kv_dim)`` (the paper's
      MLP). The MLP runs once per call on the whole table, not once per batch row.
      ``blocks`` (layer counts adding up to ``n_layers``) gives consecutive layer blocks their
      own embedding and MLP.

    ``forward(task_ids [B]) -> [B, n_layers, 2, n_kv_heads, length, head_dim]``; index 0 of
    the third axis is keys, 1 values.
    """

    def __init__(
        self,
        n_tasks: int,
        length: int,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        d_model: int,
        reparam: bool = True,
        hidden: int = 512,
        dropout: float = 0.0,
        init_std: float = 0.02,
        blocks: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.shape = (n_layers, 2, n_kv_heads, head_dim)
        out = n_layers * 2 * n_kv_heads * head_dim
        self.reparam = reparam
        self.dropout = nn.Dropout(dropout)
        if reparam and blocks is not None and len(blocks) > 1:
            # Consecutive layer blocks, each with its own embedding and MLP: Li & Liang's
            # seq2seq model reparameterises the encoder, decoder and cross-attention prefixes
            # separately (PrefixTuning: wte/control_trans, wte_enc/control_trans_enc,
            # wte2/control_trans2).
            if sum(blocks) != n_layers:
                raise ValueError(f"blocks {blocks} do not add up to {n_layers} layers")
            self.blocks = nn.ModuleList(
                PrefixEncoder(
                    n_tasks,
                    length,
                    b,
                    n_kv_heads,
                    head_dim,
                    d_model,
                    hidden=hidden,
                    init_std=init_std,
                )
                for b in blocks
            )
        elif reparam:
            self.embedding = nn.Parameter(torch.randn(n_tasks, length, d_model) * init_std)
            self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, out))
        else:
            self.weight = nn.Parameter(torch.randn(n_tasks, length, out) * init_std)

    def _first(self) -> torch.Tensor:
        if hasattr(self, "blocks"):
            return self.blocks[0].embedding
        return self.embedding if self.reparam else self.weight

    @property
    def length(self) -> int:
        return self._first().shape[1]

    @property
    def n_tasks(self) -> int:
        return self._first().shape[0]

    def table(self) -> torch.Tensor:
        """All tasks' prefixes ``[n_tasks, length, n_layers * 2 * kv_dim]`` (MLP applied)."""
        if hasattr(self, "blocks"):  # layer-major, so the blocks' layers simply follow
            return torch.cat([b.table() for b in self.blocks], dim=-1)
        return self.mlp(self.embedding) if self.reparam else self.weight

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        # Gather, then drop out: one mask per example, as the references apply dropout to the
        # batch-expanded prefix (P-tuning-v2 model/prefix_encoder.py + get_prompt; Li & Liang
        # get_prompt_p5). Dropping out the task table first gave every row of a task one mask.
        flat = self.dropout(self.table().index_select(0, task_ids))  # [B, P, layers*2*kv]
        b, p, _ = flat.shape
        layers, two, heads, dim = self.shape
        return flat.view(b, p, layers, two, heads, dim).permute(0, 2, 3, 4, 1, 5)
