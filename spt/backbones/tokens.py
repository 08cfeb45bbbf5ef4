"""How a tokenizer produces a label word after a template: one tokenisation for the scorer
(the architectures' ``label_tokens``) and the data modules (label reserve, CPT's context)."""

from __future__ import annotations


def space_mode(tokenizer) -> str:
    """``keep``, ``move`` or ``drop``: how separately tokenized pieces rebuild the whole string."""

    def enc(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    whole = enc("Review: hello world")
    if enc("Review: ") + enc("hello world") == whole:
        return "keep"
    if enc("Review:") + enc(" hello world") == whole:
        return "move"
    if enc("Review:") + enc("hello world") == whole:
        return "drop"
    return "keep"


def verbalizer_ids(
    tokenizer, word: str, after_space: bool = False, mode: str | None = None
) -> list[int]:
    """Token ids of a label word as a decoder would produce it after the template: the one
    tokenisation both the scorer (``Decoder.label_tokens``) and the data module
    (label reserve, CPT's context) use. ``after_space``: the template ends in a space, which
    the word then does not repeat (unless the tokenizer moves spaces onto the next piece);
    ``mode`` is :func:`space_mode` (computed when not given). A lone SentencePiece
    word-boundary token (``"\u2581"``) emitted for the leading space is dropped: the word's own
    first piece carries the boundary. (A byte-level tokenizer's space byte is kept: the word
    follows the template after it.)"""
    mode = mode or space_mode(tokenizer)
    bare = word.strip()
    text = bare if mode == "drop" or (mode == "keep" and after_space) else " " + bare

    def enc(t: str) -> list[int]:
        return list(tokenizer(t, add_special_tokens=False)["input_ids"])

    ids = enc(text)
    if text != bare and ids and tokenizer.convert_ids_to_tokens(ids[0]) == "\u2581":
        plain = enc(bare)
        if ids[1:] == plain:
            ids = plain
    return ids
