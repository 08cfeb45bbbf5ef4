"""Routes for key/value prefixes into Hugging Face T5 attention that the cache API misses.

- Encoder self-attention: ``T5Stack`` drops ``past_key_values`` when it is not a decoder, so a
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
"""

from __future__ import annotations

import contextlib

import torch


class _Route:
    """Forward pre-hooks on attention modules: widen ``mask`` by ``p`` always-seen columns
    and, if a cache is given, hand it to the layer as ``past_key_values``."""

    _attr = ""

    def __init__(self, modules):
        self._cache = None
        self._p = 0
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for m in modules]

    @classmethod
    def of(cls, model):
        """The model's route, created once however many methods share the backbone."""
        route = getattr(model, cls._attr, None)
        if route is None:
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
            kwargs["past_key_values"] = self._cache
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
        from spt.core.scoring import prefix_cache

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
