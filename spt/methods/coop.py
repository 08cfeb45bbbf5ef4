"""CoOp: Zhou, Yang, Loy & Liu 2022, "Learning to Prompt for Vision-Language Models", IJCV,
arXiv:2109.01134.

CLIP classifies an image by the cosine similarity of its image feature with the text feature of
a prompt per class ("a photo of a {class}."), times CLIP's learned logit scale. CoOp replaces the
hand-written words of that prompt with ``length`` learned context vectors in the text tower's
token-embedding space; both towers stay frozen.

- the class name goes at the ``end`` of the context (``[ctx] name .``), in the ``middle``
  (``[ctx/2] name [ctx/2] .``) or at the ``front`` (``name [ctx] .``);
- the context is generic (one for all classes) or class-specific (one per class);
- it starts from N(0, 0.02) (``init=normal``) or from the embeddings of a text such as
  "a photo of a" (``init=text``; the context then has as many vectors as the text has tokens).

The prompts go through Hugging Face's own CLIP text tower: each class's token sequence carries
placeholder tokens where the context goes, and the token-embedding output is swapped for one
holding the context vectors there (a forward hook), so causal masking, the end-of-text pooling
and the projection are CLIP's. The class-name token sequences are rebuilt from the class names
(metadata), never stored: CoOp's checkpoints carry them as buffers (~62 MB on ImageNet); this
artifact holds only the context.

Like every spt method the context is a table with a task axis, ``[n_tasks, K, length, d]``
(``K`` = 1, or the number of classes when class-specific), gathered by ``task_ids``; the tasks of
one run share its class names.
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from spt.backbones import Backbone
from spt.backbones.arch import insert_soft
from spt.core.artifact import check_base, load_artifact
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import objective_for, task_names_for
from spt.data.task import TaskInfo
from spt.errors import SptError, is_count

POSITIONS = ("end", "middle", "front")
INITS = ("normal", "text", "file")


class CoOp(FrozenBackboneMixin, L.LightningModule):
    """CoOp context vectors for a frozen CLIP.

    Args:
        backbone: a CLIP :class:`~spt.backbones.Backbone` (arch ``clip``).
        task: the class names (``label_words``) and metrics, from an image data module.
        length: context vectors (CoOp: 16; 4 with "a photo of a").
        class_token_position: ``end`` | ``middle`` | ``front``.
        class_specific: one context per class (CoOp's CSC) instead of one shared context.
        init: ``normal`` (N(0, ``init_std``)) | ``text`` (``init_text``'s token embeddings) |
            ``file`` (a saved CoOp artifact for this CLIP).
        init_text / init_std / init_file: see ``init``.
        n_tasks / task_names: rows of the context table.
        backbone_dropout: run the frozen towers with their dropout on during training.
        optimizer: a partial optimizer called with the parameter groups.
        scheduler: ``name`` (a ``transformers.get_scheduler`` name) and ``warmup_steps``
            (:class:`~spt.core.mixin.Schedule`).
        seed: seeds the initialisation.
        supports: the architectures the YAML declares.
        loss / init_texts: accepted for the shared run interface (CLIP
            scores classes itself; ``loss`` must be ``class_ce``).
    """

    method_name = "coop"
    prompt_kind = "clip"  # spt.methods.PROMPT_KINDS
    supported_archs = ("clip",)
    supports_generation = False
    served_tensors = ("prompt",)

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        length: int = 16,
        class_token_position: str = "end",
        class_specific: bool = False,
        init: str = "normal",
        init_text: str | None = None,
        init_std: float = 0.02,
        init_file: str | None = None,
        n_tasks: int = 1,
        task_names: list[str] | None = None,
        backbone_dropout: bool = False,
        optimizer=None,
        scheduler: Schedule = Schedule("cosine"),
        seed: int = 0,
        supports: list[str] | None = None,
        loss: str = "class_ce",
        init_texts: list[str] | None = None,
    ):
        super().__init__()
        _validate(
            length=length,
            position=class_token_position,
            init=init,
            init_text=init_text,
            init_file=init_file,
            init_std=init_std,
            loss=loss,
            n_tasks=n_tasks,
        )
        # logger=False: the run logs the whole resolved config itself
        self.save_hyperparameters(ignore=HPARAMS_IGNORE, logger=False)
        self.attach_backbone(backbone, backbone_dropout, supports)
        self.objective = objective_for(
            self.base,
            task,
            loss=loss,
            head=None,
            method=self.method_name,
            generates=self.supports_generation,
        )
        self.task_names = task_names_for(task, task_names, n_tasks)
        self.set_optimizer(optimizer, scheduler)
        if self.objective.multitask:
            raise SptError(
                "method=coop scores one set of class names; a task mixture "
                f"(data={task.name}) is not supported: use one image dataset"
            )
        if not hasattr(task, "label_words"):
            raise SptError(
                f"method=coop classifies images; data={task.name} is a generation "
                "task: use an image dataset (data=cifar10_subset or a coop_* one)"
            )
        self.class_names = [str(w) for w in task.label_words]
        self.length = length
        self.position = class_token_position
        self.class_specific = bool(class_specific)
        ids, soft = class_prompt_tokens(
            backbone.tokenizer, self.class_names, length, class_token_position
        )
        # Rebuilt from the class names on load; not part of the trainable state or artifact.
        self.register_buffer("class_ids", ids, persistent=False)  # [C, L]
        self.register_buffer("class_soft_mask", soft, persistent=False)  # [C, L] bool
        k = len(self.class_names) if self.class_specific else 1
        self.prompt = nn.Parameter(torch.zeros(n_tasks, k, length, backbone.hidden_size))
        self._initialise(init, init_text, init_std, init_file, seed)
        self.check_frozen()

    # -- initialisation --------------------------------------------------------------------
    def _initialise(self, init, init_text, std, init_file, seed) -> None:
        if init == "file":
            self.load_prompt_file(init_file)
            return
        if init == "normal":
            vec = torch.randn(self.prompt.shape, generator=torch.Generator().manual_seed(seed))
            vec = vec * std
        else:
            ids = self.base.tokenizer(init_text, add_special_tokens=False)["input_ids"]
            if len(ids) != self.length:
                raise SptError(
                    f"method.init_text={init_text!r} is {len(ids)} tokens but "
                    f"method.length={self.length}: set method.length={len(ids)} "
                    "(CoOp's context takes the text's length)"
                )
            vec = self.base.input_embeddings.weight.detach().float()[ids]
        with torch.no_grad():
            self.prompt.copy_(vec.expand_as(self.prompt))

    def load_prompt_file(self, path) -> None:
        """Load the context of a CoOp artifact saved on this CLIP."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        if meta.get("method") != self.method_name or "prompt" not in tensors:
            raise SptError(
                f"{path} is not a CoOp context (method={meta.get('method')!r}): "
                "train one with method=coop"
            )
        want, got = tuple(self.prompt.shape), tuple(tensors["prompt"].shape)
        if got != want:
            raise SptError(
                f"{path} holds a context of shape {list(got)} [n_tasks, classes or 1, "
                f"length, dim], this run expects {list(want)}: match method.length, "
                "method.class_specific (and the class count) and method.n_tasks"
            )
        if self.class_specific and meta.get("class_names") != self.class_names:
            raise SptError(
                f"{path} holds class-specific contexts for {meta.get('class_names')}, "
                f"not this dataset's classes {self.class_names}"
            )
        with torch.no_grad():
            self.prompt.copy_(tensors["prompt"])

    # -- forward ---------------------------------------------------------------------------
    @property
    def n_soft_tokens(self) -> int:
        """Context vectors per prompt (the positions Nemesis normalises)."""
        return self.length

    def soft_prompts(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Each row's context: ``[B, length, d]``, or ``[B, C, length, d]`` class-specific."""
        ctx = self.prompt.index_select(0, task_ids)
        return ctx if self.class_specific else ctx.squeeze(1)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, p]`` (the frozen vision tower, no graph)."""
        with torch.no_grad():
            out = self.backbone.get_image_features(pixel_values=pixel_values)
        return F.normalize(out.pooler_output.float(), dim=-1)

    def text_features(self, contexts: torch.Tensor) -> torch.Tensor:
        """L2-normalised class text features ``[V, C, p]`` for ``V`` contexts ``[V, length, d]``
        or ``[V, C, length, d]``."""
        n_classes, seq = self.class_ids.shape
        v = contexts.shape[0]
        ctx = (
            contexts.unsqueeze(1).expand(v, n_classes, *contexts.shape[1:])
            if contexts.dim() == 3
            else contexts
        )
        ids = self.class_ids.expand(v, n_classes, seq).reshape(v * n_classes, seq)
        soft = self.class_soft_mask.expand(v, n_classes, seq).reshape(v * n_classes, seq)
        table = self.base.input_embeddings
        embeds = insert_soft(table(ids), soft, ctx.reshape(v * n_classes, self.length, -1))
        with _replaced_output(table, embeds):
            out = self.backbone.get_text_features(
                input_ids=ids, attention_mask=torch.ones_like(ids)
            )
        return F.normalize(out.pooler_output.float(), dim=-1).reshape(v, n_classes, -1)

    def scores_with_prompts(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits with each row's context ``prompts [B, length, d]`` (or
        ``[B, C, length, d]``); rows sharing a context share one text-tower pass."""
        variants, which = torch.unique(prompts.flatten(1), dim=0, return_inverse=True)
        return self._logits(batch, variants.view(-1, *prompts.shape[1:]), which)

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits ``[B, C]`` for a batch of images (``pixel_values``, ``task_ids``)."""
        tasks, which = batch["task_ids"].unique(return_inverse=True)
        return self._logits(batch, self.soft_prompts(tasks), which)

    def _logits(self, batch: dict, contexts: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """CLIP's scaled cosine logits ``[B, C]`` of each image against the class texts of its
        context ``contexts[which[b]]``."""
        text = self.text_features(contexts)  # [V, C, p]
        image = self.image_features(batch["pixel_values"])  # [B, p]
        scale = self.backbone.logit_scale.exp().float()
        return scale * torch.einsum("bp,bcp->bc", image, text[which])

    def param_groups(self) -> list[dict]:
        return [{"params": [self.prompt]}]

    # -- artifact --------------------------------------------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt.detach().float()}

    def artifact_meta(self) -> dict:
        hp = self.hparams
        return {
            "method": self.method_name,
            "length": self.length,
            "n_tasks": self.prompt.shape[0],
            "task_names": self.task_names,
            "class_names": self.class_names,
            "class_token_position": self.position,
            "class_specific": self.class_specific,
            "init": hp.init,
            "init_text": hp.init_text,
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }


def class_prompt_tokens(
    tokenizer, class_names: list[str], length: int, position: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[C, L]`` of each class's prompt with ``length`` placeholder slots for the
    context, and the mask of those slots ``[C, L]`` (bool). Sequences are
    ``<start> [layout] . <end>`` padded with the tokenizer's pad id after the end token; the
    layout follows ``position``: ``ctx name``, ``ctx/2 name ctx/2`` or ``name ctx``."""

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    slot = encode("X")[:1]  # any ordinary token: its embedding is replaced
    dot = encode(".")
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    end = [tokenizer.eos_token_id]
    rows, masks = [], []
    half = length // 2
    for name in class_names:
        words = encode(name)
        if not words:
            raise SptError(f"class name {name!r} has no tokens: check the data's class names")
        if position == "end":
            parts = [(slot * length, True), (words + dot, False)]
        elif position == "middle":
            parts = [
                (slot * half, True),
                (words, False),
                (slot * (length - half), True),
                (dot, False),
            ]
        else:
            parts = [(words, False), (slot * length, True), (dot, False)]
        ids = start + [i for p, _ in parts for i in p] + end
        mask = [False] * len(start) + [m for p, m in parts for _ in p] + [False]
        rows.append(ids)
        masks.append(mask)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end[0]
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([m + [False] * (width - len(m)) for m in masks])
    return ids, mask


@contextlib.contextmanager
def _replaced_output(module: nn.Module, output: torch.Tensor):
    """Inside, ``module`` returns ``output`` instead of its own result."""
    handle = module.register_forward_hook(lambda _m, _args, _out: output)
    try:
        yield
    finally:
        handle.remove()


def _validate(*, length, position, init, init_text, init_file, init_std, loss, n_tasks) -> None:
    if not is_count(length):
        raise SptError(
            f"method.length={length!r}: the context needs at least one vector (an "
            "integer >= 1; CoOp uses 16, or 4 with init_text='a photo of a')"
        )
    if position not in POSITIONS:
        raise SptError(
            f"method.class_token_position={position!r}: choose one of {', '.join(POSITIONS)}"
        )
    if init not in INITS:
        raise SptError(f"method.init={init!r}: choose one of {', '.join(INITS)}")
    if init == "text" and not init_text:
        raise SptError("method.init=text needs method.init_text='a photo of a' (or another text)")
    if init == "file" and not init_file:
        raise SptError("method.init=file needs method.init_file=/path/to/prompt.safetensors")
    if not isinstance(init_std, int | float) or init_std <= 0:
        raise SptError(f"method.init_std={init_std!r} must be a number > 0 (CoOp: 0.02)")
    if loss != "class_ce":
        raise SptError(
            f"method.loss={loss!r}: CoOp trains with class_ce (cross-entropy over CLIP's logits)"
        )
    if not is_count(n_tasks):
        raise SptError(f"method.n_tasks={n_tasks!r} must be an integer >= 1")
