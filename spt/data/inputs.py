"""How a task's raw inputs become a batch, without its data files.

An artifact carries one :class:`InputFormat` per row of its prompt table (its ``inputs``
entry), so that :func:`spt.load` can classify or generate for new text with exactly the
template, label words and length limits the prompt was trained with. The data modules build
their template encoder through the same object, so training and loading encode one way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

from spt.backbones.archs import arch_ops
from spt.data.batches import Collator, EncodedDataset, TextToTextCollator, encode_rows
from spt.data.generation import GENERATION_METRICS, GenerationTaskInfo
from spt.data.tables import linearize_mr
from spt.data.task import LABEL_SCORES, TaskInfo
from spt.data.template import TemplateEncoder
from spt.errors import SptError, is_count

KINDS = ("classification", "text-to-text", "image")
_MR = re.compile(r"\s*[^\[\],]+\[[^\]]*\](\s*,\s*[^\[\],]+\[[^\]]*\])*\s*")  # E2E: name[x], ...


@dataclass(frozen=True)
class InputFormat:
    """One task's input settings: what its data module knew beyond the rows themselves.

    ``kind``: ``classification`` (a template over ``text_fields``, scored by label words),
    ``text-to-text`` (a template over one source field; the target is generated) or ``image``
    (CLIP: the backbone's image processor; ``label_words`` are the class prompts' words).
    ``table``: for text-to-text, the reader (``e2e`` or ``webnlg``), so that an E2E meaning
    representation (``name[The Eagle], food[French]``) is linearised as in training.
    ``soft_first``: the leading soft slot sits before the tokenizer's leading special token,
    PEFT's placement (:class:`~spt.data.template.TemplateEncoder`).
    """

    kind: str
    name: str
    template: str | None = None
    text_fields: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    label_words: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    label_score: str = "sum"
    max_length: int = 256
    label_reserve: int = 0
    max_target_length: int = 128
    max_new_tokens: int = 64
    num_beams: int = 1
    table: str | None = None
    soft_first: bool = False

    def __post_init__(self) -> None:
        for key in ("name", "template", "table"):
            value = getattr(self, key)
            if not (isinstance(value, str) or (value is None and key != "name")):
                raise SptError(f"input format: {key}={value!r} must be a string")
        for key in ("text_fields", "label_names", "label_words", "metrics"):
            value = getattr(self, key)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise SptError(f"input format: {key}={value!r} must be a list of strings")
        for key in ("max_length", "label_reserve", "max_target_length", "max_new_tokens"):
            value = getattr(self, key)
            low = 0 if key == "label_reserve" else 1
            if not is_count(value, low):
                raise SptError(f"input format: {key}={value!r} must be an integer >= {low}")
        if not is_count(self.num_beams):
            raise SptError(f"input format: num_beams={self.num_beams!r} must be an integer >= 1")
        if not isinstance(self.soft_first, bool):
            raise SptError(f"input format: soft_first={self.soft_first!r} must be true or false")
        if self.kind not in KINDS:
            raise SptError(f"input format kind={self.kind!r}: one of {', '.join(KINDS)}")
        if self.label_score not in LABEL_SCORES:
            raise SptError(f"label_score={self.label_score!r}: one of {', '.join(LABEL_SCORES)}")
        if self.kind != "text-to-text" and len(self.label_words) != len(self.label_names):
            raise SptError(
                f"{self.name}: {len(self.label_words)} label words for "
                f"{len(self.label_names)} label names; give one per class"
            )

    # -- plain values (the artifact's ``inputs`` entry) ------------------------------------
    def to_meta(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, entry: Mapping, where: str) -> InputFormat:
        known = {f.name for f in fields(cls)}
        if not isinstance(entry, Mapping) or "kind" not in entry:
            raise SptError(f"{where}: an 'inputs' entry must be an object with a 'kind'")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise SptError(
                f"{where}: 'inputs' has keys {unknown} this spt does not know: it was "
                "written by a newer spt"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
        return cls(**values)

    # -- encoding --------------------------------------------------------------------------
    def encoder(self, tokenizer, arch: str) -> TemplateEncoder:
        """The template encoder of this format (the data modules build theirs here)."""
        enc = TemplateEncoder(
            str(self.template), list(self.text_fields), tokenizer, soft_first=self.soft_first
        )
        if self.kind == "text-to-text" and arch_ops(arch).target_follows_prompt:
            enc.suffix = []  # no end-of-text special token between the prompt and its target
        return enc

    def default_label_reserve(self, tokenizer, arch: str) -> int:
        """Tokens to keep free for the longest label word where the architecture appends it
        (decoder-only), as ``data.label_reserve: null`` does."""
        enc = self.encoder(tokenizer, arch)
        return arch_ops(arch).label_reserve(
            max(len(enc.label_word_ids(w)) for w in self.label_words)
        )

    def task(self, tokenizer, arch: str) -> TaskInfo | GenerationTaskInfo:
        """The task the method sees (labels, verbalizer, metrics; or generation limits)."""
        if self.kind == "text-to-text":
            return GenerationTaskInfo(
                name=self.name,
                metrics=self.metrics or GENERATION_METRICS,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
            )
        after_space = (
            self.encoder(tokenizer, arch).ends_with_space
            if self.kind == "classification"
            else False
        )
        return TaskInfo(
            name=self.name,
            label_names=self.label_names,
            label_words=self.label_words,
            metrics=self.metrics or ("acc",),
            num_classes=len(self.label_names),
            label_after_space=after_space,
            label_score=self.label_score,
        )

    def rows(self, inputs: Sequence) -> dict[str, list[str]]:
        """Columns of text fields from ``inputs``: strings (a one-field template) or mappings
        field -> text. Anything else is refused by name."""
        if isinstance(inputs, (str, Mapping)):
            inputs = [inputs]
        if self.kind == "image":
            raise SptError(f"{self.name} classifies images: pass PIL images, not text")
        columns: dict[str, list[str]] = {f: [] for f in self.text_fields}
        for i, row in enumerate(inputs):
            if isinstance(row, str):
                if len(self.text_fields) != 1:
                    raise SptError(
                        f"input {i}: {self.name}'s template reads {len(self.text_fields)} "
                        f"fields ({', '.join(self.text_fields)}): pass a dict per input"
                    )
                row = {self.text_fields[0]: row}
            if not isinstance(row, Mapping):
                raise SptError(
                    f"input {i} is a {type(row).__name__}: pass a string or a dict of "
                    f"{', '.join(self.text_fields)}"
                )
            missing = [f for f in self.text_fields if not isinstance(row.get(f), str)]
            if missing:
                raise SptError(
                    f"input {i} lacks the text field(s) {missing} that {self.name}'s template "
                    f"{self.template!r} reads"
                )
            for f in self.text_fields:
                text = row[f]
                if self.table == "e2e" and _MR.fullmatch(text):
                    text = linearize_mr(text)  # a raw meaning representation, as in training
                columns[f].append(text)
        if not inputs:
            raise SptError("no inputs given")
        return columns

    def batch(
        self,
        inputs: Sequence,
        tokenizer,
        arch: str,
        n_soft: int,
        task_index: int = 0,
        labels: Sequence[int] | None = None,
        targets: Sequence[str] | None = None,
    ) -> dict:
        """A collated batch for ``inputs`` (text rows, see :meth:`rows`), as the data module's
        loaders give it: with class indices ``labels`` or text-to-text ``targets`` for a
        training step, without them for scoring or generating."""
        ops = arch_ops(arch)
        columns = self.rows(inputs)
        enc = self.encoder(tokenizer, arch)
        n = len(next(iter(columns.values())))
        for given, what in ((labels, "labels"), (targets, "targets")):
            if given is not None and len(given) != n:
                raise SptError(f"{n} inputs but {len(given)} {what}: give one per input")
        if self.kind == "classification":
            if targets is not None:
                raise SptError(f"{self.name} is a classification task: give labels, not targets")
            encoded = enc.encode(columns, n_soft, self.max_length, self.label_reserve)
            data = EncodedDataset(encoded, [0] * n if labels is None else labels)
            collate = Collator(enc.soft_id, left=ops.left_padded, task_index=task_index)
        else:
            if labels is not None:
                raise SptError(f"{self.name} is a text-to-text task: give targets, not labels")
            data, _, _ = encode_rows(
                enc,
                ops,
                columns[self.text_fields[0]],
                None if targets is None else [str(t) for t in targets],
                n_soft,
                self.max_length,
                self.max_target_length,
                field=self.text_fields[0],
            )
            collate = TextToTextCollator(
                enc.soft_id,
                left=ops.left_padded,
                labels_aligned=ops.target_follows_prompt,
                task_index=task_index,
            )
        batch = collate([data[i] for i in range(n)])
        if self.kind == "classification" and labels is None:
            batch.pop("labels")  # not a training batch: no made-up classes
        return batch
