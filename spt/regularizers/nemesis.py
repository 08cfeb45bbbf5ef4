"""Nemesis: Fu, Wang, Huang & Zhang 2024, "Nemesis: Normalizing the Soft-prompt Vectors of
Vision-Language Models", ICLR 2024 (spotlight), arXiv:2408.13979; the authors' code is
github.com/ShyFoo/Nemesis (CoOp on CLIP).

The paper reports a *Low-Norm Effect*: shrinking the learned prompt vector at some positions
sometimes raises accuracy, while growing it usually lowers it. Nemesis adds a norm penalty on the
``N`` soft-prompt vectors ``ctx_i`` to the task loss:

- PUN (the paper's PEN, "position equality"): ``A * sum_i ||ctx_i||_p / N``;
- PAN ("position awareness"): each step, ``NP`` random positions are each rescaled by ``CW``
  (one corrupted prompt per position); the uncorrupted prompt and every corrupted one are scored
  on the batch in one no-grad forward (stacked along the batch axis), and only the positions
  whose corruption raised the number of correct rows are penalised:
  ``A * sum_{i helped} ||ctx_i||_p / |helped|`` (0 when none helped; the authors' code divides
  by the number of penalised positions, not by ``N``);
- ``loss = task loss + omega(e) * (beta * PUN + (1 - beta) * PAN)`` with
  ``omega(e) = 1 - sigmoid(k * (e - E / 2))``, ``k = 0.2``, over epochs ``e`` of ``E``.

Choices this text port makes explicit:

- Epochs are counted fractionally, ``e = optimizer steps so far / steps per epoch`` and
  ``E = the run's total optimizer steps / steps per epoch`` (Lightning's
  ``estimated_stepping_batches``: ``max_steps``, or ``max_epochs`` times the steps per epoch,
  whichever ends training first). The authors step ``e`` once per epoch. A run much shorter than
  an epoch keeps ``omega`` near 0.5 throughout; ``schedule: constant`` holds it at 1.
- In a task mixture the norms are those of the prompt-table rows the batch uses, averaged over
  those rows per position.
- The PAN probe runs with the method in eval mode (no dropout), so the corrupted and uncorrupted
  prompts are compared on the same deterministic forward.
"""

from __future__ import annotations

import contextlib
import math

import torch

from spt.errors import SptError, is_count

SCHEDULES = ("logistic", "constant")
NORM_ORDERS = {1: 1.0, 2: 2.0, "1": 1.0, "2": 2.0, "inf": math.inf, math.inf: math.inf}


# -- pure functions ------------------------------------------------------------------------
def position_norms(vectors: torch.Tensor, p: float) -> torch.Tensor:
    """``||ctx_i||_p`` per position ``[N]`` of ``vectors [..., N, d]``, averaged over the
    leading (task-row) axes."""
    norms = torch.linalg.vector_norm(vectors.float(), ord=p, dim=-1)
    return norms.reshape(-1, norms.shape[-1]).mean(0)


def penalty_norms(vectors: torch.Tensor, p: float) -> torch.Tensor:
    """``||ctx_i||_p`` per position ``[N]`` as the penalties use them: ``vectors [T, N, d]`` or
    class-specific ``[T, C, N, d]``; summed over classes, as the authors' ``normalize`` sums
    ``pos_alpha * ||ctx||`` over CoOp's class-specific contexts before dividing by the count of
    penalised positions (trainers/coop_nemesis.py), and averaged over task rows (spt's mixture
    axis). The logged norms (:func:`position_norms`) average over classes, as their
    ``calculate_norm`` does."""
    norms = torch.linalg.vector_norm(vectors.float(), ord=p, dim=-1)
    if norms.dim() == 3:  # [T, C, N]
        norms = norms.sum(1)
    return norms.reshape(-1, norms.shape[-1]).mean(0)


def pun(vectors: torch.Tensor, p: float) -> torch.Tensor:
    """Position-uniform norm (the paper's PEN) without its weight: ``sum_i ||ctx_i||_p / N``."""
    return penalty_norms(vectors, p).mean()


def pan(vectors: torch.Tensor, helped: torch.Tensor, p: float) -> torch.Tensor:
    """Position-aware norm without its weight: the mean ``||ctx_i||_p`` over the positions
    ``helped [N]`` (bool) marks; 0 when it marks none."""
    mask = helped.to(vectors.device, torch.float32)
    return (penalty_norms(vectors, p) * mask).sum() / mask.sum().clamp(min=1.0)


def pan_positions(correct: torch.Tensor, positions: torch.Tensor, n_positions: int) -> torch.Tensor:
    """Which positions PAN penalises, ``[n_positions]`` bool.

    ``correct [K + 1]``: correct rows of the batch with the uncorrupted prompt (index 0) and with
    position ``positions[k]`` corrupted (index ``k + 1``). A position is penalised when its
    corruption strictly raised that count."""
    positions = positions.to(correct.device)
    helped = torch.zeros(n_positions, dtype=torch.bool, device=correct.device)
    helped[positions[correct[1:] > correct[0]]] = True
    return helped


