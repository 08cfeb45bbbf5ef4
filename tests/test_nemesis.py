"""Nemesis (Fu et al., ICLR 2024): the PUN and PAN norms, the omega schedule, the batched PAN
probe, composition with every text method that owns prompt vectors, refusal of the others, and
one end-to-end run."""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import types
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from spt import methods
from spt.backbones import tiny
from spt.build import build
from spt.errors import SptError
from spt.methods.prompt import PromptTuning
from spt.regularizers import attach, methods_providing
from spt.regularizers.nemesis import (
    Nemesis,
    corrupted_prompts,
    omega,
    pan,
    pan_positions,
    probe_scores,
    pun,
    training_progress,
)
from tests.test_prompt import TASK, make_batch
from tests.test_run import CONF, run_dirs, spt_run

ADAM = functools.partial(torch.optim.Adam, lr=0.05)


pytestmark = pytest.mark.usefixtures("one_thread")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides))


# -- PUN ---------------------------------------------------------------------------------
# Two positions: (3, -4, 0) and (1, 1, -1); a second task row doubles every vector.
VECTORS = torch.tensor([[[3.0, -4.0, 0.0], [1.0, 1.0, -1.0]]])
HAND = {1: (7 + 3) / 2, 2: (5 + math.sqrt(3)) / 2, "inf": (4 + 1) / 2}


@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_pun_equals_the_hand_computed_mean_norm(p):
    order = math.inf if p == "inf" else p
    assert pun(VECTORS, order).item() == pytest.approx(HAND[p])
    two_rows = torch.cat([VECTORS, 2 * VECTORS])  # rows in use are averaged per position
    assert pun(two_rows, order).item() == pytest.approx(1.5 * HAND[p])
    # through the regularizer: A * PUN, constant omega, PUN only
    module = _Stub(VECTORS)
    reg = Nemesis(weight=3.0, p=p, beta=1.0, schedule="constant")
    term, logs = reg(module, _stub_batch([2.0]))
    assert term.item() == pytest.approx(3.0 * HAND[p])
    assert logs["train/pun"].item() == pytest.approx(3.0 * HAND[p])
    assert "train/pan" not in logs and logs["train/omega"] == 1.0
    norms = [logs[f"train/prompt_norm/{i}"].item() for i in range(2)]
    assert sum(norms) / 2 == pytest.approx(HAND[p])


def test_pun_gradient_reaches_the_prompt_table():
    m = PromptTuning(tiny("bert"), task=TASK, length=3, init="uniform", optimizer=ADAM)
    batch = make_batch(m.base, ["ab", "abc"], 3)
    term, _ = Nemesis(weight=2.0, beta=1.0, schedule="constant")(m, batch)
    term.backward()
    w = m.prompt.weight.detach()[0]
    expected = 2.0 * w / w.norm(dim=-1, keepdim=True) / 3  # d/dv of A * mean_i ||v_i||_2
    torch.testing.assert_close(m.prompt.weight.grad[0], expected)


