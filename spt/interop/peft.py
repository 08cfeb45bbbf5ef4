"""Hugging Face PEFT adapters <-> spt prompt artifacts, both directions.

``python -m spt.interop.peft export RUN_OR_ARTIFACT OUT_DIR [--task 0] [--base-model NAME]``
writes a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
``PeftModel.from_pretrained(base_model, OUT_DIR)`` loads;
``python -m spt.interop.peft import ADAPTER_DIR OUT.safetensors --model tiny-llama [--set k=v]``
writes an spt artifact that ``method.init=file method.init_file=OUT.safetensors`` loads;
``python -m spt.interop.peft push OUT_DIR user/name`` uploads an exported folder to the Hub.
An exported folder also holds a model card (README.md) and the spt artifact itself, so one
folder (or Hub repository) serves ``PeftModel.from_pretrained`` and ``spt.load``.

PEFT's on-disk format (read from PEFT 0.21's source): ``adapter_config.json`` holds the
config (``peft_type``, ``task_type``, ``num_virtual_tokens``, ``token_dim``, ``num_layers``,
``num_attention_heads``, ``num_transformer_submodules``, ...); ``adapter_model.safetensors``
holds one tensor, ``prompt_embeddings``, for every prompt-learning type but adaption prompts
(whose per-layer tensors are described below):

- prompt tuning: ``[num_virtual_tokens * num_transformer_submodules, token_dim]``; PEFT
  concatenates the first ``num_virtual_tokens`` rows in front of the input embeddings (the
  encoder's, on seq2seq models: the other rows are never read);
- P-tuning: the same shape, the *materialised* output of PEFT's prompt encoder (the encoder's
  weights are not saved; a saved P-tuning adapter is for inference only);
- prefix tuning: ``[num_virtual_tokens, num_layers * 2 * token_dim]``, the materialised
  per-layer keys/values (also with ``prefix_projection``: the MLP is not saved), viewed per
  virtual token as ``[layers, key|value, heads, head_dim]``. For grouped-query attention PEFT
  sets ``num_attention_heads = num_key_value_heads`` and ``token_dim = kv_heads * head_dim``
  (the export writes both explicitly, so PEFT versions that derive them differently, or not at
  all, still read the right sizes).
  That is exactly the layout of spt's ``prefix`` table ``[n_tasks, P, layers * 2 * kv_dim]``
  (:class:`spt.modules.prefix_encoder.PrefixEncoder`), so a row moves over unchanged.

What converts, and what does not (and why):

- spt ``prompt`` / ``ptuning`` / ``mpt`` -> PEFT prompt tuning (``CAUSAL_LM`` for decoder-only,
  ``SEQ_2_SEQ_LM`` with ``num_transformer_submodules=1`` for T5, ``FEATURE_EXTRACTION`` for
  encoder-only models): one row of the task table, materialised. P-tuning's LSTM/MLP encoder and
  MPT's shared prompt and task factors are not exported (PEFT's P-tuning encoder is another
  network, and its saved adapters keep only the materialised prompt too); neither is an
  encoder-only model's classification head (PEFT's prompt tuning has no place for it).
- spt ``prefix`` / ``ptuning_v2`` on decoder-only models -> PEFT prefix tuning
  (``prefix_projection=False``, the materialised prefix; the reparameterisation MLP stays in
  spt). Not on T5: PEFT puts one prefix into both decoder self- and cross-attention and none into
  the encoder, while spt's T5 prefix has separate encoder, decoder and cross-attention blocks.
  Not on encoder-only models: the export there has not been compared against PEFT's
  ``FEATURE_EXTRACTION`` prefix path, and the classification head has no place in the adapter.
- spt ``adaption_prompt`` (Llama and Mistral) <-> PEFT adaption prompts (``ADAPTION_PROMPT``,
  ``target_modules="self_attn"``): the same computation (a raw scalar gate per layer, the top
  ``adapter_layers`` layers), so one task row moves over bit for bit, both ways; PEFT saves
  ``...layers.{i}.self_attn.adaption_prompt [1, len, hidden]`` and ``.adaption_gate [1]`` per
  adapted layer i.
- PEFT prompt tuning and P-tuning -> spt ``method=prompt``; PEFT prefix tuning (with or without
  projection) on decoder-only models -> spt ``method=prefix method.reparam=false``. Not onto
  encoder-only backbones: spt's prompt tuning there needs its classification head, which a PEFT
  prompt adapter does not have. LoRA and every other PEFT type change or add model weights,
  which spt keeps frozen: refused.

Placement: PEFT puts the virtual tokens in front of *every* input token, the tokenizer's leading
special token (BOS / CLS) included, and drops ``position_ids`` for prompt tuning; spt's
templates put the soft slots after that token. With the soft slots first (T5 has no leading
token; the tests build such batches for Llama and BERT) and unpadded decoder inputs, PEFT and
spt compute the same logits; otherwise a prompt moved between them sees a slightly different
context. Prefixes have no such difference: both offset the inputs' positions by the prefix
length (pass PEFT ``position_ids`` that skip left padding, as spt does, for padded batches).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spt import CONF_DIR, methods
from spt.core.artifact import check_tensors, load_artifact, save_artifact
from spt.errors import SptError, cli_error, is_count

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
WEIGHT_KEY = "prompt_embeddings"

# prompt kind (spt.methods.PROMPT_KINDS) -> the artifact table exported (task axis first):
# input vectors become PEFT prompt tuning, key/value prefixes PEFT prefix tuning, adaption
# prompts PEFT adaption prompts (each kind's builder is in _EXPORTERS, below)
EXPORTED = {"input": "prompt", "kv": "prefix", "adaption": "adaption.prompts"}
UNEXPORTABLE = {
    "context": "its prompt is a context of real examples with token-type offsets, a layout "
    "PEFT's prompt and prefix tuning adapters cannot hold",
    "clip": "its context vectors live in CLIP's text tower around class names; PEFT has no "
    "CLIP prompt learner",
    "input_update": "its low-rank update of the input embeddings has no place in PEFT's "
    "adapters (PEFT has no DePT); its prompt alone would score differently",
    "memory": "its per-layer memory term outside the attention softmax has no place in PEFT's "
    "adapters (PEFT has no Prefix-Tuning+)",
}


def exportable_methods() -> list[str]:
    return methods.with_prompt(EXPORTED)


_BOS_NOTE = (
    "PEFT puts the virtual tokens in front of the tokenizer's leading special token "
    "(BOS/CLS); spt's templates put them after it, so scores under PEFT differ "
    "somewhat from spt's (they are equal for the same placement)"
)


@dataclass(frozen=True)
class PeftArch:
    """What a PEFT adapter can hold of an spt prompt on one architecture family: the one
    place interop knows how the families differ (a table, not a branch per function)."""

    task_type: str  # what an export writes
    task_types: tuple[str, ...]  # what an import accepts (``None`` in the adapter: no check)
    export_notes: tuple[str, ...] = ()  # what a prompt export leaves behind
    import_refusal: str | None = None  # why no PEFT prompt imports onto it
    import_notes: tuple[str, ...] = ()
    prefix_refusal: str | None = None  # why prefix tuning does not convert (None: it does)
    seq_cls: bool = False  # a classifier head can travel as a SEQ_CLS adapter (seq_cls_blocker)


PEFT_ARCHS = {
    "decoder": PeftArch(
        "CAUSAL_LM",
        ("CAUSAL_LM",),
        export_notes=(_BOS_NOTE,),
        import_notes=(
            "PEFT trained these vectors in front of the BOS token; spt's templates "
            "put the soft slots after it, so scores in spt differ somewhat from "
            "PEFT's",
        ),
    ),
    "encoder-decoder": PeftArch(
        "SEQ_2_SEQ_LM",
        ("SEQ_2_SEQ_LM",),
        prefix_refusal="PEFT puts one prefix into both the decoder's self- and "
        "cross-attention and none into the encoder, while spt's T5 prefixes are "
        "separate encoder, decoder and cross-attention blocks",
    ),
    "encoder": PeftArch(
        "FEATURE_EXTRACTION",
        ("FEATURE_EXTRACTION", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"),
        seq_cls=True,
        export_notes=(
            "the classification head (head.*) is not exported: a PEFT "
            "FEATURE_EXTRACTION adapter returns the prompted hidden states; put a "
            "classifier on them",
            _BOS_NOTE,
        ),
        import_refusal="spt's prompt tuning on encoder-only models scores classes with its "
        "own trained head, which a PEFT prompt adapter does not hold. Use a "
        "decoder-only or encoder-decoder model, or train method=prompt on this "
        "one",
        prefix_refusal="the encoder-only export has not been compared against PEFT's prefix "
        "path, and the classification head has no place in a PEFT adapter",
    ),
}


# model_type -> the module of its *ForSequenceClassification that spt's encoder head is, when
# spt pools with the model's pooler (BertForSequenceClassification: dropout, then `classifier`
# on pooler_output). PEFT keeps it trained in a SEQ_CLS adapter through modules_to_save.
SEQ_CLS_HEADS = {"bert": "classifier"}
# spt init -> PEFT PromptTuningInit (the vectors are the trained ones either way; this is the
# provenance PEFT records). class_labels and uniform have no PEFT counterpart: RANDOM.
PEFT_INITS = {"text": "TEXT", "sampled_vocab": "SAMPLE_VOCAB"}


@dataclass(frozen=True)
class Converted:
    """What an export or import wrote: ``path``, a one-line ``summary``, how to ``load`` it,
    and ``notes`` on what did not carry over."""

    path: Path
    summary: str
    load: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        return [
            f"spt: {self.summary}",
            *(f"spt: note: {n}" for n in self.notes),
            f"spt: load it with {self.load}",
        ]


# -- spt -> PEFT -------------------------------------------------------------------------------
def export_peft(
    artifact_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    task: int = 0,
) -> Converted:
    """Write row ``task`` of an spt artifact as a PEFT adapter directory ``out_dir``.

    ``artifact_path`` is a run directory (its ``prompt.safetensors``) or an artifact file.
    ``base_model_name_or_path`` goes into ``adapter_config.json`` (default: the artifact's base
    model name). Method ``prompt`` / ``ptuning`` / ``mpt`` become PEFT prompt tuning, ``prefix``
    / ``ptuning_v2`` on decoder-only models PEFT prefix tuning, ``adaption_prompt`` PEFT
    adaption prompts (see the module docstring for
    what is left out and why: e.g. an encoder-only model's classification head, P-tuning's
    encoder). Raises :class:`SptError` for what PEFT cannot represent.
    """
    path = _artifact_path(artifact_path)
    tensors, meta = load_artifact(path)
    method = meta.get("method")
    base = meta.get("base") or {}
    arch = base.get("arch")
    kind = methods.registry()[method].prompt if method in methods.registry() else None
    if kind not in EXPORTED:
        raise SptError(_unsupported_method(method, kind, path))
    name = EXPORTED[kind]
    if arch not in PEFT_ARCHS:
        raise SptError(
            f"{path} was trained on a {arch or 'unknown'} backbone "
            f"({base.get('name')!r}): PEFT prompt adapters cover decoder-only, "
            "encoder-decoder and encoder-only language models; export a run on one "
            "of those"
        )
    build, layout = _EXPORTERS[kind]
    table = tensors.get(name)
    if table is None or table.dim() != len(layout):
        raise SptError(
            f"{path}: a method={method} artifact should hold a '{name}' table "
            f"[{', '.join(layout)}], it has {sorted(tensors)}: re-save it with "
            "python -m spt.run (method.init=file, train=false)"
        )
    row, notes = _task_row(table, task, meta, path)
    base_name = base_model_name_or_path or base.get("name")
    provenance = {
        "exported_from": str(path),
        "method": method,
        "task": task,
        "task_name": _task_names(meta, table.shape[0])[task],
        "base": base,
        **{k: meta[k] for k in ("label_names", "label_words", "loss") if k in meta},
    }
    config, weights, more = build(method, arch, row, task, meta, tensors, path, base_name)
    card = model_card(meta, config, base_name, list(notes + more))
    out = _write_adapter(out_dir, config, weights, provenance, path, card)
    return Converted(
        path=out,
        summary=(
            f"wrote a PEFT {_plain(config.peft_type)} adapter ({_plain(config.task_type)}, "
            f"{_virtual_tokens(config)}) from method={method} task row {task} of {path} "
            f"to {out}"
        ),
        load=f"PeftModel.from_pretrained(<{base.get('name')} model>, {str(out)!r})",
        notes=tuple(notes + more),
    )


def _virtual_tokens(config) -> str:
    """How many vectors a PEFT config puts where, in words."""
    if _plain(config.peft_type) == "ADAPTION_PROMPT":
        return (
            f"{config.adapter_len} prompt vectors in each of the top {config.adapter_layers} layers"
        )
    return f"{config.num_virtual_tokens} virtual tokens"


def _plain(value) -> str:
    """An enum's value (PEFT's PeftType / TaskType), or the string itself."""
    return str(getattr(value, "value", value))


def _artifact_path(source) -> Path:
    p = Path(source).expanduser()
    if p.is_dir():
        art = p / "prompt.safetensors"
        if not art.is_file():
            raise SptError(
                f"{p} holds no prompt.safetensors: give the directory of a finished "
                "python -m spt.run run (not its parent), or the artifact file itself"
            )
        return art
    if not p.exists():
        raise SptError(f"{p} does not exist: give a run directory or a prompt .safetensors file")
    return p


def _unsupported_method(method, kind, path) -> str:
    why = (
        f"method={method}: {UNEXPORTABLE[kind]}"
        if kind in UNEXPORTABLE
        else f"spt has no PEFT mapping for method={method!r}"
    )
    return (
        f"cannot export {path} to PEFT: {why}. Exportable methods: "
        f"{', '.join(exportable_methods())}"
    )


def _task_names(meta: dict, n: int) -> list[str]:
    names = meta.get("task_names")
    return (
        list(names)
        if isinstance(names, list) and len(names) == n
        else [f"task{i}" for i in range(n)]
    )


def _task_row(table: torch.Tensor, task, meta: dict, path) -> tuple[torch.Tensor, list[str]]:
    n = table.shape[0]
    names = _task_names(meta, n)
    if not isinstance(task, int) or isinstance(task, bool) or not 0 <= task < n:
        listing = ", ".join(f"{i}={t}" for i, t in enumerate(names))
        raise SptError(
            f"--task {task!r}: {path} holds {n} task row(s) ({listing}); PEFT holds "
            f"one prompt per adapter: pick one with --task 0..{n - 1}"
        )
    notes = []
    if n > 1:
        notes.append(
            f"exported task row {task} ({names[task]}) of {n}; export the others "
            "with --task into separate adapter directories"
        )
    return table[task].detach().float().contiguous(), notes


def _peft():
    try:
        import peft
    except ImportError:
        raise SptError(
            "exporting to PEFT needs the peft package: pip install 'peft>=0.13'"
        ) from None
    return peft


def seq_cls_blocker(meta: dict, tensors: dict) -> str | None:
    """Why an encoder-only prompt artifact is no exact PEFT ``SEQ_CLS`` adapter (None: it is).

    PEFT's sequence classifier concatenates the virtual tokens in front of the whole input and
    classifies ``pooler_output`` (``BertForSequenceClassification``); spt computes the same
    with ``data.soft_first=true`` (one leading ``{soft}`` slot before [CLS]) and
    ``model.pooling=pooler``, its head then being the model's ``classifier``."""
    model_type = (meta.get("base") or {}).get("model_type")
    if model_type not in SEQ_CLS_HEADS:
        return (
            f"spt maps only the {', '.join(SEQ_CLS_HEADS)} sequence classifier; this is a "
            f"{model_type} model"
        )
    if "head.1.weight" not in tensors or "head.1.bias" not in tensors:
        return "the artifact holds no single-task classification head (head.1.*)"
    inputs = meta.get("inputs") or [{}]
    if not inputs[0].get("soft_first"):
        return (
            "its soft slots follow [CLS] (PEFT puts virtual tokens before it): train with "
            "data.soft_first=true"
        )
    template = str(inputs[0].get("template") or "")
    if template.count("{soft") > 1:
        return f"its template {template!r} spreads the prompt over several slots"
    pooling = (meta.get("settings") or {}).get("pooling") or (meta.get("backbone") or {}).get(
        "pooling"
    )
    if pooling != "pooler":
        return (
            f"it pooled with {pooling!r}, BertForSequenceClassification reads the pooler: "
            "train with model.pooling=pooler"
        )
    return None


