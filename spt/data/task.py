"""What a method needs to know about a classification task, independent of the data files."""

from __future__ import annotations

from dataclasses import dataclass

METRICS = ("acc", "f1_macro")
LABEL_SCORES = ("sum", "mean")  # a multi-token label word's total or per-token log-probability


@dataclass(frozen=True)
class TaskInfo:
    """A task as the method sees it.

    ``label_names[i]`` and ``label_words[i]`` belong to class index ``i`` (the ``labels`` tensor
    of a batch). ``label_words`` are the verbalizer strings (possibly several tokens each);
    ``metrics`` are names from :data:`METRICS`. ``label_after_space``: the template ends in a
    space, so a decoder's label word follows it without one of its own. ``label_score``: one
    of :data:`LABEL_SCORES`, how a class of several label tokens is scored.
    """

    name: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    metrics: tuple[str, ...]
    num_classes: int
    label_after_space: bool = False
    label_score: str = "sum"