# -- PAN on a batch built so that we know which positions help ---------------------------
class _Stub(nn.Module):
    """A classifier whose class-1 score is ``t - ||v1|| - ||v2|| + 5 (||v0|| - 1)`` (class 0
    scores 0): shrinking v1 or v2 helps, shrinking v0 hurts, v3 does not matter."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(vectors.clone())
        self.calls = 0

    def soft_prompts(self, task_ids):
        return self.table[task_ids]

    def scores_with_prompts(self, batch, prompts):
        self.calls += 1
        n = prompts.norm(dim=-1)
        s1 = batch["t"] - n[:, 1] - n[:, 2] + 5 * (n[:, 0] - 1)
        return torch.stack([torch.zeros_like(s1), s1], -1)


def _stub_batch(t: list[float]) -> dict:
    b = len(t)
    return {
        "input_ids": torch.zeros(b, 1, dtype=torch.long),
        "labels": torch.ones(b).long(),
        "task_ids": torch.zeros(b, dtype=torch.long),
        "t": torch.tensor(t),
    }


# norms 1, 0.5, 1.5, 2 -> class-1 score t - 2; rows t = 1.8 (wrong) and 3.0 (right): 1 correct.
# Rescaled by 0.1: v1 -> t - 1.55 (2 correct), v2 -> t - 0.65 (2), v0 -> t - 6.5 (0), v3 -> (1).
PAN_VECTORS = torch.tensor([[[1.0, 0.0], [0.0, 0.5], [1.5, 0.0], [0.0, 2.0]]])
PAN_BATCH = [1.8, 3.0]


def test_pan_penalises_exactly_the_positions_whose_corruption_helped():
    module = _Stub(PAN_VECTORS)
    scores = probe_scores(module, _stub_batch(PAN_BATCH), torch.arange(4), 0.1)
    correct = (scores.argmax(-1) == 1).sum(-1)
    assert correct.tolist() == [1, 0, 2, 2, 1]  # uncorrupted, then v0, v1, v2, v3 rescaled
    helped = pan_positions(correct, torch.arange(4), 4)
    assert helped.tolist() == [False, True, True, False]
    assert pan(PAN_VECTORS, helped, 2.0).item() == pytest.approx((0.5 + 1.5) / 2)
    assert pan(PAN_VECTORS, torch.zeros(4, dtype=torch.bool), 2.0).item() == 0.0

    module.train()
    reg = Nemesis(weight=2.0, beta=0.0, n_positions=4, corruption_weight=0.1, schedule="constant")
    calls = module.calls
    term, logs = reg(module, _stub_batch(PAN_BATCH))
    assert module.calls == calls + 1, "all corrupted variants in one forward"
    assert module.training, "the probe restores the training mode"
    assert term.item() == pytest.approx(2.0 * 1.0)
    assert logs["train/pan"].item() == pytest.approx(2.0)
    assert logs["train/pan_positions"].item() == 2
    term.backward()  # PAN's gradient reaches only the penalised positions
    touched = module.table.grad[0].abs().sum(-1) > 0
    assert touched.tolist() == [False, True, True, False]


def test_pan_draws_n_positions_and_mixes_with_pun_by_beta():
    module = _Stub(PAN_VECTORS)
    reg = Nemesis(
        weight=1.0, beta=0.25, n_positions=1, corruption_weight=0.1, schedule="constant", seed=3
    )
    seen = set()
    for _ in range(20):
        term, logs = reg(module, _stub_batch(PAN_BATCH))
        pan_value = logs["train/pan"].item()
        assert pan_value in (0.0, 0.5, 1.5)  # none, v1 or v2 (one drawn position per step)
        seen.add(pan_value)
        pun_value = (1 + 0.5 + 1.5 + 2) / 4
        assert term.item() == pytest.approx(0.25 * pun_value + 0.75 * pan_value)
    assert seen == {0.0, 0.5, 1.5}


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
@pytest.mark.parametrize("kind", methods.names(prompt="input"))  # every input-vector method
def test_batched_probe_equals_each_corrupted_variant_run_alone(kind, family):
    bb = tiny(family)
    init = {} if kind == "ptuning" else {"init": "uniform"}
    m = methods.get(kind).cls(bb, TASK, length=4, optimizer=ADAM, **init)
    m.eval()
    batch = make_batch(bb, ["a fine film", "dull", "not bad"], 4)
    positions = torch.tensor([2, 0, 3])
    with torch.no_grad():
        batched = probe_scores(m, batch, positions, 0.1)
        own = m.soft_prompts(batch["task_ids"])
        variants = corrupted_prompts(own, positions, 0.1).view(4, 3, 4, -1)
        alone = torch.stack([m.scores_with_prompts(batch, v) for v in variants])
        forward = m(batch)
    assert batched.shape == (4, 3, 2)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[0], forward, atol=1e-5, rtol=1e-4)
    for k, pos in enumerate(positions.tolist(), start=1):  # exactly one position rescaled
        changed = (variants[k] != own).any(-1).any(0)
        assert changed.nonzero().flatten().tolist() == [pos]
        torch.testing.assert_close(variants[k][:, pos], 0.1 * own[:, pos])


# -- omega -------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [1, 10, 50, 200])
def test_omega_is_one_half_at_half_time_and_decreases(total):
    assert omega(total / 2, total) == pytest.approx(0.5)
    values = [omega(total * i / 100, total) for i in range(101)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert omega(0, 200) > 0.99 and omega(200, 200) < 0.01  # the paper's long runs: ~1 -> ~0
    assert Nemesis(schedule="constant").weight_at(0.0, total) == 1.0


def test_omega_values_by_hand():
    """1 - sigmoid(0.2 (e - E/2)): the growth rate 0.2 pinned, not only the shape."""
    assert omega(0, 10) == pytest.approx(1 - 1 / (1 + math.exp(1.0)))  # 0.7311
    assert omega(10, 10) == pytest.approx(1 / (1 + math.exp(1.0)))  # 0.2689
    assert omega(3, 10, growth=0.5) == pytest.approx(1 - 1 / (1 + math.exp(1.0)))
    assert Nemesis(growth=0.5).weight_at(3, 10) == pytest.approx(omega(3, 10, 0.5))


def test_training_progress_counts_fractional_epochs_of_optimizer_steps():
    trainer = SimpleNamespace(
        num_training_batches=10,
        accumulate_grad_batches=2,
        estimated_stepping_batches=25,
        global_step=5,
    )
    assert training_progress(trainer) == (1.0, 5.0)
    trainer.estimated_stepping_batches = float("inf")
    with pytest.raises(SptError, match="max_steps"):
        training_progress(trainer)


# -- composition through Hydra and spt.build.build ---------------------------------------
@pytest.mark.parametrize(
    "method,model", [("prompt", "tiny-bert"), ("ptuning", "tiny-llama"), ("mpt", "tiny-t5")]
)
def test_regularizer_composes_and_trains_one_step(method, model, data_dir):
    cfg = _compose(
        f"method={method}",
        f"model={model}",
        "regularizer=nemesis",
        f"data.root={data_dir}",
        "data.train_limit=8",
        "data.dev_limit=8",
        "data.batch_size=4",
        "regularizer.n_positions=2",
    )
    _, dm, m = build(cfg)
    assert isinstance(m.regularizer, Nemesis) and m.regularizer.n_positions == 2
    frozen = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    own = {k: v.clone() for k, v in m.state_dict().items()}
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(m, datamodule=dm)
    logs = trainer.callback_metrics
    for key in (
        "train/pun",
        "train/pan",
        "train/omega",
        "train/reg",
        "train/task_loss",
        "train/pan_positions",
    ):
        assert key in logs, key
    # 8 rows in batches of 4: 2 steps per epoch, 1 step in all -> E = 0.5, e = 0
    assert logs["train/omega"].item() == pytest.approx(omega(0, 0.5))
    assert logs["train/loss"].item() == pytest.approx(
        logs["train/task_loss"].item() + logs["train/reg"].item(), abs=1e-5
    )
    assert logs["train/pun"].item() > 0
    assert all(torch.equal(v, frozen[k]) for k, v in m.backbone.state_dict().items())
    assert any(not torch.equal(v, own[k]) for k, v in m.state_dict().items())


def test_prompt_norms_are_written_at_every_step(data_dir, tmp_path):
    """Per-position norms reach the loggers at every step, past ``log_every_n_steps``."""
    from lightning.pytorch.loggers import CSVLogger

    cfg = _compose(
        "method=prompt",
        "model=tiny-bert",
        "regularizer=nemesis",
        "method.length=3",
        f"data.root={data_dir}",
        "data.train_limit=16",
        "data.batch_size=4",
    )
    _, dm, m = build(cfg)
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = L.Trainer(
        max_steps=3,
        logger=logger,
        log_every_n_steps=50,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(m, datamodule=dm)
    with (tmp_path / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/prompt_norm/0")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(float(r[f"train/prompt_norm/{i}"]) > 0 for r in rows for i in range(3))
    assert "train/prompt_norm/3" not in rows[0]


def test_default_run_has_no_regularizer(data_dir):
    cfg = _compose("model=tiny-bert", f"data.root={data_dir}", "data.train_limit=8")
    _, _, m = build(cfg)
    assert m.regularizer is None


@pytest.mark.parametrize("method", ["prefix", "ptuning_v2", "cpt"])
def test_methods_without_prompt_vectors_are_refused_by_name(method, data_dir):
    cfg = _compose(
        f"method={method}",
        "model=tiny-llama",
        "regularizer=nemesis",
        f"data.root={data_dir}",
        "data.train_limit=8",
        "data.dev_limit=8",
    )
    with pytest.raises(
        SptError,
        match=rf"method={method} has none.*method=coop \| dept \| mpt \| "
        r"prompt \| ptuning.*regularizer=none",
    ):
        build(cfg)


def test_the_methods_with_prompt_vectors_are_found_by_capability():
    assert methods_providing(Nemesis.requires) == ["coop", "dept", "mpt", "prompt", "ptuning"]


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["data=e2e", "model=tiny-llama", "method.init=sampled_vocab"], "generation task"),
        (["regularizer.n_positions=21"], "n_positions=21 exceeds the prompt's 20"),
        (["regularizer.p=3"], "regularizer.p=3"),
        (["regularizer.beta=1.5"], "regularizer.beta=1.5"),
        (["regularizer.schedule=cosine"], "logistic or constant"),
    ],
)
def test_bad_settings_are_refused_before_training(overrides, needle, data_dir):
    cfg = _compose(
        "model=tiny-bert",
        "regularizer=nemesis",
        f"data.root={data_dir}",
        "data.train_limit=8",
        "data.dev_limit=8",
        *overrides,
    )
    with pytest.raises(SptError, match=needle):
        build(cfg)


def test_mpt_distillation_step_adds_the_regularizer(data_dir, tmp_path):
    from tests.test_mpt import _source

    m, dm = _source(data_dir, tmp_path)
    attach(Nemesis(beta=0.5, n_positions=2), m)
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(m, datamodule=dm)
    logs = trainer.callback_metrics
    assert {"train/kl", "train/pun", "train/pan", "train/reg"} <= set(logs)


def test_regularizer_yamls_comment_every_key():
    for path in sorted((CONF / "regularizer").glob("*.yaml")):
        for line in path.read_text().splitlines():
            if re.match(r"^\s*\w+:", line) and not line.startswith("_target_"):
                assert "  # " in line, f"{path.name}: key without a comment: {line!r}"


# -- end to end --------------------------------------------------------------------------
def test_run_with_nemesis_end_to_end(tmp_path, data_dir):
    r = spt_run(
        "model=tiny-bert",
        "regularizer=nemesis",
        "debug=fast",
        "logger=csv",
        out=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("train/pun", "train/pan", "train/omega", "train/prompt_norm/19"):
        assert any(row.get(key) for row in rows), key


def test_class_specific_penalty_sums_over_classes_as_the_authors_code():
    """CoOp's class-specific contexts ``[T, C, N, d]``: the authors' ``normalize`` sums
    ``||ctx||`` over classes (trainers/coop_nemesis.py), so PUN is C times the one-class mean;
    the logged per-position norms average over classes (their ``calculate_norm``)."""
    from spt.regularizers.nemesis import position_norms, pun

    ctx = torch.randn(1, 5, 4, 8, generator=torch.Generator().manual_seed(0))  # C=5, N=4
    by_hand = torch.linalg.vector_norm(ctx[0], dim=-1).sum() / 4  # sum over classes, / N
    torch.testing.assert_close(pun(ctx, 2.0), by_hand)
    torch.testing.assert_close(
        position_norms(ctx, 2.0), torch.linalg.vector_norm(ctx[0], dim=-1).mean(0)
    )


def test_random_positions_mode_penalises_drawn_positions_unprobed():
    """``n_positions: random2`` (the authors' NP=random{n}): two positions a step, no probe."""
    from spt.regularizers.nemesis import Nemesis

    reg = Nemesis(n_positions="random2", beta=0.0, schedule="constant")
    module = types.SimpleNamespace()  # no scores_with_prompts: a probe would fail
    helped = reg.helped_positions(module, {}, 6)
    assert helped.dtype == torch.bool and int(helped.sum()) == 2
    with pytest.raises(SptError, match="random<n>"):
        Nemesis(n_positions="random")
