"""Prompt initialisations of Lester et al. 2021 (arXiv:2104.08691), Section 3.

Each returns a ``[length, dim]`` fp32 tensor:
- :func:`uniform`: U[-0.5, 0.5] ("random uniform");
- :func:`sampled_vocab`: embeddings of tokens drawn from the 5,000 most common tokens;
- :func:`class_labels`: embeddings of the class label words (multi-token words averaged),
  remaining slots drawn as in ``sampled_vocab``;
- :func:`from_text`: embeddings of a given text's tokens (cycled to fill the length).
:func:`fill_table` applies one of them (or a saved artifact's prompt) to a method's prompt
table, the way Prompt Tuning and DePT start; :func:`check_settings` checks their settings.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import torch

from spt.errors import SptError, is_count

log = logging.getLogger(__name__)

INITS = ("uniform", "sampled_vocab", "class_labels", "text", "file")
_RESERVED = re.compile(r"^\[unused\d+\]$|^<extra_id_\d+>$|^<\|reserved_special_token_\d+\|>$")


def uniform(length: int, dim: int, generator: torch.Generator, scale: float = 0.5) -> torch.Tensor:
    return (torch.rand(length, dim, generator=generator) * 2 - 1) * scale


def _ordinary_ids(tokenizer) -> list[int]:
    """All token ids except special and reserved/unused ones, in id order."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    return sorted(i for tok, i in vocab.items() if i not in special and not _RESERVED.match(tok))


def frequent_token_ids(
    tokenizer,
    k: int = 5000,
    texts: list[str] | None = None,
    sorted_by_frequency: bool = True,
    max_id: int | None = None,
) -> torch.Tensor:
    """The ``k`` most common ordinary tokens.

    SentencePiece (T5, as in the paper) and byte-level BPE vocabularies are sorted by
    frequency, so the first ``k`` ordinary ids are the common ones. WordPiece (BERT) is not:
    there the tokens are counted over ``texts`` (the training inputs). Ids at or above
    ``max_id`` (rows the embedding matrix does not have) are dropped.
    """
    ordinary = _ordinary_ids(tokenizer)
    if max_id is not None:
        ordinary = [i for i in ordinary if i < max_id]
    if not sorted_by_frequency:
        if texts:
            allowed = set(ordinary)
            counts = Counter()
            for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
                counts.update(i for i in ids if i in allowed)
            ranked = [i for i, _ in counts.most_common(k)]
            if len(ranked) < k:  # too little text: top up in id order
                seen = set(ranked)
                ranked += [i for i in ordinary if i not in seen][: k - len(ranked)]
            return torch.tensor(ranked, dtype=torch.long)
        log.warning(
            "vocabulary is not sorted by frequency and no texts were given to count "
            "tokens: sampling from the first %d ordinary ids instead",
            k,
        )
    return torch.tensor(ordinary[:k], dtype=torch.long)


