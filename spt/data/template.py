"""Prompt templates: ``"{soft}Review: {sentence} Sentiment:"`` -> token ids, soft slots, truncation.

Soft slots: one ``{soft}`` takes all ``n_soft`` tokens; several slots with explicit counts place
prompts anywhere, as P-tuning does (``"{soft:2}Review: {sentence} {soft:1} Sentiment:"``), and
their counts must add up to ``n_soft``.

Pieces are tokenized separately (``add_special_tokens=False``) and concatenated, then wrapped in the
tokenizer's own special tokens. Only text fields are ever truncated, so the template words and the
soft-token slots always survive.

Whitespace between pieces is placed the way the tokenizer itself would place it, found by a probe
(``"Review: hello world"`` tokenized whole vs. in two pieces):

- ``keep``: pieces tokenized exactly as written (WordPiece, T5, byte-level without merges);
- ``move``: the space before a piece is attached to that piece (GPT-2/Llama-3 style BPE, where
  ``" hello"`` is one token but ``"Review: "`` would end in a lone space token);
- ``drop``: spaces between pieces are removed (SentencePiece with a dummy prefix, e.g. Llama-2,
  which adds its own word-start marker to every piece).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spt.backbones.tokens import space_mode, verbalizer_ids
from spt.errors import SptError

SOFT = "soft"


@dataclass(frozen=True)
class _Piece:
    kind: str  # "text" (template words), "field" or "soft"
    value: str  # the words, or the field name
    space_before: bool  # whitespace precedes this piece (from the template)


def parse_template(template: str, text_fields: Sequence[str]) -> list[_Piece]:
    """Split a template into pieces, recording where whitespace separates them."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise SptError(f"data.template {template!r} is not a valid template: {e}.") from None
    raw: list[tuple[str, str]] = []
    seen: list[str] = []
    for literal, field, spec, conversion in parsed:
        if literal:
            raw.append(("text", literal))
        if field is None:
            continue
        if field == SOFT and not conversion and (not spec or spec.isdigit()):
            if spec and int(spec) < 1:
                raise SptError(f"data.template: {{soft:{spec}}} needs a count >= 1.")
            seen.append(field)
            raw.append(("soft", spec))
            continue
        if spec or conversion:
            raise SptError(
                f"data.template: write placeholders as plain {{{field}}} (or "
                "{soft:N} for N soft tokens), without format specs or conversions."
            )
        if field not in text_fields:
            raise SptError(
                f"data.template uses {{{field}}}, which is not in data.text_fields "
                f"{list(text_fields)} (or {{soft}})."
            )
        if field in seen:
            raise SptError(f"data.template uses {{{field}}} more than once; use it once.")
        seen.append(field)
        raw.append(("field", field))
    soft_specs = [v for k, v in raw if k == "soft"]
    if len(soft_specs) > 1 and not all(soft_specs):
        raise SptError(
            f"data.template {template!r} has several soft slots: give each a count, "
            "e.g. {soft:2} ... {soft:1}."
        )
    unused = [f for f in text_fields if f not in seen]
    if unused:
        raise SptError(f"data.text_fields {unused} do not appear in data.template {template!r}.")
    if SOFT not in seen:  # soft tokens go right after the special prefix
        raw.insert(0, ("soft", ""))

    pieces: list[_Piece] = []
    pending = False
    for kind, value in raw:
        if kind == "text":  # whitespace-only text stays: ``keep`` mode tokenizes it as written
            pieces.append(_Piece("text", value, pending or value[:1].isspace()))
            pending = value[-1:].isspace()
        elif kind == "field":
            pieces.append(_Piece("field", value, pending))
            pending = False
        else:
            pieces.append(_Piece("soft", value, False))
    return pieces


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts around a text (``[CLS] x [SEP]``, ``<s> x``, ``x </s>``)."""
    probe = "a b"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise SptError(
        f"cannot locate the text inside the special tokens of "
        f"{type(tokenizer).__name__}: {full} vs {plain}."
    )


def fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Cut the longest field first until ``sum <= budget`` (water-filling, no loop per token)."""
    if sum(lengths) <= budget:
        return list(lengths)
    lo, hi = 0, max(lengths)  # largest cap c with sum(min(l, c)) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    out = [min(n, lo) for n in lengths]
    spare = budget - sum(out)
    for i, n in enumerate(lengths):  # leftover tokens go one each to the fields that were cut
        if spare and n > lo:
            out[i] += 1
            spare -= 1
    return out


@dataclass
class Encoded:
    """Token ids of one split. Row ``r``'s soft slot ``j`` is
    ``ids[r][soft_start[r][j]:][:soft_counts[j]]``; the counts add up to ``n_soft``."""

    ids: list[list[int]]
    soft_start: list[tuple[int, ...]]
    n_soft: int
    n_truncated: int
    soft_counts: tuple[int, ...] = ()


def mark_soft(mask_row, offset: int, starts: Sequence[int], counts: Sequence[int]) -> None:
    """Set a padded row's soft slots in a boolean ``soft_mask`` row (collators share this)."""
    for start, count in zip(starts, counts, strict=True):
        mask_row[offset + start : offset + start + count] = True


