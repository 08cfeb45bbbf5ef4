"""Context-Aware Prompt Tuning: Blau, Kimhi, Belinkov, Bronstein & Baskin 2024, "Context-aware
Prompt Tuning: Advancing In-Context Learning with Adversarial Methods", arXiv:2410.17222.

In-context learning with trainable demonstrations. ``n_examples`` training rows, each rendered
with the data's template and followed by its label word, form a context that is placed before
every query of a frozen decoder-only model. The context's token embeddings are refined by
zero-initialised deltas:

- each context token has a type: ``input`` (a text field), ``format`` (the template's own
  words and the separator), ``label`` (the label word) or ``special`` (the tokenizer's leading
  special tokens, e.g. BOS). Only input and format deltas train; label and special deltas are
  multiplied by zero in the forward pass and projected to zero, so they stay exactly zero;
- after every optimizer step (not inside the forward pass) each token's delta is projected
  back into an L2 ball of radius ``eps_input * sqrt(d / 2048)`` (input tokens) or
  ``eps_format * sqrt(d / 2048)`` (format tokens), so the context stays close to the user's
  data;
- the training loss is the query's loss plus the LM loss of every context example's label
  tokens, weighted by ``loss_decay ** (K - k)`` for example ``k`` (``k = 0`` is the first and
  oldest example, farthest from the query; the query has weight 1), normalised by the sum of
  the weights. ``loss_decay = 1`` weighs every example like the query.

Forward pass: causal attention means the context's hidden states never depend on the query, so
the context (plus deltas) is run once per task in the batch and its per-layer keys/values are
handed to the query as a cache; this equals running ``[context; query]`` as one sequence (a
test checks it) at a fraction of the cost. Deltas live in a table with a task axis
``[n_tasks, context_length, d]`` gathered per row by ``task_ids``; all tasks share the context
tokens. The query's own leading special tokens (BOS) are masked out: the context starts with
them already. Queries arrive left-padded; positions run on from the context's end.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
import torch.nn.functional as F

from spt.backbones import Backbone
from spt.core.artifact import check_base, load_artifact
from spt.core.mixin import HPARAMS_IGNORE, FrozenBackboneMixin, Schedule
from spt.core.objective import objective_for, task_names_for
from spt.core.steps import LOSSES, check_finite, classification_loss
from spt.data.task import TaskInfo
from spt.data.template import special_affixes
from spt.errors import SptError, is_count
from spt.modules import PromptTable

log = logging.getLogger(__name__)

SPECIAL, INPUT, FORMAT, LABEL = 0, 1, 2, 3
TOKEN_TYPES = {"special": SPECIAL, "input": INPUT, "format": FORMAT, "label": LABEL}
REFERENCE_DIM = 2048  # radii scale with sqrt(d / 2048), as in the method's description
INITS = ("zeros", "file")


class CPT(FrozenBackboneMixin, L.LightningModule):
    """Context-Aware Prompt Tuning on decoder-only backbones.

    Args:
        backbone: the frozen decoder-only model (see :mod:`spt.backbones`).
        task: labels, verbalizer words and metrics of the task (from the data module).
        datamodule: the :class:`~spt.data.TextClassificationDataModule` whose training rows
            form the context (``run.build`` passes it); not needed with ``init=file``.
        n_examples: K, the number of in-context examples.
        balanced: draw the examples' classes in turn (else uniformly at random).
        separator: text between consecutive examples (and before the query); format tokens.
        init: ``zeros`` (deltas start at zero) or ``file`` (context and deltas of a saved
            artifact of the same base model).
        init_file: the artifact for ``init=file``.
        eps_input / eps_format: projection radii of input / format token deltas, in units of
            ``sqrt(d / 2048)``; 0 freezes that token type.
        loss_decay: weight factor per step back in the context for the context examples'
            label losses (``1.0`` = no decay); see the module docstring.
        context_loss: add the context examples' label losses to the query's loss.
        init_texts: accepted for the common construction path and unused.
        n_tasks / task_names: rows of the delta table.
        loss: ``class_ce`` or ``lm``, the query's loss (see
            :func:`spt.core.steps.classification_loss`).
        backbone_dropout: run the frozen backbone with its dropout on during training.
        optimizer: a partial optimizer (``_partial_: true`` in YAML) called with param groups.
        scheduler: ``name`` (a ``transformers.get_scheduler`` name) and ``warmup_steps``
            (:class:`~spt.core.mixin.Schedule`).
        seed: seeds the choice and order of the context examples.
        supports: the architectures the YAML declares; only ``decoder`` is implemented.

    Shapes: ``delta.weight [n_tasks, C, d]`` (trainable, fp32); buffers ``context_ids [C]``,
    ``context_types [C]``, ``context_example [C]`` (example index, -1 for special tokens) and
    ``context_base [C, d]`` (the frozen token embeddings); ``forward(batch) -> [B, classes]``.
    """

    method_name = "cpt"
    prompt_kind = "context"  # spt.methods.PROMPT_KINDS
    served_tensors = ("context_embeds",)  # the trained context, tokens plus deltas
    supported_archs = ("decoder",)
    supports_generation = False  # classification only: the context ends in label words

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        datamodule=None,
        n_examples: int = 4,
        balanced: bool = True,
        separator: str = "\n",
        init: str = "zeros",
        init_file: str | None = None,
        eps_input: float = 0.2,
        eps_format: float = 0.1,
        loss_decay: float = 0.95,
        context_loss: bool = True,
        init_texts: list[str] | None = None,
        n_tasks: int = 1,
        task_names: list[str] | None = None,
        loss: str = "class_ce",
        backbone_dropout: bool = False,
        optimizer=None,
        scheduler: Schedule = Schedule("constant"),
        seed: int = 0,
        supports: list[str] | None = None,
    ):
        super().__init__()
        _validate(
            n_examples=n_examples,
            balanced=balanced,
            separator=separator,
            init=init,
            init_file=init_file,
            eps_input=eps_input,
            eps_format=eps_format,
            loss_decay=loss_decay,
            context_loss=context_loss,
            n_tasks=n_tasks,
            loss=loss,
        )
        dm = datamodule  # an object, not a hyperparameter: HPARAMS_IGNORE leaves it out
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
        self.use_soft_prompt = True  # False = zero-shot: the query alone, no context
        self.eps_input = float(eps_input)
        self.eps_format = float(eps_format)
        self.loss_decay = float(loss_decay)
        self.context_loss = bool(context_loss)
        self.n_tasks = n_tasks
        self.query_prefix = special_affixes(backbone.tokenizer)[0]  # dropped from each query

        if init == "file":
            self.load_prompt_file(init_file)
        else:
            if dm is None or not hasattr(dm, "context_examples"):
                raise SptError(
                    "method=cpt builds its context from training rows: pass the "
                    "text-classification data module (datamodule=...), or load a "
                    "trained context with method.init=file"
                )
            if n_examples > dm.num_rows("train"):
                raise SptError(
                    f"method.n_examples={n_examples} but data={dm.name} has only "
                    f"{dm.num_rows('train')} train rows: lower method.n_examples or "
                    "raise data.train_limit"
                )
            self._install_context(
                *self._context_from_data(dm, n_examples, balanced, separator, seed)
            )
        self.check_frozen()

    # -- the context ------------------------------------------------------------------------
    def _context_from_data(self, dm, k: int, balanced: bool, separator: str, seed: int):
        tok = self.base.tokenizer
        sep = list(tok(separator, add_special_tokens=False)["input_ids"]) if separator else []
        ids = list(self.query_prefix)
        types = [SPECIAL] * len(ids)
        example = [-1] * len(ids)
        for k_, ex in enumerate(dm.context_examples(k, seed=seed, balanced=balanced)):
            ids += ex["ids"] + sep
            types += [TOKEN_TYPES[t] for t in ex["types"]] + [FORMAT] * len(sep)
            example += [k_] * (len(ex["ids"]) + len(sep))
        return (
            torch.tensor(ids, dtype=torch.long),
            torch.tensor(types, dtype=torch.long),
            torch.tensor(example, dtype=torch.long),
        )

    def _install_context(
        self, ids: torch.Tensor, types: torch.Tensor, example: torch.Tensor
    ) -> None:
        """Register the context buffers and a zero delta table ``[n_tasks, C, d]``, on the
        backbone's device."""
        emb = self.base.input_embeddings.weight
        if int(ids.max()) >= emb.shape[0] or int(ids.min()) < 0:
            raise SptError(f"context token ids outside the vocabulary of {self.base.name}")
        ids, types, example = (t.to(emb.device).clone() for t in (ids, types, example))
        self.register_buffer("context_ids", ids)
        self.register_buffer("context_types", types)
        self.register_buffer("context_example", example)
        self.register_buffer("context_base", emb.detach()[ids].float().clone())
        self.delta = PromptTable(self.n_tasks, len(ids), self.base.hidden_size).to(emb.device)
        labels = (types == LABEL).nonzero().flatten()
        self.n_examples = int(example.max()) + 1 if len(example) else 0
        self._label_positions = labels[labels > 0]  # a label at position 0 has no predictor
        limit = getattr(self.base.config, "max_position_embeddings", None)
        if limit and len(ids) >= limit:
            log.warning(
                "the CPT context has %d tokens, more than %s's %d positions: lower "
                "method.n_examples or data.max_length",
                len(ids),
                self.base.name,
                limit,
            )
        counts = {n: int((types == v).sum()) for n, v in TOKEN_TYPES.items()}
        log.info(
            "CPT context: %d examples, %d tokens %s: %r",
            self.n_examples,
            len(ids),
            counts,
            self.base.tokenizer.decode(ids.tolist())[:300],
        )

    @property
    def trainable_mask(self) -> torch.Tensor:
        """``[C]`` 1.0 where the delta trains (input and format tokens), else 0.0."""
        return ((self.context_types == INPUT) | (self.context_types == FORMAT)).float()

    @property
    def radius(self) -> torch.Tensor:
        """``[C]`` L2 radius of each token's delta: ``eps * sqrt(d / 2048)`` by type, 0 for
        label and special tokens."""
        scale = math.sqrt(self.base.hidden_size / REFERENCE_DIM)
        t = self.context_types
        r = torch.zeros(t.shape, dtype=torch.float32, device=t.device)
        r[t == INPUT] = self.eps_input * scale
        r[t == FORMAT] = self.eps_format * scale
        return r

    def context_embeds(self, task_ids: torch.Tensor) -> torch.Tensor:
        """``[T, C, d]`` fp32: frozen context embeddings plus each task's masked delta."""
        delta = self.delta(task_ids) * self.trainable_mask[None, :, None]
        return self.context_base[None] + delta

    @torch.no_grad()
    def project_deltas(self) -> None:
        """Scale every token delta whose L2 norm exceeds its radius back onto the ball's
        surface; deltas inside are left bit-for-bit as they are (radius 0 -> zero)."""
        w = self.delta.weight
        norm = w.norm(dim=-1, keepdim=True)
        scale = (self.radius[None, :, None] / norm.clamp_min(1e-12)).clamp(max=1.0)
        w.mul_(torch.where(norm > self.radius[None, :, None], scale, torch.ones_like(scale)))

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer's step, then the projection (projected gradient descent)."""
        super().optimizer_step(*args, **kwargs)
        self.project_deltas()

    def context_weights(self) -> torch.Tensor:
        """``[K]`` weights of the context examples' label losses: ``loss_decay ** (K - k)``
        for example ``k`` (0 = first in the context = oldest); the query's weight is 1."""
        k = torch.arange(self.n_examples, dtype=torch.float32)
        return self.loss_decay ** (self.n_examples - k)

    # -- forward ---------------------------------------------------------------------------
    @property
    def n_soft_tokens(self) -> int:
        """The template's ``{soft}`` slot gets no tokens: the context comes before the query."""
        return 0

    def _run_context(self, task_ids: torch.Tensor, dtype, with_nll: bool):
        """Run the context once per distinct task of the batch.

        Returns the per-row key/value prefix ``[B, layers, 2, kv_heads, C, head_dim]`` and,
        with ``with_nll``, the summed negative log-likelihood of each example's label tokens
        per row ``[B, K]``.
        """
        tasks, rows = torch.unique(task_ids, return_inverse=True)
        embeds = self.context_embeds(tasks).to(dtype)  # [T, C, d]
        t, c = embeds.shape[:2]
        positions = torch.arange(c, device=embeds.device).expand(t, -1)
        pos = self._label_positions.to(embeds.device)
        keep = pos - 1 if with_nll and len(pos) else 1
        out = self.backbone(
            inputs_embeds=embeds,
            attention_mask=positions.new_ones(t, c),
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
        )
        cache = out.cache
        prefix = torch.stack(
            [torch.stack([layer.keys, layer.values], 1) for layer in cache.layers], 1
        )  # [T, layers, 2, h, C, hd]
        nll = None
        if with_nll:
            nll = embeds.new_zeros(t, self.n_examples, dtype=torch.float32)
            if len(pos):
                logp = F.log_softmax(out.logits.float(), dim=-1)  # [T, N, V]
                target = self.context_ids.to(pos.device)[pos]
                tok_nll = -logp.gather(-1, target.expand(t, -1).unsqueeze(-1)).squeeze(-1)
                nll = nll.index_add(1, self.context_example.to(pos.device)[pos], tok_nll)
            nll = nll[rows]
        return prefix[rows], nll

    def _query(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The query's embeddings ``[B, L, d]`` and attention mask with its leading special
        tokens masked out when a context precedes it."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if "soft_mask" in batch and bool(batch["soft_mask"].any()):
            raise SptError("method=cpt puts no soft tokens in the query: data.n_soft must be 0")
        embeds = self.base.input_embeddings(ids)
        n = len(self.query_prefix)
        if not self.use_soft_prompt or n == 0:
            return embeds, mask
        length = ids.shape[1]
        start = length - mask.sum(1, keepdim=True)  # left padding: first real position
        idx = (start + torch.arange(n, device=ids.device)).clamp(max=length - 1)  # [B, n]
        prefix = torch.tensor(self.query_prefix, device=ids.device)
        match = (ids.gather(1, idx) == prefix).all(1, keepdim=True).expand(-1, n)
        drop = torch.zeros_like(mask, dtype=torch.bool).scatter(1, idx, match)
        return embeds, mask.masked_fill(drop, 0)

    def _scores(self, batch: dict, with_nll: bool = False):
        embeds, mask = self._query(batch)
        if not self.use_soft_prompt:
            return self.class_scores(embeds, mask), None
        prefix, nll = self._run_context(batch["task_ids"], embeds.dtype, with_nll)
        return self.class_scores(embeds, mask, prefix), nll

    def forward(self, batch: dict) -> torch.Tensor:
        """Class scores ``[B, C]`` for a batch from the data module."""
        return self._scores(batch)[0]

    # -- generation (spt.core.generate): the context as a key/value prefix before the query ------
    def embed(self, batch: dict) -> torch.Tensor:
        return self._query(batch)[0]

    def query_mask(self, batch: dict) -> torch.Tensor:
        return self._query(batch)[1]

    def kv_prefix(self, batch: dict, dtype=torch.float32):
        """The trained context's per-layer keys/values for each row ``[B, layers, 2, kv_heads,
        C, head_dim]``; None for a zero-shot query."""
        if not self.use_soft_prompt:
            return None
        return self._run_context(batch["task_ids"], dtype, with_nll=False)[0]

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """``scores [B, C]``, ``query_loss``, ``context_nll [K]`` (mean over rows of each
        example's label NLL) and the combined ``loss`` (see the module docstring)."""
        scores, nll = self._scores(batch, with_nll=self.context_loss)
        query_loss = classification_loss(scores, batch["labels"], self.objective.loss_kind)
        out = {"scores": scores, "query_loss": query_loss, "loss": query_loss}
        if nll is not None:
            w = self.context_weights().to(nll.device)
            out["context_nll"] = nll.mean(0)
            out["loss"] = (query_loss + (w * out["context_nll"]).sum()) / (1.0 + w.sum())
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        loss, scores = terms["loss"], terms["scores"]
        acc = (scores.argmax(-1) == batch["labels"]).float().mean()
        logged = {"train/loss": loss, "train/acc": acc, "train/query_loss": terms["query_loss"]}
        if "context_nll" in terms:
            logged["train/context_nll"] = terms["context_nll"].mean()
        self.log_dict(logged, prog_bar=True, batch_size=len(batch["labels"]))
        return check_finite(loss, self.global_step)

    def param_groups(self) -> list[dict]:
        """One group: the context deltas (the only trainable tensor) at the optimizer's lr."""
        return [{"params": [p for _, p in self.trainable_named_parameters()]}]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A checkpoint carries its own context: when its tokens differ from the sampled ones
        (another seed or ``n_examples``), the checkpoint's context replaces them first."""
        keys = ("context_ids", "context_types", "context_example")
        if all(k in state_dict for k in keys) and not torch.equal(
            state_dict["context_ids"].cpu(), self.context_ids.cpu()
        ):
            log.info("the checkpoint's CPT context replaces the sampled one")
            self._install_context(*(state_dict[k].long() for k in keys))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- artifact --------------------------------------------------------------------------
    def load_prompt_file(self, path) -> None:
        """Take the context tokens and deltas of an artifact made for this base model."""
        tensors, meta = load_artifact(path)
        check_base(meta, self.base.identity(), path)
        if meta.get("method") != self.method_name:
            raise SptError(
                f"{path} holds a method={meta.get('method')} prompt, not a CPT "
                "context: train one with method=cpt"
            )
        need = ("delta", "context_ids", "context_types", "context_example")
        missing = [k for k in need if k not in tensors]
        if missing:
            raise SptError(f"{path} lacks {missing} (it has {sorted(tensors)})")
        delta, ids, types = tensors["delta"], tensors["context_ids"], tensors["context_types"]
        if not (
            len(ids) == len(types) == len(tensors["context_example"])
            and set(types.tolist()) <= set(TOKEN_TYPES.values())
        ):
            raise SptError(
                f"{path}: context_ids, context_types and context_example disagree "
                "(a damaged or hand-edited file): save the artifact again"
            )
        want = [self.n_tasks, len(ids), self.base.hidden_size]
        if list(delta.shape) != want:
            raise SptError(
                f"{path} holds deltas of shape {list(delta.shape)} [n_tasks, "
                f"context, dim], this run expects {want}: set "
                f"method.n_tasks={delta.shape[0]}"
            )
        self._install_context(ids.long(), types.long(), tensors["context_example"].long())
        with torch.no_grad():
            self.delta.weight.copy_(delta)

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        tasks = torch.arange(self.n_tasks, device=self.delta.weight.device)
        return {
            "delta": self.delta.weight.detach().float(),
            "context_ids": self.context_ids,
            "context_types": self.context_types,
            "context_example": self.context_example,
            "context_embeds": self.context_embeds(tasks).detach().float(),
        }

    def artifact_meta(self) -> dict:
        hp = self.hparams
        scale = math.sqrt(self.base.hidden_size / REFERENCE_DIM)
        return {
            "method": self.method_name,
            "n_examples": self.n_examples,
            "context_length": len(self.context_ids),
            "context_text": self.base.tokenizer.decode(self.context_ids.tolist()),
            "token_types": TOKEN_TYPES,
            "n_tasks": self.n_tasks,
            "task_names": self.task_names,
            "init": hp.init,
            "eps_input": self.eps_input,
            "eps_format": self.eps_format,
            "radius_input": self.eps_input * scale,
            "radius_format": self.eps_format * scale,
            "loss_decay": self.loss_decay,
            "context_loss": self.context_loss,
            "separator": hp.separator,
            "seed": hp.seed,
            **self.objective.meta(),
            "base": self.base.identity(),
            "trainable_parameters": self.parameter_counts()["params/trainable"],
        }


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate(
    *,
    n_examples,
    balanced,
    separator,
    init,
    init_file,
    eps_input,
    eps_format,
    loss_decay,
    context_loss,
    n_tasks,
    loss,
) -> None:
    if not is_count(n_examples):
        raise SptError(
            f"method.n_examples={n_examples!r}: the context needs at least one "
            "example (an integer >= 1; the paper uses a few, e.g. 4)"
        )
    for key, value in (("eps_input", eps_input), ("eps_format", eps_format)):
        if not _number(value) or value < 0:
            raise SptError(
                f"method.{key}={value!r} must be a number >= 0 (0 freezes those "
                "tokens; the paper's demo uses 0.2 for input, 0.1 for format)"
            )
    if eps_input == 0 and eps_format == 0:
        raise SptError(
            "method.eps_input=0 and method.eps_format=0 leave nothing to train: "
            "give one of them a radius > 0"
        )
    if not _number(loss_decay) or not 0 < loss_decay <= 1:
        raise SptError(f"method.loss_decay={loss_decay!r} must be in (0, 1] (1.0 = no decay)")
    if init not in INITS:
        raise SptError(f"method.init={init!r}: choose one of {', '.join(INITS)}")
    if init == "file" and not init_file:
        raise SptError("method.init=file needs method.init_file=/path/to/prompt.safetensors")
    if not is_count(n_tasks):
        raise SptError(f"method.n_tasks={n_tasks!r} must be an integer >= 1")
    if loss not in LOSSES:
        raise SptError(f"method.loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if not isinstance(separator, str):
        raise SptError(f"method.separator={separator!r} must be a string (e.g. a newline)")
    for key, value in (("balanced", balanced), ("context_loss", context_loss)):
        if not isinstance(value, bool):
            raise SptError(f"method.{key}={value!r} must be true or false")