def sample_positions(n_positions: int, k: int, generator: torch.Generator | None = None):
    """``k`` distinct random positions out of ``n_positions``, ``[k]`` long."""
    return torch.randperm(n_positions, generator=generator)[:k]


def corrupted_prompts(
    prompts: torch.Tensor, positions: torch.Tensor, weight: float
) -> torch.Tensor:
    """``prompts [B, ..., N, d]`` -> ``[(K + 1) * B, ..., N, d]``: the prompts unchanged, then one
    copy per position in ``positions [K]`` with that position's vector times ``weight``
    (variant-major, as :func:`stack_batch` repeats the batch). Middle axes (e.g. CoOp's
    class-specific contexts ``[B, C, N, d]``) are corrupted alike."""
    k, n = len(positions), prompts.shape[-2]
    scale = torch.ones(k + 1, n, dtype=prompts.dtype, device=prompts.device)
    scale[torch.arange(1, k + 1, device=prompts.device), positions.to(prompts.device)] = weight
    scale = scale.reshape(k + 1, *([1] * (prompts.dim() - 2)), n, 1)
    return (prompts.unsqueeze(0) * scale).flatten(0, 1)


def stack_batch(batch: dict, copies: int) -> dict:
    """The batch repeated ``copies`` times along the batch axis (block after block)."""
    b = len(batch["labels"])
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == b:
            value = value.repeat(copies, *([1] * (value.dim() - 1)))
        elif isinstance(value, list) and len(value) == b:
            value = value * copies
        out[key] = value
    return out


def probe_scores(module, batch: dict, positions: torch.Tensor, weight: float) -> torch.Tensor:
    """Class scores ``[K + 1, B, C]`` of the batch with the module's own prompt (index 0) and
    with each position of ``positions [K]`` rescaled by ``weight``, from ONE forward over the
    variants stacked along the batch axis."""
    prompts = module.soft_prompts(batch["task_ids"])
    copies = len(positions) + 1
    scores = module.scores_with_prompts(
        stack_batch(batch, copies), corrupted_prompts(prompts, positions, weight)
    )
    return scores.reshape(copies, len(batch["labels"]), -1)


def omega(epoch: float, total_epochs: float, growth: float = 0.2) -> float:
    """The penalty's weight at ``epoch`` of ``total_epochs``: ``1 - sigmoid(growth * (epoch -
    total_epochs / 2))``; 0.5 at half time, falling from about 1 to about 0 over long runs."""
    x = growth * (epoch - total_epochs / 2)
    if x >= 0:
        return math.exp(-x) / (1.0 + math.exp(-x))
    return 1.0 / (1.0 + math.exp(x))


def training_progress(trainer) -> tuple[float, float]:
    """``(epoch, total_epochs)`` of a fitting Lightning trainer, counted in (fractional) epochs
    of optimizer steps."""
    batches = trainer.num_training_batches
    total_steps = trainer.estimated_stepping_batches
    if not (math.isfinite(batches) and math.isfinite(total_steps)) or batches < 1:
        raise SptError(
            "regularizer=nemesis schedules its weight over the run's epochs: train on "
            "a sized dataset for a finite trainer.max_steps or trainer.max_epochs, or "
            "set regularizer.schedule=constant"
        )
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    return trainer.global_step / per_epoch, total_steps / per_epoch


@contextlib.contextmanager
def eval_mode(module):
    """The module in eval mode inside, its previous mode restored after."""
    was = module.training
    module.train(False)
    try:
        yield module
    finally:
        module.train(was)