def _prompt_config(method, arch, row, meta, tensors, base_name):
    """PEFT prompt tuning; on encoder-only models a ``SEQ_CLS`` adapter with the head in
    ``modules_to_save`` where :func:`seq_cls_blocker` allows, else ``FEATURE_EXTRACTION``."""
    peft = _peft()
    base = meta.get("base") or {}
    length, d = row.shape
    if base.get("hidden_size") not in (None, d):
        raise SptError(
            f"the prompt's width {d} differs from the base model's hidden size "
            f"{base.get('hidden_size')} in its own metadata: the artifact is damaged"
        )
    task_type, head, notes = PEFT_ARCHS[arch].task_type, {}, []
    arch_notes = list(PEFT_ARCHS[arch].export_notes)
    soft_first = bool((meta.get("inputs") or [{}])[0].get("soft_first"))
    if soft_first:  # PEFT's placement: no BOS caveat
        arch_notes = [n for n in arch_notes if n != _BOS_NOTE]
    extra = {}
    if PEFT_ARCHS[arch].seq_cls:
        why = seq_cls_blocker(meta, tensors)
        if why is None:
            module = SEQ_CLS_HEADS[base["model_type"]]
            task_type, extra = "SEQ_CLS", {"modules_to_save": [module]}
            # PEFT 0.21 saves modules_to_save weights as base_model.<module>.* (its
            # get_peft_model_state_dict); tests/test_peft_interop.py loads them back
            head = {
                f"base_model.{module}.weight": tensors["head.1.weight"].float().contiguous(),
                f"base_model.{module}.bias": tensors["head.1.bias"].float().contiguous(),
            }
            n = tensors["head.1.weight"].shape[0]
            arch_notes = [
                f"a SEQ_CLS adapter with the trained head as `{module}` (modules_to_save): "
                f"load the base with AutoModelForSequenceClassification(num_labels={n})"
            ]
        else:
            arch_notes.append(f"exported as FEATURE_EXTRACTION, not SEQ_CLS: {why}")
    init = str(meta.get("init"))
    peft_init = PEFT_INITS.get(init, "RANDOM")
    if peft_init == "TEXT":
        extra.update(
            prompt_tuning_init_text=meta.get("init_text"), tokenizer_name_or_path=base_name
        )
    elif init not in ("None", "peft"):
        notes.append(f"spt's init={init} has no PEFT counterpart: recorded as RANDOM")
    config = peft.PromptTuningConfig(
        task_type=task_type,
        num_virtual_tokens=length,
        token_dim=d,
        num_transformer_submodules=1,  # encoder input only, as spt does (also on T5)
        prompt_tuning_init=peft_init,
        base_model_name_or_path=base_name,
        inference_mode=True,
        **extra,
    )
    if method == "ptuning":
        notes.append(
            "P-tuning's LSTM/MLP prompt encoder is not exported, only the prompt it "
            "produces (PEFT's P-tuning encoder is another network, and PEFT's saved "
            "P-tuning adapters keep only that prompt too); it becomes PEFT prompt "
            "tuning, all vectors in one block in front of the input even if the spt "
            "template spread them over several {soft:N} slots"
        )
    if method == "mpt":
        notes.append(
            "MPT's shared prompt and task factors are not exported, only this task's "
            "materialised prompt (as PEFT prompt tuning)"
        )
    return config, [*notes, *arch_notes], head


