"""CLIP (a text tower scored against an image tower): reads images, not text data; classes
are scored by the method itself (CoOp's prompted class names against each image), so the
architecture gives no classifier; no text generation."""

from __future__ import annotations

from spt.backbones.arch import Arch
from spt.errors import SptError


class ClipText(Arch):
    name = "clip"

    modality = "images"

    def check_data(self, modality: str, data: str) -> None:
        if modality != "images":
            raise SptError(
                f"data={data} is a text task and the model is CLIP (arch=clip), which "
                "scores images: use method=coop with image data (data=cifar10_subset "
                "or a coop_* dataset), or a text model"
            )

    def check_generation(self, what: str) -> None:
        raise SptError(
            f"{what} needs a text decoder, but the backbone is CLIP: use a "
            "decoder-only or encoder-decoder model"
        )

    def classifier(
        self, backbone, tasks, multitask: bool, head_dropout: float, pooling: str | None
    ):
        return None  # spt.methods.coop scores images against prompted class names

    def input_embeddings(self, model):
        return model.text_model.get_input_embeddings()  # CLIPModel does not implement it
