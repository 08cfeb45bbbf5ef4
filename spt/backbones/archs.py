"""The architectures spt implements, by the name a model config gives (``model.arch``)."""

from __future__ import annotations

from spt.backbones.arch import Arch
from spt.backbones.clip import ClipText
from spt.backbones.decoder import Decoder
from spt.backbones.encoder import Encoder
from spt.backbones.encoder_decoder import EncoderDecoder
from spt.errors import SptError

ARCH_CLASSES = {
    "encoder": Encoder,
    "decoder": Decoder,
    "encoder-decoder": EncoderDecoder,
    "clip": ClipText,
}


def arch_ops(name: str) -> Arch:
    """The operations of architecture ``name`` (one of :data:`ARCH_CLASSES`)."""
    if name not in ARCH_CLASSES:
        raise SptError(f"arch must be one of {tuple(ARCH_CLASSES)}, got {name!r}.")
    return ARCH_CLASSES[name]()