def _prefix_config(method, arch, row, meta, base, path, base_name):
    why = PEFT_ARCHS[arch].prefix_refusal
    if why:
        raise SptError(
            f"cannot export {path} (method={method} on {base.get('name')}, "
            f"{arch}) as a PEFT prefix-tuning adapter: {why}. Prefix export covers "
            "decoder-only models; for this model train method=prompt and export that"
        )
    peft = _peft()
    try:
        layers, kv_heads, head_dim = (int(meta[k]) for k in ("n_layers", "n_kv_heads", "head_dim"))
    except (KeyError, TypeError, ValueError):
        raise SptError(
            f"{path}: the metadata lacks the attention sizes (n_layers, n_kv_heads, "
            "head_dim) a prefix export needs: re-save the artifact with this spt "
            "version (python -m spt.run method.init=file train=false)"
        ) from None
    kv_dim = kv_heads * head_dim
    if row.shape[1] != layers * 2 * kv_dim:
        raise SptError(
            f"{path}: the prefix rows are {row.shape[1]} wide, not layers x 2 x "
            f"kv_heads x head_dim = {layers} x 2 x {kv_heads} x {head_dim}: the "
            "artifact is damaged"
        )
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=row.shape[0],
        token_dim=kv_dim,
        num_layers=layers,
        num_attention_heads=kv_heads,
        num_transformer_submodules=1,
        encoder_hidden_size=kv_dim,
        prefix_projection=False,
        base_model_name_or_path=base_name,
        inference_mode=True,
    )
    notes = []
    if meta.get("reparam"):
        notes.append(
            "the reparameterisation MLP is not exported, only the prefix it produces "
            "(PEFT's saved prefix adapters hold only that too)"
        )
    if method == "ptuning_v2":
        notes.append(
            "P-Tuning v2's deep prompts on a decoder-only model are key/value prefixes: "
            "exported as PEFT prefix tuning (importing it back gives method=prefix)"
        )
    return config, notes


