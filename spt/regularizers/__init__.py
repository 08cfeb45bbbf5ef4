"""Training-loss regularizers (``spt/conf/regularizer``), called once per training step as
``term, logs = reg(method, batch)``; the term is added to the task loss.

A regularizer names the method capabilities it needs in ``requires`` (e.g. ``soft_prompts``);
:func:`attach` refuses, before training, a method that lacks them and names the methods that
have them.
"""

from __future__ import annotations

from spt.errors import SptError


def methods_providing(names: tuple[str, ...]) -> list[str]:
    """The ``method=`` names (:func:`spt.methods.registry`) whose class defines every
    attribute in ``names``."""
    from spt import methods

    return sorted(
        n
        for n, info in methods.registry().items()
        if all(callable(getattr(info.cls, a, None)) for a in names)
    )


def attach(regularizer, method) -> None:
    """Give ``method`` its regularizer (``method.regularizer``), or refuse the pair by name."""
    name = getattr(regularizer, "name", type(regularizer).__name__.lower())
    method_name = getattr(method, "method_name", type(method).__name__)
    needs = tuple(getattr(regularizer, "requires", ()))
    missing = [n for n in needs if not callable(getattr(method, n, None))]
    if missing:
        works = methods_providing(needs)
        raise SptError(
            f"regularizer={name} works on soft-prompt vectors and method={method_name} "
            f"has none (no {', '.join(missing)}): use method={' | '.join(works)}, or "
            "regularizer=none"
        )
    check = getattr(regularizer, "check", None)
    if check is not None:
        check(method)
    method.regularizer = regularizer


__all__ = ["attach", "methods_providing"]