class TemplateEncoder:
    """Turns columns of text fields into full input ids with the tokenizer's special tokens."""

    def __init__(
        self, template: str, text_fields: Sequence[str], tokenizer, soft_first: bool = False
    ):
        self.template = template
        self.tokenizer = tokenizer
        self.pieces = parse_template(template, text_fields)
        # soft_first: the template's leading {soft} slot goes before the tokenizer's leading
        # special token (BOS / CLS), where PEFT puts its virtual tokens (peft_model.py
        # concatenates the prompts in front of the whole embedded input), so a prompt moved
        # to PEFT sees the same sequence and positions.
        self.soft_first = bool(soft_first)
        if self.soft_first and self.pieces[0].kind != "soft":
            raise SptError(
                f"data.soft_first=true puts the template's first {{soft}} slot before the "
                f"special tokens, but {template!r} does not start with one: start it with "
                "{soft}, or set data.soft_first=false"
            )
        self.prefix, self.suffix = special_affixes(tokenizer)
        self.mode = space_mode(tokenizer)
        pad = tokenizer.pad_token_id
        self.soft_id = pad if pad is not None else tokenizer.unk_token_id
        if self.soft_id is None:
            self.soft_id = 0
        self._text_ids = {
            i: self._enc([self._piece_text(p, p.value)])[0]
            for i, p in enumerate(self.pieces)
            if p.kind == "text"
        }
        self.ends_with_space = template[-1:].isspace()

    def _enc(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        out = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [list(x) for x in out]

    def _piece_text(self, piece: _Piece, text: str) -> str:
        if self.mode == "keep":
            return text if piece.kind == "text" else text.strip()
        text = text.strip()
        return " " + text if text and self.mode == "move" and piece.space_before else text

    @property
    def n_template_tokens(self) -> int:
        """Special tokens plus template words (no text fields, no soft tokens)."""
        return len(self.prefix) + len(self.suffix) + sum(len(v) for v in self._text_ids.values())

    def label_word_ids(self, word: str) -> list[int]:
        """Ids of ``word`` as it would follow the template's last piece (for decoders)."""
        return verbalizer_ids(self.tokenizer, word, self.ends_with_space, self.mode)

    def soft_counts(self, n_soft: int) -> tuple[int, ...]:
        """Tokens per soft slot for ``n_soft`` in all; explicit counts must add up to it."""
        specs = [p.value for p in self.pieces if p.kind == "soft"]
        if len(specs) == 1 and not specs[0]:
            return (n_soft,) if n_soft else ()
        counts = tuple(int(v) for v in specs)
        if n_soft == 0:
            return ()
        if sum(counts) != n_soft:
            raise SptError(
                f"data.template {self.template!r} places {sum(counts)} soft tokens "
                f"({list(counts)}) but the method uses {n_soft}: make the counts add "
                f"up to {n_soft} or set the method's length to {sum(counts)}."
            )
        return counts

    def encode(
        self,
        texts: Mapping[str, Sequence[str]],
        n_soft: int,
        max_length: int,
        label_reserve: int = 0,
    ) -> Encoded:
        counts = self.soft_counts(n_soft)
        fixed = self.n_template_tokens + n_soft + label_reserve
        budget = max_length - fixed
        if budget < 1:
            raise SptError(
                f"data.max_length={max_length} is too small for the template: special tokens and "
                f"template words take {self.n_template_tokens}, n_soft={n_soft}, "
                f"label_reserve={label_reserve}, leaving {budget} tokens for the text. "
                "Raise data.max_length or shorten data.template."
            )
        field_pieces = [(i, p) for i, p in enumerate(self.pieces) if p.kind == "field"]
        field_ids = {
            p.value: self._enc([self._piece_text(p, t) for t in texts[p.value]])
            for _, p in field_pieces
        }
        n_rows = len(next(iter(texts.values()))) if texts else 0
        ids: list[list[int]] = []
        soft_start: list[tuple[int, ...]] = []
        truncated = 0
        for r in range(n_rows):
            lengths = [len(field_ids[p.value][r]) for _, p in field_pieces]
            keep = fit_lengths(lengths, budget)
            if keep != lengths:
                truncated += 1
            cut = {p.value: k for (_, p), k in zip(field_pieces, keep, strict=True)}
            row = [] if self.soft_first else list(self.prefix)
            starts = []
            slot = iter(counts)
            for i, p in enumerate(self.pieces):
                if p.kind == "text":
                    row += self._text_ids[i]
                elif p.kind == "field":
                    row += field_ids[p.value][r][: cut[p.value]]
                elif counts:
                    starts.append(len(row))
                    row += [self.soft_id] * next(slot)
                if i == 0 and self.soft_first:
                    row += self.prefix
            row += self.suffix
            ids.append(row)
            soft_start.append(tuple(starts))
        return Encoded(ids, soft_start, n_soft, truncated, counts)
