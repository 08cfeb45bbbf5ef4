"""The methods, and the one registry everything else reads (issue 19).

A method is ``spt/methods/<name>.py``, defining one LightningModule whose ``method_name`` is
``<name>``, and ``spt/conf/method/<name>.yaml`` building it; the artifact's ``method`` field is
that name too (a test checks all four agree). Each class declares what kind of prompt it makes
(:data:`PROMPT_KINDS`), the architectures it implements and whether it generates text; serving,
PEFT interop, regularizers, error messages and the contract tests read that here instead of
keeping their own lists, so a new method needs no edit elsewhere.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from dataclasses import dataclass

from spt.errors import SptError

# What a method trains, as the serving and export code see it.
PROMPT_KINDS = {
    "input": "vectors at the input's soft slots, a [n_tasks, length, d] 'prompt' table",
    "input_update": "a 'prompt' table plus a low-rank update of the input tokens' embeddings",
    "adaption": "per-layer prompts that the top layers' queries attend to through zero-init gates",
    "kv": "key/value prefixes in every attention layer, a 'prefix' table",
    "memory": "per-layer matrices whose query-dependent term is added to the attention output",
    "context": "in-context training examples whose embeddings trained deltas refine",
    "clip": "context vectors around class names in CLIP's text tower",
}


@dataclass(frozen=True)
class MethodInfo:
    """One method: its ``name`` (= module = YAML stem = artifact ``method``), its class, the
    kind of prompt it makes, the architectures it supports and whether it generates text."""

    name: str
    cls: type
    prompt: str
    archs: tuple[str, ...]
    generation: bool

    @property
    def config(self) -> str:
        return f"spt/conf/method/{self.name}.yaml"


@functools.cache
def module_names() -> tuple[str, ...]:
    """The method modules under ``spt.methods`` (listed, not imported)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)))


@functools.cache
def registry() -> dict[str, MethodInfo]:
    """Every method under ``spt.methods``, by name (imported on first use)."""
    found = {}
    for name in module_names():
        module = importlib.import_module(f"{__name__}.{name}")
        classes = [
            c
            for c in vars(module).values()
            if inspect.isclass(c)
            and c.__module__ == module.__name__
            and getattr(c, "method_name", None) is not None
        ]
        if len(classes) != 1:
            raise RuntimeError(
                f"{module.__name__} should define one method class (with a "
                f"method_name), it defines {[c.__name__ for c in classes]}"
            )
        cls = classes[0]
        found[name] = MethodInfo(
            name,
            cls,
            cls.prompt_kind,
            tuple(cls.supported_archs),
            bool(cls.supports_generation),
        )
    return found


def get(name: str) -> MethodInfo:
    """The method called ``name``, or an error listing the methods there are."""
    methods = registry()
    if name not in methods:
        raise SptError(
            f"method={name!r} is not an spt method: choose one of {', '.join(sorted(methods))}"
        )
    return methods[name]


def of_class(cls: type) -> MethodInfo:
    """The registry entry of a method class (as a config's ``_target_`` names it)."""
    for info in registry().values():
        if info.cls is cls:
            return info
    raise SptError(
        f"{cls.__module__}.{cls.__qualname__} is not a method under spt.methods: "
        f"method._target_ names one of {', '.join(sorted(registry()))}"
    )


def name_of_target(target) -> str | None:
    """The method a config's ``method._target_`` (``spt.methods.<name>.<Class>``) builds, read
    without importing it (for tools that only read run directories); None for a target outside
    the registry's modules."""
    if not isinstance(target, str) or not target.startswith(f"{__name__}."):
        return None
    module = target[len(__name__) + 1 :].split(".")[0]
    return module if module in module_names() else None


def names(**where) -> list[str]:
    """Sorted names of the methods whose fields equal ``where`` (``names(prompt="kv")``)."""
    return sorted(
        n for n, m in registry().items() if all(getattr(m, k) == v for k, v in where.items())
    )


def with_prompt(kinds) -> list[str]:
    """The methods making any of the prompt ``kinds`` (:data:`PROMPT_KINDS` keys), kind by
    kind in the order given: what serving or an export takes."""
    return [n for kind in kinds for n in names(prompt=kind)]


__all__ = [
    "PROMPT_KINDS",
    "MethodInfo",
    "get",
    "module_names",
    "name_of_target",
    "names",
    "of_class",
    "registry",
    "with_prompt",
]
