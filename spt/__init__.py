"""spt: soft prompting on frozen pretrained models (PyTorch Lightning + Hydra).

The Python API (:mod:`spt.api`): ``spt.load(path)`` gives a trained prompt on its frozen
backbone, ready to ``classify`` or ``generate``; ``spt.prompt_model(model, tokenizer,
method=...)`` builds a method around a Hugging Face model for a training loop of your own.
They are imported on first use, so ``import spt`` (and ``python -m spt.run --help``) does not
import torch.
"""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs ship inside the package, so an installed wheel composes them too.
CONF_DIR = Path(__file__).resolve().parent / "conf"

__all__ = ["CONF_DIR", "PromptModel", "__version__", "load", "prompt_model"]
_API = ("PromptModel", "load", "prompt_model")


def __getattr__(name: str):
    if name in _API:
        from spt import api

        return getattr(api, name)
    raise AttributeError(f"module 'spt' has no attribute {name!r}")
