"""spt: soft prompting on frozen pretrained models (PyTorch Lightning + Hydra)."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs ship inside the package, so an installed wheel composes them too.
CONF_DIR = Path(__file__).resolve().parent / "conf"
