"""Routes for key/value prefixes into Hugging Face T5 attention that the cache API misses.

- Encoder self-attention: ``T5Stack`` drops its ``cache`` when it is not a decoder, so a
  prefix handed to the model never reaches the encoder (PEFT's prefix tuning on T5 therefore
  only touches the decoder). :class:`EncoderPrefixRoute` registers a forward pre-hook on every
  encoder self-attention module that, while a prefix is active, hands the layer a cache
  holding its prefix and widens the attention mask by the prefix length. Relative position
  bias then sees the inputs after P prefix positions, as in the decoder-only case.
- Decoder cross-attention: the prefix itself goes in through the cross-attention half of an
  ``EncoderDecoderCache`` (the layer appends the encoder's keys/values after it), but the
  decoder builds its cross-attention mask from the encoder's length alone.
  :class:`CrossPrefixRoute` widens that mask by the prefix length.

The hooks do nothing when no prefix is active.

No public transformers API reaches T5's encoder self-attention with extra keys/values (a custom
``AttentionInterface`` function would see the position bias already computed without the
prefix), so these hooks depend on the keywords of ``T5Attention.forward``: ``mask`` and
``cache`` (named ``past_key_values`` up to transformers 5.23; after the 5.24 rename a hook
still passing ``past_key_values`` was dropped by ``deprecate_kwarg`` in favour of the layer's
``cache=None``, and the widened mask no longer matched: issue 17). :func:`check_transformers`
therefore refuses, when a route is first built, a transformers release outside the range the
tests passed on, and any release whose ``T5Attention.forward`` lacks those keywords.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings

import torch

from spt.errors import SptError

# The transformers releases the T5 routes were tested on; the lock pins one of them. Widen it
# only after `make test-latest` passes on the new release.
TESTED_TRANSFORMERS = ">=5.24,<5.25"
# Set to 1 to run on an untested release anyway (one warning instead of the error).
UNTESTED_ENV = "SPT_UNTESTED_TRANSFORMERS"
_warned = False


def installed_transformers() -> str:
    """The installed transformers release (its distribution's metadata)."""
    from importlib.metadata import version

    return version("transformers")


def check_transformers(version: str | None = None, forward=None) -> None:
    """Refuse a transformers release the T5 prefix routes were not tested on.

    ``version`` defaults to the installed one and ``forward`` to ``T5Attention.forward`` (both
    arguments exist for the tests). Outside :data:`TESTED_TRANSFORMERS` this is an
    :class:`SptError` naming both versions, or one warning when ``SPT_UNTESTED_TRANSFORMERS=1``;
    a ``forward`` without the ``mask`` and ``cache`` keywords is always an error, since the
    hooks would then be silently ignored.
    """
    global _warned
    from packaging.specifiers import SpecifierSet

    if version is None:
        version = installed_transformers()
    if forward is None:
        from transformers.models.t5.modeling_t5 import T5Attention

        forward = T5Attention.forward
    missing = {"mask", "cache"} - set(inspect.signature(forward).parameters)
    if missing:
        raise SptError(
            f"transformers {version}: T5Attention.forward has no "
            f"{', '.join(sorted(missing))} keyword, which spt's T5 prefix routes "
            f"need (tested on transformers {TESTED_TRANSFORMERS}): install "
            "transformers==5.24.0 (the lock's version)"
        )
    if version in SpecifierSet(TESTED_TRANSFORMERS, prereleases=True):
        return
    if os.environ.get(UNTESTED_ENV) == "1":
        if not _warned:
            warnings.warn(
                f"transformers {version} is outside {TESTED_TRANSFORMERS}, the range "
                "spt's T5 prefix routes were tested on; running anyway because "
                f"{UNTESTED_ENV}=1",
                stacklevel=2,
            )
            _warned = True
        return
    raise SptError(
        f"T5 prefixes hook transformers internals and were tested on transformers "
        f"{TESTED_TRANSFORMERS}, but {version} is installed: install "
        "transformers==5.24.0 (the lock's version, `make setup`), or set "
        f"{UNTESTED_ENV}=1 to run anyway with a warning"
    )


class _Route:
    """Forward pre-hooks on attention modules: widen ``mask`` by ``p`` always-seen columns
    and, if a cache is given, hand it to the layer as ``cache``."""

    _attr = ""

    def __init__(self, modules):
        self._cache = None
        self._p = 0
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    @classmethod
    def of(cls, model):
        """The model's route, created once however many methods share the backbone."""
        route = getattr(model, cls._attr, None)
        if route is None:
            check_transformers()
            route = cls(cls.modules(model))
            object.__setattr__(model, cls._attr, route)  # not a submodule, not in state_dict
        return route

    @staticmethod
    def modules(model) -> list:
        raise NotImplementedError

    @contextlib.contextmanager
    def _activate(self, p: int, cache=None):
        self._cache, self._p = cache, p
        try:
            yield
        finally:
            self._cache, self._p = None, 0

    def _hook(self, module, args, kwargs):
        if self._p == 0:
            return None
        if self._cache is not None:
            kwargs["cache"] = self._cache
        mask = kwargs.get("mask")
        if mask is not None:  # [B, 1, q, k] additive float or boolean: the prefix is always seen
            b, h, q, _ = mask.shape
            keep = torch.ones if mask.dtype == torch.bool else torch.zeros
            pad = keep(b, h, q, self._p, dtype=mask.dtype, device=mask.device)
            kwargs["mask"] = torch.cat([pad, mask], dim=-1)
        return args, kwargs


class EncoderPrefixRoute(_Route):
    _attr = "_spt_encoder_prefix_route"

    @staticmethod
    def modules(model) -> list:
        return [block.layer[0].SelfAttention for block in model.get_encoder().block]

    def active(self, prefix: torch.Tensor):
        """``prefix [B, enc_layers, 2, heads, P, head_dim]`` for the encoder calls inside."""
        from spt.backbones.arch import prefix_cache

        return self._activate(prefix.shape[-2], prefix_cache(prefix))


class CrossPrefixRoute(_Route):
    _attr = "_spt_cross_prefix_route"

    @staticmethod
    def modules(model) -> list:
        return [block.layer[1].EncDecAttention for block in model.get_decoder().block]

    def active(self, p: int):
        """Widen cross-attention masks by ``p`` prefix positions for the decoder calls inside
        (the prefix's keys/values come from the cache)."""
        return self._activate(p)