def sampled_vocab(
    embedding: torch.Tensor, length: int, candidates: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Embeddings of ``length`` tokens drawn from ``candidates`` (without replacement when
    there are enough)."""
    replace = len(candidates) < length
    idx = (
        torch.randint(len(candidates), (length,), generator=generator)
        if replace
        else torch.randperm(len(candidates), generator=generator)[:length]
    )
    return embedding[candidates[idx]].detach().float().clone()


def class_labels(
    embedding: torch.Tensor,
    length: int,
    label_token_ids: list[list[int]],
    candidates: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """One slot per class (its label's token embeddings averaged), the rest sampled."""
    if length < len(label_token_ids):
        log.warning(
            "prompt length %d < %d classes: only the first %d labels initialise it",
            length,
            len(label_token_ids),
            length,
        )
    labels = [embedding[torch.tensor(ids)].detach().float().mean(0) for ids in label_token_ids]
    out = sampled_vocab(embedding, length, candidates, generator)
    for i, vec in enumerate(labels[:length]):
        out[i] = vec
    return out


def from_text(embedding: torch.Tensor, length: int, text_ids: list[int]) -> torch.Tensor:
    """The text's token embeddings, cycled to fill ``length`` (truncated if longer)."""
    if not text_ids:
        raise SptError("method.init=text needs a non-empty method.init_text")
    if len(text_ids) > length:
        log.warning(
            "init text has %d tokens, prompt length is %d: truncating", len(text_ids), length
        )
    ids = torch.tensor([text_ids[i % len(text_ids)] for i in range(length)])
    return embedding[ids].detach().float().clone()


def initial_prompt(
    init: str,
    base,
    length: int,
    generator: torch.Generator,
    *,
    init_text: str | None = None,
    top_k: int = 5000,
    texts: list[str] | None = None,
    label_words: list[list[list[int]]] | None = None,
) -> torch.Tensor:
    """A prompt ``[rows, length, d]`` initialised from ``base`` (a :class:`Backbone`) by
    ``init`` (``uniform`` | ``text`` | ``sampled_vocab`` | ``class_labels``): one row, or for
    ``class_labels`` one row per task of ``label_words`` (per task, per class, token ids)."""
    emb = base.input_embeddings.weight.detach().float()
    tok = base.tokenizer
    if init == "uniform":
        return uniform(length, emb.shape[1], generator)[None]
    if init == "text":
        return from_text(emb, length, tok(init_text, add_special_tokens=False)["input_ids"])[None]
    pool = frequent_token_ids(
        tok, top_k, texts, base.vocab_sorted_by_frequency, max_id=emb.shape[0]
    )
    if init == "sampled_vocab":
        return sampled_vocab(emb, length, pool, generator)[None]
    if init == "class_labels" and label_words:
        return torch.stack(
            [class_labels(emb, length, words, pool, generator) for words in label_words]
        )
    raise SptError(
        f"init={init!r} cannot build a prompt here: choose one of "
        f"{', '.join(INITS)} (class_labels needs label words)"
    )


def fill_table(
    weight: torch.Tensor,
    base,
    objective,
    init: str,
    generator: torch.Generator,
    *,
    init_text: str | None = None,
    top_k: int = 5000,
    texts: list[str] | None = None,
) -> None:
    """Initialise a prompt table ``weight [n_tasks, length, d]`` in place by ``init`` (not
    ``file``): ``class_labels`` gives each task's row its own label words
    (``objective.tasks``), the others one row for all."""
    if init == "class_labels" and objective.generative:
        raise SptError(
            f"method.init=class_labels needs label words; data={objective.task.name} "
            "is a generation task: set method.init=sampled_vocab (or text, "
            "uniform, file)"
        )
    words = None
    if init == "class_labels":  # each task's row from its own label words
        tok = base.tokenizer
        words = []
        for info in objective.tasks:
            ids = base.ops.label_tokens(tok, list(info.label_words), info.label_after_space).lists()
            words.append([[i for i in w if i != tok.eos_token_id] or w for w in ids])
    vec = initial_prompt(
        init,
        base,
        weight.shape[1],
        generator,
        init_text=init_text,
        top_k=top_k,
        texts=texts,
        label_words=words,
    )
    with torch.no_grad():
        weight.copy_(vec.expand_as(weight))


def load_table(weight: torch.Tensor, tensors: dict, path) -> None:
    """Copy an artifact's ``prompt [n_tasks, length, d]`` into ``weight``, naming the
    settings to change when the shapes differ."""
    if "prompt" not in tensors:
        raise SptError(f"{path} holds no 'prompt' tensor (it has {sorted(tensors)})")
    want, got = tuple(weight.shape), tuple(tensors["prompt"].shape)
    if got != want:
        raise SptError(
            f"{path} holds a prompt of shape {list(got)} [n_tasks, length, dim], "
            f"this run expects {list(want)}: set method.length={got[1]} and "
            f"method.n_tasks={got[0]}"
        )
    with torch.no_grad():
        weight.copy_(tensors["prompt"])


def check_settings(*, length, init, loss, n_tasks, init_text, init_file, vocab_top_k) -> None:
    """A prompt table's settings (Prompt Tuning's, DePT's), each refused by its key."""
    from spt.core.steps import LOSSES

    if not is_count(length):
        raise SptError(
            f"method.length={length!r}: the prompt needs at least one vector "
            "(an integer >= 1; Lester et al. use 1-150, 20 by default)"
        )
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise SptError(f"method.n_tasks={n_tasks!r} must be an integer >= 1")
    if init not in INITS:
        raise SptError(f"method.init={init!r}: choose one of {', '.join(INITS)}")
    if loss not in LOSSES:
        raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if init == "text" and not init_text:
        raise SptError("method.init=text needs method.init_text='...'")
    if init == "file" and not init_file:
        raise SptError("method.init=file needs method.init_file=/path/to/prompt.safetensors")
    if not isinstance(vocab_top_k, int) or vocab_top_k < 1:
        raise SptError(f"method.vocab_top_k={vocab_top_k!r} must be an integer >= 1")
