"""Key/value prompts in every attention layer: the pieces Prefix Tuning and P-Tuning v2 share,
as functions (methods never inherit from each other).

The prompt module is a :class:`~spt.modules.prefix_encoder.PrefixEncoder` the method owns as
``self.prefix``; :func:`kv_prompt` builds it with the backbone's layout
(``backbone.ops.kv_layout``: one attention stack, or T5's encoder, decoder and optional
cross-attention blocks, whose routes live in :mod:`spt.backbones`).
"""

from __future__ import annotations

import torch

from spt.core.artifact import check_base, load_artifact, load_module_tensors
from spt.core.steps import LOSSES
from spt.errors import SptError
from spt.modules.prefix_encoder import PrefixEncoder


def validate_kv(*, length, n_tasks, hidden, loss, init, init_file, reference: str) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise SptError(
            f"method.length={length!r}: needs at least one position per layer "
            f"(an integer >= 1; {reference})"
        )
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise SptError(f"method.n_tasks={n_tasks!r} must be an integer >= 1")
    if not isinstance(hidden, int) or hidden < 1:
        raise SptError(f"method.hidden={hidden!r} must be an integer >= 1")
    if loss not in LOSSES:
        raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if init not in ("random", "file") or (init == "file" and not init_file):
        raise SptError(
            f"method.init={init!r}: choose random, or file with "
            "method.init_file=/path/to/prompt.safetensors"
        )


def kv_prompt(
    base,
    n_tasks: int,
    length: int,
    reparam: bool,
    hidden: int,
    dropout: float,
    init_std: float,
    seed: int,
    cross_attention: bool | None = False,
    shared_reparam: bool = True,
) -> PrefixEncoder:
    """The method's prefix table for ``base``, seeded by ``seed``. ``shared_reparam=False``
    (T5 with ``reparam``): the encoder, decoder and cross-attention prefixes each get their own
    embedding and MLP, as in Li & Liang's seq2seq model; True: one MLP produces all of them."""
    layout = base.ops.kv_layout(base.config, cross_attention, shared_reparam)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        prefix = PrefixEncoder(
            n_tasks,
            length,
            reparam=reparam,
            hidden=hidden,
            dropout=dropout,
            init_std=init_std,
            blocks=layout.blocks,
            **layout.sizes,
        )
    prefix.layout = layout  # where the rows go (KVLayout: not a submodule)
    prefix.shared_reparam = bool(shared_reparam)
    return prefix


def kv_scores(method, batch: dict) -> torch.Tensor:
    """Class scores ``[B, C]``: the plain input embeddings plus the method's per-layer
    key/value prompts (``method.kv_prefix``)."""
    embeds = method.embed(batch)
    prefix = method.kv_prefix(batch, embeds.dtype)
    return method.class_scores(embeds, batch["attention_mask"], prefix, batch["task_ids"])


def kv_artifact_tensors(method) -> dict[str, torch.Tensor]:
    """The materialised prefixes (for inference), the encoder's weights (to resume) and the
    head."""
    prefix = method.prefix
    out = {"prefix": prefix.table().detach().float()}
    out.update({f"prefix_encoder.{n}": p.detach().float() for n, p in prefix.named_parameters()})
    return {**out, **method.objective.head_tensors()}


def kv_artifact_meta(method) -> dict:
    prefix = method.prefix
    return {
        "method": method.method_name,
        "length": prefix.length,
        "n_tasks": prefix.n_tasks,
        "task_names": method.task_names,
        "reparam": prefix.reparam,
        "cross_attention": prefix.layout.cross_attention,
        "shared_reparam": prefix.shared_reparam,
        **prefix.layout.sizes,
        **method.objective.meta(),
        "base": method.base.identity(),
        "trainable_parameters": method.parameter_counts()["params/trainable"],
        "prefix_parameters": prefix.table().numel(),
    }


def load_kv_artifact(method, path) -> None:
    """Resume a key/value method from its own artifact (same base model and settings)."""
    tensors, meta = load_artifact(path)
    check_base(meta, method.base.identity(), path)
    if meta.get("method") != method.method_name:
        raise SptError(
            f"{path} was saved by method={meta.get('method')}, not method={method.method_name}"
        )
    load_module_tensors(
        method.prefix,
        tensors,
        "prefix_encoder.",
        path,
        f"method.reparam (saved: {meta.get('reparam')}), shared_reparam "
        f"(saved: {meta.get('shared_reparam')}), hidden, length, n_tasks",
    )
    method.objective.load_head_tensors(tensors, path)
