"""What a method needs to know about a generation task, and its corpus metrics (BLEU, ROUGE-L).

``generation_metrics`` only arranges the inputs and aggregates; the scores come from
``sacrebleu.corpus_bleu`` and ``rouge_score.rouge_scorer``.

Multi-reference BLEU: sacrebleu takes references as *streams*, ``refs[k][i]`` = the k-th reference
of segment i, every stream as long as the hypotheses (it zips the streams, so a short stream would
silently drop segments). With a ragged number of references per segment (E2E test: 1 to 45), the
missing entries are filled with ``None``: sacrebleu (2.x, ``Metric._cache_references``) drops
``None`` per segment, so segment i is scored against exactly its own references; the brevity
penalty uses the closest of *those* reference lengths. An empty string would instead count as a
real zero-length reference and bias the brevity penalty, so it is never used as padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spt.errors import SptError

GENERATION_METRICS = ("bleu", "rougeL")


@dataclass(frozen=True)
class GenerationTaskInfo:
    """A text-to-text task as the method sees it.

    ``metrics`` are names from :data:`GENERATION_METRICS` (keys of :func:`generation_metrics`);
    ``max_new_tokens`` bounds generation at evaluation time, which uses ``num_beams`` beams.
    """

    name: str
    metrics: tuple[str, ...] = GENERATION_METRICS
    max_new_tokens: int = 64
    num_beams: int = 1


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-segment reference lists -> sacrebleu's streams, ragged counts padded with ``None``."""
    width = max(len(r) for r in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def generation_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], use_stemmer: bool = True
) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100, default 13a tokenization and exp smoothing) and ROUGE-L F1
    (rouge_score, 0-1: per prediction the best F1 over its references, then the mean).

    Args:
        predictions: one generated text per input.
        references: for each input, its reference texts (at least one; counts may differ).
        use_stemmer: Porter stemming in ROUGE-L (rouge_score's option).
    Returns:
        ``{"bleu": float, "rougeL": float}``.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    predictions = [str(p) for p in predictions]
    references = [[str(r) for r in refs] for refs in references]
    if len(predictions) != len(references):
        raise SptError(
            f"generation_metrics: {len(predictions)} predictions but "
            f"{len(references)} reference lists; give one list per prediction."
        )
    if not predictions:
        raise SptError("generation_metrics: no predictions to score.")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise SptError(f"generation_metrics: input(s) {empty[:5]} have no reference text.")
    bleu = sacrebleu.corpus_bleu(predictions, reference_streams(references)).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    rouge = [
        scorer.score_multi(refs, pred)["rougeL"].fmeasure
        for pred, refs in zip(predictions, references, strict=True)
    ]
    return {"bleu": float(bleu), "rougeL": float(sum(rouge) / len(rouge))}