def _prompt_export(method, arch, row, task, meta, tensors, path, base_name):
    config, notes, head = _prompt_config(method, arch, row, meta, tensors, base_name)
    return config, {WEIGHT_KEY: row, **head}, notes


def _prefix_export(method, arch, row, task, meta, tensors, path, base_name):
    base = meta.get("base") or {}
    config, notes = _prefix_config(method, arch, row, meta, base, path, base_name)
    return config, {WEIGHT_KEY: row}, notes


# PEFT 0.21's saved keys for adaption prompts on LlamaForCausalLM (its PeftModel state dict:
# base_model = AdaptionPromptModel, .model = the causal LM, then the layer's attention module):
# ``...layers.{i}.self_attn.adaption_prompt [1, adapter_len, hidden]`` and ``.adaption_gate [1]``
# for the top ``adapter_layers`` layers i (peft/tuners/adaption_prompt/model.py, _create_adapted_
# attentions takes the last adapter_layers of the target modules).
ADAPTION_KEY = "base_model.model.model.layers.{}.self_attn.adaption_{}"


def _adaption_export(method, arch, row, task, meta, tensors, path, base_name):
    """PEFT ``ADAPTION_PROMPT``: one prompt and one gate tensor per adapted layer."""
    from spt.backbones.adaption import ADAPTED_TYPES

    base = meta.get("base") or {}
    if base.get("model_type") not in ADAPTED_TYPES:
        raise SptError(
            f"{path} was trained on a {base.get('model_type')!r} model: PEFT's adaption prompts "
            f"cover {', '.join(ADAPTED_TYPES)} (as spt's)"
        )
    if meta.get("attention_bias"):
        raise SptError(
            f"{path} was trained on a model whose attention output projection has a bias "
            "(attention_bias=True): PEFT's adaption prompts add that bias to the prompts' term "
            "a second time, so the adapter would score differently there; use it with spt"
        )
    gates = tensors.get("adaption.gates")
    layers, length, d = row.shape
    total = meta.get("n_layers")
    if (
        gates is None
        or tuple(gates.shape) != (tensors["adaption.prompts"].shape[0], layers)
        or not isinstance(total, int)
        or not 1 <= layers <= total
    ):
        raise SptError(
            f"{path}: an adaption_prompt artifact needs 'adaption.gates' [n_tasks, {layers}] and "
            f"the model's layer count (n_layers) in its metadata: re-save it with this spt "
            "version (python -m spt.run method.init=file train=false)"
        )
    peft = _peft()
    config = peft.AdaptionPromptConfig(
        task_type="CAUSAL_LM",
        adapter_len=length,
        adapter_layers=layers,
        target_modules="self_attn",  # Llama's and Mistral's attention module
        base_model_name_or_path=base_name,
        inference_mode=True,
    )
    gate = gates[task].detach().float()
    weights = {}
    for j in range(layers):  # row j is the j-th adapted layer from the bottom
        i = total - layers + j
        weights[ADAPTION_KEY.format(i, "prompt")] = row[j].unsqueeze(0).contiguous()
        weights[ADAPTION_KEY.format(i, "gate")] = gate[j].reshape(1).contiguous()
    notes = [
        "PEFT's forward numbers positions from 0 through left padding; pass position_ids "
        "that skip it (as spt does) for padded batches to get spt's scores"
    ]
    return config, weights, notes


# prompt kind -> (builder, the exported table's axes)
_EXPORTERS = {
    "input": (_prompt_export, ("n_tasks", "length", "width")),
    "kv": (_prefix_export, ("n_tasks", "length", "width")),
    "adaption": (_adaption_export, ("n_tasks", "layers", "length", "width")),
}


