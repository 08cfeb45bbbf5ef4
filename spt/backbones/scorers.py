"""Class scorers, the component a classification method gets from its backbone's architecture
(``backbone.ops.classifier``): a trained head on the pooled output (encoder-only), or label
words under the LM head (decoder-only, encoder-decoder; rank classification as in Lester et al.
and the T5 papers). Both score ``[B, C]`` from prompted input embeddings ``[B, L, d]``, an
attention mask ``[B, L]`` and an optional key/value prefix; in a task mixture each task has its
own head or label words."""

from __future__ import annotations

import torch
from torch import nn

from spt.backbones.arch import LabelTokens


class HeadScorer:
    """Encoder-only: ``Dropout -> Linear(d, classes)`` per task on the pooled hidden state.
    ``head`` (one module, or a ``ModuleList`` per task in a mixture) is the method's to own:
    it trains and is saved as ``head.*``."""

    def __init__(
        self, arch, hidden_size: int, tasks, multitask: bool, head_dropout: float, pooling: str
    ):
        self.arch, self.pooling, self.multitask = arch, pooling, multitask
        heads = [
            nn.Sequential(nn.Dropout(head_dropout), nn.Linear(hidden_size, t.num_classes))
            for t in tasks
        ]
        self.head = nn.ModuleList(heads) if multitask else heads[0]

    def _head(self, t: int) -> nn.Module:
        return self.head[t] if self.multitask else self.head

    def task_scores(self, model, embeds, mask, prefix, t: int) -> torch.Tensor:
        return self._head(t)(self.arch.pooled(model, embeds, mask, self.pooling, prefix).float())

    def shared_pass(self, model, embeds, mask, prefix):
        """One backbone pass for every row of a mixture: the tasks differ only in the head."""
        hidden = self.arch.pooled(model, embeds, mask, self.pooling, prefix).float()
        return lambda rows, t: self.head[t](hidden[rows])


class LabelWordScorer:
    """Rank classification with each task's label words (``labels[t]``) under the LM head;
    ``label_score`` ``mean`` divides a class's summed log-probability by its token count."""

    head = None

    def __init__(self, arch, labels: list[LabelTokens], tasks, shared_single_tokens: bool):
        self.arch, self.labels, self.tasks = arch, labels, tasks
        self.shared_single_tokens = shared_single_tokens

    @classmethod
    def of_tasks(cls, arch, tokenizer, tasks, shared_single_tokens: bool):
        """Each task's label words tokenized as ``arch``'s LM produces them."""
        labels = [
            arch.label_tokens(tokenizer, list(t.label_words), t.label_after_space) for t in tasks
        ]
        return cls(arch, labels, tasks, shared_single_tokens)

    def task_scores(self, model, embeds, mask, prefix, t: int) -> torch.Tensor:
        labels = self.labels[t]
        scores = self.arch.label_scores(model, embeds, mask, labels, prefix)
        if self.tasks[t].label_score == "mean":  # per label token (data.label_score)
            scores = scores / labels.mask.sum(1).to(scores)
        return scores

    def shared_pass(self, model, embeds, mask, prefix):
        """In a mixture whose label words are one token each (on a model that reads them off
        one next-token distribution), one pass scores the union of every task's label ids;
        else None (each task needs its own pass)."""
        if not (self.shared_single_tokens and all(lt.single_token for lt in self.labels)):
            return None
        union = LabelTokens(
            torch.cat([lt.ids for lt in self.labels]), torch.cat([lt.mask for lt in self.labels])
        )
        scores = self.arch.label_scores(model, embeds, mask, union, prefix)
        ends = torch.tensor([t.num_classes for t in self.tasks]).cumsum(0).tolist()
        return lambda rows, t: scores[rows, ends[t] - self.tasks[t].num_classes : ends[t]]
