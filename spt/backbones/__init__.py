"""Frozen backbones: loaders (hub name, local dir, GGUF file, packaged weights, tiny from config).

Every loader returns a :class:`Backbone`: the Hugging Face model, its tokenizer, its
architecture family (``encoder`` | ``decoder`` | ``encoder-decoder``) and its identity.
"""

from spt.backbones.base import ARCHS, Backbone
from spt.backbones.loaders import (
    LOADERS,
    arch_of,
    from_gguf,
    from_model,
    from_package,
    from_pretrained,
    load_source,
    tiny,
)

__all__ = [
    "ARCHS",
    "LOADERS",
    "Backbone",
    "arch_of",
    "from_gguf",
    "from_model",
    "from_package",
    "from_pretrained",
    "load_source",
    "tiny",
]