def _write_adapter(
    out_dir, config, weights: dict[str, torch.Tensor], provenance: dict, artifact: Path, card: str
) -> Path:
    """The adapter pair, the model card (README.md) and a copy of the spt artifact, so that
    both ``PeftModel.from_pretrained`` and ``spt.load`` read the folder (and ``push`` uploads
    it as it is)."""
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise SptError(f"{out} is a file: give a directory for the PEFT adapter")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".spt-export-"))
    names = (WEIGHTS_NAME, CONFIG_NAME, "README.md", "prompt.safetensors", "prompt.json")
    try:  # every file is complete before any replaces an older one
        config.save_pretrained(str(tmp))
        save_file(
            weights,
            str(tmp / WEIGHTS_NAME),
            metadata={"format": "pt", "spt": json.dumps(provenance, sort_keys=True, default=str)},
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        shutil.copyfile(artifact, tmp / "prompt.safetensors")
        side = artifact.with_suffix(".json")
        if side.is_file():
            shutil.copyfile(side, tmp / "prompt.json")
        umask = os.umask(0)
        os.umask(umask)
        for name in names:
            if (tmp / name).exists():
                os.chmod(tmp / name, 0o666 & ~umask)  # the usual file mode, shareable
                os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(meta: dict, config, base_name: str | None, notes: list[str]) -> str:
    """README.md of an exported folder: what the prompt is, how it was made and scored, and
    how to load it with PEFT or spt (the Hub shows it as the model card)."""
    base = meta.get("base") or {}
    fmt = (meta.get("inputs") or [{}])[0]
    task_type, peft_type = _plain(config.task_type), _plain(config.peft_type)
    metrics = meta.get("dev_metrics") or {}
    from huggingface_hub import ModelCardData

    front = ModelCardData(
        library_name="peft",
        base_model=base_name or base.get("name"),
        tags=["spt", "soft-prompt", peft_type.lower().replace("_", "-"), str(meta.get("method"))],
    ).to_yaml()  # the Hub's own YAML, quoted safely
    lines = [
        "---",
        front,
        "---",
        "",
        f"# {meta.get('method')} soft prompt for {base.get('name')} on {meta.get('data')}",
        "",
        f"A soft prompt trained with spt (`method={meta.get('method')}`) "
        f"on the frozen `{base.get('name')}` ({base.get('arch')}, fingerprint "
        f"`{base.get('fingerprint')}`), exported as a PEFT `{peft_type}` / `{task_type}` "
        "adapter. The backbone's weights are unchanged.",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{meta.get('method')}` ({_virtual_tokens(config)}) |",
        f"| data | `{meta.get('data')}` |",
        f"| trainable parameters | {meta.get('trainable_parameters')} |",
        f"| served parameters | {meta.get('served_parameters')} |",
        f"| init | `{meta.get('init')}` |",
    ]
    lines += [f"| dev {k.removeprefix('val/')} | {v:.4f} |" for k, v in metrics.items()]
    if fmt.get("template"):
        lines.append(f"| template | `{fmt['template']}` |")
    if fmt.get("label_words"):
        pairs = zip(fmt.get("label_names") or [], fmt["label_words"], strict=False)
        lines.append(
            "| labels (class: label word) | " + ", ".join(f"{n}: `{w}`" for n, w in pairs) + " |"
        )
    if meta.get("command"):
        lines += ["", "Made by:", "", "```bash", str(meta["command"]), "```"]
    auto = "AutoModelForSequenceClassification" if task_type == "SEQ_CLS" else (
        "AutoModelForCausalLM" if task_type == "CAUSAL_LM" else
        "AutoModelForSeq2SeqLM" if task_type == "SEQ_2_SEQ_LM" else "AutoModel"
    )  # fmt: skip
    extra = f", num_labels={len(fmt.get('label_names') or [])}" if task_type == "SEQ_CLS" else ""
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        f"from transformers import {auto}, AutoTokenizer",
        "",
        f'base = {auto}.from_pretrained("{base_name or base.get("name")}"{extra})',
        'model = PeftModel.from_pretrained(base, "<this folder or repo>")',
        "```",
        "",
        "Fill the template's fields and tokenize the text around `{soft}` as usual: PEFT puts "
        "the virtual tokens in front of the tokenized input."
        if _plain(config.peft_type) != "ADAPTION_PROMPT"
        else "Fill the template's fields and tokenize the text as usual: the prompts live in "
        "the attention layers, not in the input.",
        "",
        "Or with spt, which applies the template and label words itself:",
        "",
        "```python",
        "import spt",
        'prompt = spt.load("<this folder>")',
        "```",
    ]
    if notes:
        lines += ["", "## What the export left out", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# -- PEFT -> spt -------------------------------------------------------------------------------
def import_peft(
    adapter_dir: str | os.PathLike,
    backbone,
    out_path: str | os.PathLike,
    task_name: str | None = None,
) -> Converted:
    """Write a PEFT prompt-tuning, P-tuning, prefix-tuning or adaption-prompt adapter as an spt
    artifact for ``backbone`` (a :class:`spt.backbones.Backbone`; its identity goes into the
    artifact).

    Prompt tuning and P-tuning (its saved, materialised prompt) become ``method=prompt``;
    prefix tuning on a decoder-only model becomes ``method=prefix`` with ``reparam=false``;
    adaption prompts on a Llama-architecture model ``method=adaption_prompt``.
    ``task_name`` names the single task row (default: the adapter directory's name). Every
    mismatch (another PEFT type, another hidden size or layer layout, a task type for another
    model family, missing or pickled files) raises :class:`SptError` naming the fix.
    """
    adir = Path(adapter_dir).expanduser()
    config = _read_config(adir)
    peft_type = str(config.get("peft_type") or "").upper()
    if peft_type not in IMPORTABLE:
        raise SptError(_unsupported_peft_type(peft_type, adir))
    weights, provenance = _read_weights(adir)
    identity = backbone.identity()
    src_base = provenance.get("base") or {}
    if src_base.get("fingerprint") not in (None, identity.get("fingerprint")):
        raise SptError(
            f"{adir} was exported by spt from a prompt trained on "
            f"{src_base.get('name')!r} (fingerprint {src_base.get('fingerprint')}), "
            f"but the backbone is {identity.get('name')!r} (fingerprint "
            f"{identity.get('fingerprint')}): import it with the model it was "
            "trained on (--model ...)"
        )
    build, unit = _IMPORTERS[peft_type]
    tensors, meta, notes, extra, load = build(config, weights, backbone, adir, peft_type)
    name = task_name or provenance.get("task_name") or adir.resolve().name
    source = {
        "format": "peft",
        "adapter_dir": str(adir.resolve()),
        "peft_type": peft_type,
        "task_type": config.get("task_type"),
        "peft_version": config.get("peft_version"),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }
    carried = {k: provenance[k] for k in ("label_names", "label_words", "loss") if k in provenance}
    if extra:
        notes.append(
            f"ignored tensors that are not the prompt ({', '.join(extra[:4])}"
            f"{', ...' if len(extra) > 4 else ''}): spt keeps the model's weights frozen"
        )
    meta.update(
        {
            "n_tasks": 1,
            "task_names": [name],
            "init": "peft",
            "base": identity,
            "source": source,
            **carried,
        }
    )
    out = save_artifact(out_path, tensors, meta)
    return Converted(
        path=out,
        summary=(
            f"wrote method={meta['method']} artifact ({meta['length']} {unit}, "
            f"base {identity['name']}) from the PEFT {peft_type} adapter "
            f"{adir} to {out}"
        ),
        load=load + str(out),
        notes=tuple(notes),
    )


def _check_arch(backbone, config: dict, adir: Path) -> None:
    """Why a PEFT prompt adapter does not go onto ``backbone``'s architecture, if it does not
    (each importer calls it first)."""
    arch, task_type = backbone.arch, config.get("task_type")
    if arch not in PEFT_ARCHS:
        raise SptError(
            f"cannot import a PEFT adapter onto {backbone.name} ({arch}): spt imports "
            "PEFT prompts for decoder-only and encoder-decoder language models"
        )
    if PEFT_ARCHS[arch].import_refusal:
        raise SptError(
            f"cannot import {adir} onto the {arch} {backbone.name}: "
            f"{PEFT_ARCHS[arch].import_refusal}"
        )
    accepted = PEFT_ARCHS[arch].task_types
    if task_type is not None and task_type not in accepted:
        raise SptError(
            f"{adir} is a PEFT {task_type} adapter, but {backbone.name} is "
            f"{arch} (PEFT task type {' or '.join(accepted)}): the "
            f"adapter was made for another kind of model "
            f"(base_model_name_or_path={config.get('base_model_name_or_path')!r}); "
            "import it with that model (--model ...)"
        )


# Each importer: (config, weights, backbone, adapter dir, peft type) -> (tensors, meta, notes,
# ignored weight names, the --set line that loads the artifact, less its path).
def _prompt_import(config, weights, backbone, adir, peft_type):
    _check_arch(backbone, config, adir)
    emb = _prompt_weights(weights, adir, peft_type)
    tensors, meta, notes = _prompt_artifact(config, emb, backbone, adir, peft_type)
    load = f"method=prompt method.length={meta['length']} method.init=file method.init_file="
    return tensors, meta, notes, sorted(k for k in weights if k != WEIGHT_KEY), load


def _prefix_import(config, weights, backbone, adir, peft_type):
    _check_arch(backbone, config, adir)
    emb = _prompt_weights(weights, adir, peft_type)
    tensors, meta, notes = _prefix_artifact(config, emb, backbone, adir)
    load = (
        f"method=prefix method.reparam=false method.length={meta['length']} "
        "method.init=file method.init_file="
    )
    return tensors, meta, notes, sorted(k for k in weights if k != WEIGHT_KEY), load


def _adaption_import(config, weights, backbone, adir, peft_type):
    total = _adaption_layers(backbone, adir)  # names the architecture before the generic check
    _check_arch(backbone, config, adir)
    tensors, meta, extra = _adaption_artifact(config, weights, backbone, adir, total)
    load = (
        f"method=adaption_prompt method.length={meta['length']} "
        f"method.layers={meta['layers']} method.init=file method.init_file="
    )
    return tensors, meta, [], extra, load


# PEFT type -> (its importer, what the artifact's length counts)
_IMPORTERS = {
    "PROMPT_TUNING": (_prompt_import, "vectors"),
    "P_TUNING": (_prompt_import, "vectors"),
    "PREFIX_TUNING": (_prefix_import, "prefix positions"),
    "ADAPTION_PROMPT": (_adaption_import, "vectors per layer"),
}
IMPORTABLE = tuple(_IMPORTERS)


def _read_config(adir: Path) -> dict:
    if not adir.exists():
        raise SptError(
            f"adapter directory {adir} does not exist: give the directory PEFT's "
            "save_pretrained wrote"
        )
    if adir.is_file():
        raise SptError(
            f"{adir} is a file: give the adapter directory that holds it ({adir.parent})"
        )
    path = adir / CONFIG_NAME
    if not path.is_file():
        inner = sorted(str(p.parent.relative_to(adir)) for p in adir.glob(f"*/{CONFIG_NAME}"))
        hint = (
            f"; adapters were found in {', '.join(inner[:5])}: pass one of those directories"
            if inner
            else "; give the directory PeftModel.save_pretrained wrote (it holds "
            f"{CONFIG_NAME} and {WEIGHTS_NAME})"
        )
        raise SptError(f"no {CONFIG_NAME} in {adir}: it is not a PEFT adapter directory{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise SptError(f"{path} is not a readable JSON adapter config: {str(err)[:200]}") from None
    return config


def _unsupported_peft_type(peft_type: str, adir: Path) -> str:
    if not peft_type:
        return (
            f"{adir / CONFIG_NAME} names no peft_type: it is not a PEFT adapter config "
            "(re-save the adapter with PeftModel.save_pretrained)"
        )
    why = (
        "it adds or changes model weights, which spt keeps frozen; load it with PEFT instead"
        if peft_type not in ("MULTITASK_PROMPT_TUNING", "CPT")
        else "its prompts need PEFT's own task and context machinery"
    )
    return (
        f"{adir} is a PEFT {peft_type} adapter, which spt cannot import: {why}. spt imports "
        f"soft prompts only: {', '.join(IMPORTABLE)} (prefix tuning with or without "
        "prefix_projection, on decoder-only models; adaption prompts on Llama-architecture ones)"
    )


def _read_weights(adir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = adir / WEIGHTS_NAME
    if not path.is_file():
        if (adir / PICKLE_NAME).is_file():
            raise SptError(
                f"{adir} holds {PICKLE_NAME}, a pickle, which spt does not load (it "
                "can run code): re-save the adapter as safetensors with "
                "PeftModel.from_pretrained(model, dir).save_pretrained(dir, "
                "safe_serialization=True)"
            )
        raise SptError(
            f"no {WEIGHTS_NAME} in {adir}: copy the adapter's weights file next to "
            f"its {CONFIG_NAME} (PeftModel.save_pretrained writes both)"
        )
    try:
        weights = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            header = (f.metadata() or {}).get("spt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SptError(f"{path} is not a readable safetensors file: {err}") from None
    check_tensors(weights, path)
    try:
        provenance = json.loads(header) if header else {}
    except (ValueError, RecursionError):
        provenance = {}
    return weights, provenance if isinstance(provenance, dict) else {}


def _n_virtual(config: dict, rows: int, per: int, adir: Path) -> int:
    n = config.get("num_virtual_tokens")
    if n is None:
        n = rows // per
    if not isinstance(n, int) or n < 1 or rows != n * per:
        raise SptError(
            f"{adir}: {WEIGHT_KEY} has {rows} rows, but num_virtual_tokens={n} x "
            f"num_transformer_submodules={per} says {n * per if isinstance(n, int) else '?'}"
            ": the config and weights do not belong together; re-save the adapter "
            "with PeftModel.save_pretrained"
        )
    return n


def _prompt_weights(weights: dict, adir: Path, peft_type: str) -> torch.Tensor:
    """The ``prompt_embeddings`` tensor every PEFT prompt-learning adapter but adaption
    prompts saves."""
    emb = weights.get(WEIGHT_KEY)
    if emb is None or emb.dim() != 2:
        found = {k: list(v.shape) for k, v in weights.items()}
        raise SptError(
            f"{adir / WEIGHTS_NAME} should hold '{WEIGHT_KEY}' [tokens, width] for a "
            f"PEFT {peft_type} adapter, it holds {found}: re-save the adapter with "
            "PeftModel.save_pretrained"
        )
    return emb


def _adaption_layers(backbone, adir: Path) -> int:
    """The backbone's layer count, or why PEFT adaption prompts do not go onto it."""
    from spt.backbones.adaption import attention_layers

    try:
        layers = attention_layers(backbone.model)
    except SptError as err:
        raise SptError(
            f"cannot import the PEFT ADAPTION_PROMPT adapter {adir} onto {backbone.name}: {err}"
        ) from None
    if layers[-1].o_proj.bias is not None:  # see _adaption_export
        raise SptError(
            f"cannot import the PEFT ADAPTION_PROMPT adapter {adir} onto {backbone.name}: its "
            "attention output projection has a bias, which PEFT adds to the prompts' term a "
            "second time and spt does not, so the prompts would score differently"
        )
    return len(layers)


def _adaption_artifact(config: dict, weights: dict, backbone, adir: Path, total: int):
    """PEFT adaption prompts -> ``method=adaption_prompt`` for a backbone of ``total`` layers:
    one task row, its layers' prompts ``[1, layers, length, d]`` and gates ``[1, layers]`` (the
    keys of :data:`ADAPTION_KEY`); also the names of the weights that are neither."""
    import re

    length, layers = config.get("adapter_len"), config.get("adapter_layers")
    target = config.get("target_modules")
    if not (is_count(length) and is_count(layers)):
        raise SptError(
            f"{adir / CONFIG_NAME}: adapter_len={length!r} and adapter_layers={layers!r} must "
            "be integers >= 1: the file is damaged or was not written by PEFT; re-save the "
            "adapter with PeftModel.save_pretrained"
        )
    if layers > total or target not in (None, "self_attn"):
        raise SptError(
            f"{adir / CONFIG_NAME}: adapter_layers={layers}, target_modules={target!r} do not "
            f"fit {backbone.name} ({total} layers; spt adapts the self_attn modules): import it "
            "with the model it was trained for "
            f"(base_model_name_or_path={config.get('base_model_name_or_path')!r})"
        )
    pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.adaption_(prompt|gate)$")
    found: dict[tuple[int, str], torch.Tensor] = {}
    extra, twice = [], []
    for key, value in weights.items():
        m = pattern.search(key)
        if not m:
            extra.append(key)
        elif (int(m.group(1)), m.group(2)) in found:
            twice.append(key)
        else:
            found[int(m.group(1)), m.group(2)] = value
    if twice:
        raise SptError(
            f"{adir / WEIGHTS_NAME} holds two tensors for the same layer's adaption prompt or "
            f"gate ({', '.join(twice[:4])}): keep one adapter's keys (re-save it with "
            "PeftModel.save_pretrained)"
        )
    top = range(total - layers, total)  # PEFT adapts the last adapter_layers layers
    want = {(i, part) for i in top for part in ("prompt", "gate")}
    d = backbone.hidden_size
    shapes = {"prompt": (1, length, d), "gate": (1,)}
    bad = [f"layer {i} {part} missing" for i, part in sorted(want - set(found))]
    bad += [
        f"layer {i} {part} {list(t.shape)}"
        for (i, part), t in sorted(found.items())
        if (i, part) not in want or tuple(t.shape) != shapes[part]
    ]
    if bad:
        raise SptError(
            f"{adir / WEIGHTS_NAME} does not hold adaption prompts [1, {length}, {d}] and gates "
            f"[1] for exactly layers {top.start}..{top.stop - 1} of {backbone.name}: "
            f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}. Import it with the model it "
            "was trained for, or re-save it with PeftModel.save_pretrained"
        )
    prompts = torch.stack([found[i, "prompt"][0] for i in top]).unsqueeze(0).float()
    gates = torch.stack([found[i, "gate"][0] for i in top]).unsqueeze(0).float()
    meta = {
        "method": "adaption_prompt",
        "length": length,
        "layers": layers,
        "n_layers": total,
        "trainable_parameters": prompts.numel() + gates.numel(),
    }
    return {"adaption.prompts": prompts, "adaption.gates": gates}, meta, sorted(extra)


def _prompt_artifact(config: dict, emb: torch.Tensor, backbone, adir: Path, peft_type: str):
    d = backbone.hidden_size
    token_dim = config.get("token_dim")
    if token_dim not in (None, d) or emb.shape[1] != d:
        said = "" if token_dim is None else f" (its config says token_dim={token_dim})"
        raise SptError(
            f"{adir} holds a prompt {emb.shape[1]} wide{said}, but {backbone.name} has "
            f"hidden size {d}: the adapter was trained for another base model "
            f"(base_model_name_or_path={config.get('base_model_name_or_path')!r}); "
            "import it with that model (--model ...)"
        )
    per = config.get("num_transformer_submodules") or 1
    n = _n_virtual(config, emb.shape[0], per, adir)
    notes = []
    if per > 1:
        notes.append(
            f"the adapter holds {n * per} rows (num_transformer_submodules={per}); "
            f"PEFT's prompt tuning puts only the first {n} in front of the encoder "
            "input and never reads the others: the first ones were imported"
        )
    if peft_type == "P_TUNING":
        notes.append(
            "a saved PEFT P-tuning adapter holds only the prompt its encoder produced "
            "(not the encoder): imported as method=prompt"
        )
    notes += PEFT_ARCHS[backbone.arch].import_notes
    prompt = emb[:n].detach().float().unsqueeze(0)
    meta = {
        "method": "prompt",
        "length": n,
        "init_text": None,
        "trainable_parameters": prompt.numel(),
    }
    return {"prompt": prompt}, meta, notes


def _prefix_artifact(config: dict, emb: torch.Tensor, backbone, adir: Path):
    from spt.backbones.arch import attention_sizes

    why = PEFT_ARCHS[backbone.arch].prefix_refusal
    if why:
        raise SptError(
            f"cannot import the PEFT prefix-tuning adapter {adir} onto "
            f"{backbone.name} ({backbone.arch}): {why}. Prefix import covers "
            "decoder-only models"
        )
    sizes = attention_sizes(backbone.config)
    layers, kv_heads, head_dim = sizes["n_layers"], sizes["n_kv_heads"], sizes["head_dim"]
    kv_dim = kv_heads * head_dim
    got = {
        "num_layers": config.get("num_layers"),
        "num_attention_heads": config.get("num_attention_heads"),
        "token_dim": config.get("token_dim"),
    }
    want = {"num_layers": layers, "num_attention_heads": kv_heads, "token_dim": kv_dim}
    bad = [k for k in want if got[k] is not None and got[k] != want[k]]
    width = layers * 2 * kv_dim
    if bad or emb.shape[1] != width:
        detail = (
            ", ".join(f"{k}={got[k]} (the backbone needs {want[k]})" for k in bad)
            or f"{WEIGHT_KEY} is {emb.shape[1]} wide (the backbone needs {width})"
        )
        raise SptError(
            f"{adir} does not fit {backbone.name} ({layers} layers, {kv_heads} KV heads of "
            f"dim {head_dim}): {detail}. Import it with the model it was trained for "
            f"(base_model_name_or_path={config.get('base_model_name_or_path')!r}); adapters saved "
            "by PEFT versions that sized grouped-query prefixes by query heads do not run on "
            "this model in PEFT either"
        )
    n = _n_virtual(config, emb.shape[0], 1, adir)
    notes = []
    if config.get("prefix_projection"):
        notes.append(
            "the adapter was trained with prefix_projection; PEFT saved the prefix its "
            "MLP produced (not the MLP): imported as method=prefix reparam=false"
        )
    table = emb.detach().float().unsqueeze(0)  # [1, P, layers * 2 * kv_dim], PEFT == spt layout
    meta = {
        "method": "prefix",
        "length": n,
        "reparam": False,
        "cross_attention": False,
        **sizes,
        "trainable_parameters": table.numel(),
        "prefix_parameters": table.numel(),
    }
    return {"prefix": table, "prefix_encoder.weight": table}, meta, notes


# -- the Hub ---------------------------------------------------------------------------------
def push(
    folder: str | os.PathLike, repo_id: str, private: bool = False, message: str | None = None
):
    """Upload an exported folder (:func:`export_peft`) to a Hub model repository with
    ``huggingface_hub`` (created if missing); returns the commit's URL. The folder must be a
    complete export (adapter pair, model card, spt artifact), so the repository works with
    ``PeftModel.from_pretrained`` and ``spt.load`` alike."""
    from huggingface_hub import HfApi, constants

    folder = Path(folder).expanduser()
    needed = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "prompt.safetensors")
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise SptError(
            f"{folder} lacks {', '.join(missing)}: push a folder written by "
            "python -m spt.interop.peft export"
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise SptError(f"repo id {repo_id!r}: {str(err).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise SptError(f"repo id {repo_id!r}: give it as <user or org>/<name>")
    if constants.HF_HUB_OFFLINE:
        raise SptError("cannot push with HF_HUB_OFFLINE=1: unset it where there is network")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=message or f"spt soft prompt ({folder.name})",
            ignore_patterns=[".spt-export-*"],
        )
    except Exception as err:  # network, auth and Hub errors come in many types
        raise SptError(
            f"pushing {folder} to {repo_id} failed: {type(err).__name__}: {err}"
        ) from err
    return str(getattr(info, "commit_url", info))


# -- CLI ---------------------------------------------------------------------------------------
def build_backbone(model: str, overrides: list[str] | tuple[str, ...] = ()):
    """The backbone of ``spt/conf/model/<model>.yaml`` (or of a model YAML file), instantiated
    as ``spt.run`` does; ``overrides`` are Hydra overrides of its keys (``dtype=bfloat16``)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    p = Path(model).expanduser()
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise SptError(f"--model {model}: no such file")
        conf_dir, name = p.resolve().parent, p.stem
    else:
        conf_dir, name = CONF_DIR / "model", model
        if not (conf_dir / f"{name}.yaml").is_file():
            known = sorted(q.stem for q in conf_dir.glob("*.yaml"))
            raise SptError(
                f"--model {model}: there is no spt/conf/model/{model}.yaml; choose one of "
                f"{', '.join(known) or '(none found)'} or give a model YAML file"
            )
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        msg = " ".join(str(err).split())
        raise SptError(f"--model {model} with --set {' '.join(overrides)}: {msg}") from None
    try:
        return instantiate(cfg)
    except Exception as err:  # a wrong-typed --set value fails deep inside the loader
        from spt.errors import user_error

        if user_error(err) is not None:
            raise
        cause = err.__cause__ or err
        raise SptError(
            f"--model {model} with --set {' '.join(overrides)}: the model could not be built "
            f"({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spt.interop.peft",
        description="Convert spt prompt artifacts to PEFT adapters and back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="spt artifact -> PEFT adapter directory")
    ex.add_argument("source", help="a run directory (with prompt.safetensors) or an artifact file")
    ex.add_argument("out_dir", help="the PEFT adapter directory to write")
    ex.add_argument(
        "--task",
        type=int,
        default=0,
        help="row of a multi-task prompt table to export (default: 0)",
    )
    ex.add_argument(
        "--base-model",
        default=None,
        help="base_model_name_or_path for adapter_config.json (default: the "
        "artifact's base model name)",
    )
    im = sub.add_parser("import", help="PEFT adapter directory -> spt artifact")
    im.add_argument("adapter_dir", help="a directory written by PeftModel.save_pretrained")
    im.add_argument("out", help="the spt artifact to write (.safetensors, plus its .json)")
    im.add_argument(
        "--model",
        required=True,
        help="the backbone: a model name from spt/conf/model (tiny-llama, smollm2-135m, t5-small, "
        "...) or a model YAML file",
    )
    im.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the model config (repeatable), e.g. dtype=bfloat16",
    )
    im.add_argument(
        "--task-name",
        default=None,
        help="name of the imported task row (default: the adapter directory's name)",
    )
    pu = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    pu.add_argument("folder", help="a folder written by export")
    pu.add_argument("repo_id", help="<user or org>/<name> (created if missing)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--message", default=None, help="the commit message")
    args = parser.parse_args(argv)
    try:
        if args.command == "push":
            url = push(args.folder, args.repo_id, args.private, args.message)
            print(f"spt: pushed {args.folder} to {args.repo_id}: {url}")
            return 0
        if args.command == "export":
            result = export_peft(args.source, args.out_dir, args.base_model, args.task)
        else:
            backbone = build_backbone(args.model, args.set)
            result = import_peft(args.adapter_dir, backbone, args.out, args.task_name)
    except Exception as exc:  # Hydra's instantiate wraps the SptErrors it meets
        return cli_error(exc)
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