# -- the regularizer -----------------------------------------------------------------------
class Nemesis:
    """The Nemesis penalty, called once per training step as ``term, logs = reg(module, batch)``.

    ``module`` provides ``soft_prompts(task_ids [B]) -> [B, N, d]`` and
    ``scores_with_prompts(batch, prompts [B', N, d]) -> [B', C]`` (see
    ``scores_with_prompts``; CoOp's class-specific contexts add a class axis,
    ``[B, C, N, d]``); ``batch`` holds ``labels``, ``task_ids`` and whatever the module's scoring
    reads (``input_ids`` or ``pixel_values``). ``term`` is a scalar to add to the task
    loss; ``logs`` holds ``train/pun``, ``train/pan`` (when ``beta < 1``),
    ``train/pan_positions`` (how many positions PAN penalised), ``train/omega`` and
    ``train/prompt_norm/<i>`` per position (written to the loggers at every step, see
    ``every_step_logs``). ``epoch`` / ``total_epochs`` default to the progress of
    ``module.trainer`` (see :func:`training_progress`).

    Args (the YAML's keys, see ``spt/conf/regularizer/nemesis.yaml``):
        weight: ``A``, the scale of both penalties.
        p: the vector norm: 1, 2 or ``inf``.
        n_positions: ``NP``, positions corrupted per step for PAN; ``"random{n}"`` (the
            authors' ``NP=random{n}``) penalises ``n`` random positions each step without
            probing whether rescaling them helped.
        corruption_weight: ``CW``, the factor a corrupted position is rescaled by.
        beta: 1 = PUN only, 0 = PAN only.
        schedule: ``logistic`` (``omega`` above) or ``constant`` (``omega = 1``).
        growth: ``k`` of the logistic schedule.
        seed: seeds the PAN position draws (kept apart from the global RNG).
    """

    name = "nemesis"
    requires = ("soft_prompts", "scores_with_prompts")  # what a method must provide
    every_step_logs = ("train/prompt_norm/",)  # written at every step, not every n-th

    def __init__(
        self,
        weight: float = 1.0,
        p=2,
        n_positions: int = 1,
        corruption_weight: float = 0.001,
        beta: float = 0.5,
        schedule: str = "logistic",
        growth: float = 0.2,
        seed: int = 0,
    ):
        if p not in NORM_ORDERS:
            raise SptError(f"regularizer.p={p!r}: choose 1, 2 or inf")
        for key, value in (
            ("weight", weight),
            ("corruption_weight", corruption_weight),
            ("growth", growth),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise SptError(f"regularizer.{key}={value!r} must be a number >= 0")
        if not isinstance(beta, int | float) or not 0 <= beta <= 1:
            raise SptError(
                f"regularizer.beta={beta!r} must be in [0, 1] (1 = PUN only, 0 = PAN only)"
            )
        self.random_positions = isinstance(n_positions, str) and n_positions.startswith("random")
        if self.random_positions and n_positions[len("random") :].isdigit():
            n_positions = int(n_positions[len("random") :])
        if not is_count(n_positions):
            raise SptError(
                f"regularizer.n_positions={n_positions!r} must be an integer >= 1 "
                "or random<n> (n random positions, unprobed)"
            )
        if schedule not in SCHEDULES:
            raise SptError(f"regularizer.schedule={schedule!r}: choose {' or '.join(SCHEDULES)}")
        self.weight = float(weight)
        self.p = NORM_ORDERS[p]
        self.n_positions = n_positions
        self.corruption_weight = float(corruption_weight)
        self.beta = float(beta)
        self.schedule = schedule
        self.growth = float(growth)
        self.generator = torch.Generator().manual_seed(int(seed))

    def check(self, method) -> None:
        """Refuse, before training, a method this regularizer cannot serve."""
        if method.objective.generative:
            raise SptError(
                f"regularizer={self.name} compares class scores (PAN counts correct "
                f"rows); data={method.objective.task.name} is a generation task: use a "
                "classification dataset or regularizer=none"
            )
        n = method.n_soft_tokens
        if self.beta < 1 and self.n_positions > n:
            raise SptError(
                f"regularizer.n_positions={self.n_positions} exceeds the prompt's {n} "
                f"vectors: set regularizer.n_positions between 1 and {n}"
            )

    def weight_at(self, epoch: float | None, total_epochs: float | None) -> float:
        """``omega`` at ``epoch`` of ``total_epochs`` (1 throughout when constant)."""
        if self.schedule == "constant":
            return 1.0
        return omega(epoch, total_epochs, self.growth)

    def __call__(
        self, module, batch: dict, *, epoch: float | None = None, total_epochs: float | None = None
    ) -> tuple[torch.Tensor, dict]:
        if self.schedule == "logistic" and (epoch is None or total_epochs is None):
            epoch, total_epochs = training_progress(module.trainer)
        w = self.weight_at(epoch, total_epochs)
        vectors = module.soft_prompts(batch["task_ids"].unique())  # the table rows in use
        n = vectors.shape[-2]
        pun_term = self.weight * pun(vectors, self.p)
        logs = {"train/pun": pun_term.detach(), "train/omega": w}
        term = self.beta * pun_term
        if self.beta < 1:
            helped = self.helped_positions(module, batch, n)
            pan_term = self.weight * pan(vectors, helped, self.p)
            term = term + (1 - self.beta) * pan_term
            logs["train/pan"] = pan_term.detach()
            logs["train/pan_positions"] = helped.sum().float()
        for i, value in enumerate(position_norms(vectors.detach(), self.p)):
            logs[f"train/prompt_norm/{i}"] = value
        return w * term, logs

    def helped_positions(self, module, batch: dict, n: int) -> torch.Tensor:
        """``[n]`` bool: the drawn positions whose rescaling raised the batch's correct rows
        (with ``random<n>``: the drawn positions, unprobed)."""
        positions = sample_positions(n, min(self.n_positions, n), self.generator)
        if self.random_positions:
            helped = torch.zeros(n, dtype=torch.bool)
            helped[positions] = True
            return helped
        with torch.no_grad(), eval_mode(module):
            scores = probe_scores(module, batch, positions, self.corruption_weight)
        correct = (scores.argmax(-1) == batch["labels"].unsqueeze(0)).sum(-1)
        return pan_positions(correct, positions, n)
