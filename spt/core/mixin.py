"""The frozen-backbone contract every method shares: the one mixin (docs/design.md).

- the backbone is passed in, frozen, and asserted frozen; at least one prompt parameter trains;
- trainable parameters stay fp32 whatever the backbone's dtype;
- the trainable count and percentage are logged at fit start;
- ``state_dict`` (and so every Lightning checkpoint) holds only the method's own state, and
  loading a state that lacks one of those keys is an error, never a silent skip;
- backbone dropout is an explicit flag (``backbone_dropout``), not an accident of ``.train()``;
- the optimizer is built from the method's ``param_groups()`` and the ``method.scheduler`` node;
- checkpoints carry the RNG state, so a resumed run draws the same dropout masks;
- Lightning's steps go to the method's objective (:mod:`spt.core.objective`), its one
  component for losses, metrics and the encoder head.

Everything else a method has is a component it owns: its prompt module (an ``nn.Module`` with
stated shapes, :mod:`spt.modules`), its objective, and the architecture's operations
(``self.base.ops``: scoring, key/value routes). Methods never inherit from each other.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from spt.backbones import Backbone
from spt.core.trees import plain, settings_node
from spt.errors import SptError

log = logging.getLogger(__name__)

BACKBONE = "backbone"  # attribute (and state-dict prefix) of the frozen model
# Constructor arguments that are objects, not settings: kept out of the saved hyperparameters
HPARAMS_IGNORE = ["backbone", "task", "optimizer", "init_texts", "datamodule"]


@dataclass(frozen=True)
class Schedule:
    """``method.scheduler``: a ``transformers.get_scheduler`` name (``constant``, ``linear``,
    ``cosine``, ...) and its linear warmup steps."""

    name: str = "constant"
    warmup_steps: int = 0

    @classmethod
    def of(cls, value) -> Schedule:
        """From a config node (a mapping; missing keys keep their defaults) or a Schedule."""
        out = settings_node(cls, value, "method.scheduler")
        if not isinstance(out.warmup_steps, int) or out.warmup_steps < 0:
            raise SptError(f"method.scheduler.warmup_steps={out.warmup_steps!r}: an int >= 0")
        return out


class FrozenBackboneMixin:
    """Mix into a ``LightningModule`` before it (``class M(FrozenBackboneMixin,
    L.LightningModule)``); in ``__init__`` call :meth:`attach_backbone` first, set
    ``self.objective``, and call :meth:`check_frozen` last."""

    regularizer = None  # e.g. spt.regularizers.nemesis.Nemesis; set by spt.regularizers.attach

    # What the method registry (spt.methods) reads; a method sets method_name (= its module
    # and YAML name) and prompt_kind (a spt.methods.PROMPT_KINDS key), and narrows these.
    supported_archs: tuple[str, ...] = ("encoder", "decoder", "encoder-decoder")
    supports_generation = True  # trains and validates on text-to-text tasks too
    # Settings that only training reads (files of other runs): an artifact leaves them out,
    # so spt.load rebuilds the method without them.
    training_settings: tuple[str, ...] = ()

    def attach_backbone(
        self, backbone: Backbone, backbone_dropout: bool = False, supports=None
    ) -> None:
        """Freeze and keep ``backbone``. ``supports`` (from the method's YAML) narrows the
        architectures the class implements."""
        method = getattr(self, "method_name", None)
        if supports is not None:
            self.supported_archs = tuple(a for a in supports if a in type(self).supported_archs)
        if backbone.arch not in self.supported_archs:
            raise SptError(
                f"method={method or type(self).__name__} does not support {backbone.arch} "
                f"backbones ({backbone.name}); it supports: {', '.join(self.supported_archs)}"
            )
        self.base = backbone  # tokenizer, arch and identity; not a submodule
        self.backbone: nn.Module = backbone.model
        self.backbone_dropout = bool(backbone_dropout)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.train(self.backbone_dropout and self.training)

    # -- trainable state -------------------------------------------------------------------
    def _own(self, key: str) -> bool:
        return not (key == BACKBONE or key.startswith(BACKBONE + "."))

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def check_frozen(self) -> None:
        leaked = [n for n, p in self.backbone.named_parameters() if p.requires_grad]
        if leaked:
            raise AssertionError(f"backbone parameters require grad: {leaked[:5]}")
        trainable = self.trainable_named_parameters()
        if not trainable:
            raise AssertionError("no trainable prompt parameter")
        outside = [n for n, _ in trainable if not self._own(n)]
        if outside:
            raise AssertionError(f"trainable parameters inside the backbone: {outside[:5]}")
        for n, p in trainable:
            if p.dtype != torch.float32:
                raise AssertionError(f"trainable parameter {n} is {p.dtype}, not float32")

    def parameter_counts(self) -> dict[str, float]:
        trainable = sum(p.numel() for _, p in self.trainable_named_parameters())
        frozen = sum(p.numel() for p in self.backbone.parameters())
        return {
            "params/trainable": trainable,
            "params/backbone": frozen,
            "params/trainable_pct": 100.0 * trainable / max(1, trainable + frozen),
        }

    # Artifact tensors a served prompt needs (the rest, e.g. a reparameterisation MLP or
    # an LSTM encoder, only resumes training); methods override.
    served_tensors: tuple[str, ...] = ("prompt", "head.")

    def served_parameters(self, tensors: dict) -> int:
        """Numbers an inference server loads for this prompt: the materialised prompt or
        prefix (and head), not the weights that only produce it during training."""
        return served_numel(self.served_tensors, {k: t.numel() for k, t in tensors.items()})

    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        return type(full)((k, v) for k, v in full.items() if self._own(k[len(prefix) :]))

    def required_state_keys(self) -> set[str]:
        return set(self.state_dict().keys())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = {k: v for k, v in state_dict.items() if self._own(k)}
        required = self.required_state_keys()
        missing = sorted(required - own.keys())
        if missing:
            raise SptError(
                f"checkpoint lacks trainable state {missing}: it was saved by another "
                "method or configuration (compare method.* settings)"
            )
        unexpected = sorted(own.keys() - required)
        if strict and unexpected:
            raise SptError(f"checkpoint has state this method does not own: {unexpected}")
        result = super().load_state_dict(own, strict=False, assign=assign)
        return result

    # -- checkpoints carry the RNG, so a resumed run draws the same dropout masks -----------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # settings nodes as plain dicts: checkpoints load with weights_only=True
        hp = checkpoint.get("hyper_parameters")
        if hp:
            checkpoint["hyper_parameters"] = {k: plain(v) for k, v in hp.items()}
        checkpoint["spt_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["spt_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Restored just before the next training batch: setting up the resumed fit in between
        # may draw from the global RNG, which the interrupted run did not.
        self._rng_to_restore = checkpoint.get("spt_rng")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        rng = getattr(self, "_rng_to_restore", None)
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._rng_to_restore = None

    # -- modes and fit hooks ---------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if not self.backbone_dropout:
            self.backbone.eval()
        return self

    def on_fit_start(self) -> None:
        for n, p in self.trainable_named_parameters():
            if p.dtype != torch.float32:  # e.g. a true-half precision plugin cast the module
                log.warning("casting trainable %s from %s back to float32", n, p.dtype)
                p.data = p.data.float()
        counts = self.parameter_counts()
        log.info(
            "trainable parameters: %d of %d (%.4f%%)",
            counts["params/trainable"],
            counts["params/trainable"] + counts["params/backbone"],
            counts["params/trainable_pct"],
        )
        for logger in self.loggers:
            logger.log_metrics(counts, step=0)

    # -- what the method hands the backbone ----------------------------------------------
    def class_scores(self, embeds, mask, prefix=None, task_ids=None) -> torch.Tensor:
        """``[B, C]`` class scores of the prompted inputs (the objective's scorer)."""
        return self.objective.class_scores(self.backbone, embeds, mask, prefix, task_ids)

    def kv_prefix(self, batch: dict, dtype=torch.float32):
        """Per-layer key/value prefixes for the batch; None for methods that prompt the input
        only (key/value methods return them as ``backbone.ops`` splits them)."""
        return None

    def query_mask(self, batch: dict) -> torch.Tensor:
        """The attention mask decoding starts from (a method may mask tokens of its own)."""
        return batch["attention_mask"]

    def adapting(self, batch: dict):
        """The context every backbone call for ``batch`` runs in (scoring, the LM loss, the
        whole of decoding): methods whose attention hooks read per-batch rows (adaption prompts,
        Prefix-Tuning+) select them on entry and clear them on exit, so a shared backbone runs
        unadapted between calls."""
        return contextlib.nullcontext()

    # -- Lightning's steps: the objective's ------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.objective.training_step(self, batch)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.objective.validation_step(self, batch)

    def on_validation_epoch_end(self) -> None:
        self.last_val = self.objective.epoch_end(self, "val")
        self.last_val_step = self.global_step

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.objective.validation_step(self, batch)

    def on_test_epoch_end(self) -> None:
        """The data module's test split (``test_split``: E2E's test set; dev where a
        benchmark's test labels are not public), scored as validation is."""
        self.last_test = self.objective.epoch_end(self, "test")

    def predict_step(self, batch: dict, batch_idx: int):
        """Class indices ``[B]``, or generated texts on a text-to-text task."""
        return self.objective.predict(self, batch)

    # -- the optimizer ---------------------------------------------------------------------
    def set_optimizer(self, optimizer, scheduler) -> None:
        """``optimizer``: a partial optimizer (``_partial_: true``) called with
        :meth:`param_groups`; ``scheduler``: the ``method.scheduler`` node."""
        lr = getattr(optimizer, "keywords", {}).get("lr")  # a functools.partial's settings
        if lr is not None and (
            isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf
        ):
            raise SptError(
                f"method.optimizer.lr={lr!r}: the learning rate must be a number > 0 "
                "(e.g. 0.3 for Prompt Tuning's Adafactor, 0.01 for AdamW)"
            )
        self.optimizer_factory = optimizer
        self.schedule = Schedule.of(scheduler)

    # No default ``param_groups`` here: every method defines its own (its prompt module's
    # group, then ``self.objective.head_groups()``), so no catch-all group shadows a head's lr
    # (the prefix methods' head lr was silently dropped that way under a mixin stack: issue 18).
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise SptError("no optimizer configured: set method.optimizer")
        optimizer = self.optimizer_factory(self.param_groups())
        name, warmup = self.schedule.name, self.schedule.warmup_steps
        if name in (None, "constant") and not warmup:
            return optimizer
        from transformers import get_scheduler

        name = name or "constant"
        if name == "constant" and warmup:
            name = "constant_with_warmup"
        scheduler = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=self.trainer.estimated_stepping_batches,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def served_numel(names: tuple[str, ...], sizes: dict[str, int]) -> int:
    """Sum of ``sizes`` (artifact key -> element count) over the keys ``names`` selects:
    exact keys, or key prefixes ending in ``"."``."""
    return sum(
        n
        for k, n in sizes.items()
        if k in names or any(k.startswith(p) for p in names if p.endswith("."))
    )
