"""Interoperability with other soft-prompt formats.

- :mod:`spt.interop.peft`: Hugging Face PEFT adapters, both directions
  (``python -m spt.interop.peft export|import ...``).

Names are resolved lazily, so ``python -m spt.interop.peft`` does not import its module twice.
"""

from __future__ import annotations

__all__ = ["export_peft", "import_peft"]


def __getattr__(name: str):
    if name in __all__:
        from spt.interop import peft

        return getattr(peft, name)
    raise AttributeError(f"module 'spt.interop' has no attribute {name!r}")
