"""Context-Aware Prompt Tuning (Blau et al. 2024) on the tiny decoder with real SST-2 rows: the
context and its token types, zero-initialised deltas, frozen label tokens, the projection after
each optimizer step, the decayed context loss, mixed-task batches, artifacts and bad input."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from spt.backbones import tiny
from spt.backbones.tiny_models import tiny_tokenizer
from spt.core.artifact import save_artifact
from spt.data import TextClassificationDataModule
from spt.errors import SptError
from spt.methods.cpt import CPT, FORMAT, INPUT, LABEL, SPECIAL
from spt.methods.prompt import PromptTuning
from tests.test_prompt import _manual_decoder  # the one-sequence reference scorer

REPO = Path(__file__).resolve().parents[1]
SST2_LOCAL = {
    split: {
        "path": f"sst2/{split}.tsv",
        "format": "tsv",
        "quoting": "none",
        "fields": {"sentence": "sentence"},
        "label": "label",
        "label_map": {0: "negative", 1: "positive"},
    }
    for split in ("train", "dev")
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dm(data_dir):
    """SST-2 for the tiny decoder: 40 train rows, 8 dev rows, left padding."""
    return TextClassificationDataModule(
        name="sst2",
        tokenizer=tiny_tokenizer("llama"),
        arch="decoder",
        root=str(data_dir),
        local=SST2_LOCAL,
        text_fields=["sentence"],
        template="{soft}Review: {sentence} Sentiment:",
        label_names=["negative", "positive"],
        label_words=["negative", "positive"],
        train_limit=40,
        dev_limit=8,
        batch_size=4,
        max_length=128,
    )


def build(dm, backbone=None, lr=1e-2, **kw) -> CPT:
    return CPT(
        backbone or tiny("llama"),
        task=dm.task,
        datamodule=dm,
        optimizer=functools.partial(torch.optim.AdamW, lr=lr),
        **kw,
    )


def dev_batch(dm, task_ids=None) -> dict:
    batch = next(iter(dm.val_dataloader()))
    if task_ids is not None:
        batch["task_ids"] = torch.tensor(task_ids)
    return batch


def randomise(m: CPT, scale: float = 1.0, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.delta.weight.copy_(torch.randn(m.delta.weight.shape, generator=g) * scale)


def fit(m: CPT, dm, steps: int, tmp_path) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(m, train_dataloaders=dm.train_dataloader())
    return trainer


# -- a reference: the context and the query as ONE sequence, no cache -----------------------
def reference_scores(m: CPT, batch: dict) -> torch.Tensor:
    """``[context + delta; query without its BOS]`` per row, each label word scored by hand."""
    rows = []
    prefix = m.query_prefix
    for i in range(len(batch["labels"])):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        if ids[: len(prefix)] == prefix:
            ids = ids[len(prefix) :]
        ctx = m.context_embeds(batch["task_ids"][i : i + 1])[0]
        x = torch.cat([ctx, m.base.input_embeddings(torch.tensor(ids))])
        rows.append(
            torch.stack([_manual_decoder(m.backbone, x, w) for w in m.objective.labels[0].lists()])
        )
    return torch.stack(rows)


# -- the context -------------------------------------------------------------------------
def test_context_examples_tokenise_like_the_queries(dm):
    for e in dm.context_examples(8, seed=0):  # long rows are cut to fit data.max_length
        assert len(e["ids"]) <= dm.max_length
    dm = TextClassificationDataModule(
        **{**dm.hparams, "tokenizer": dm.tokenizer, "max_length": 1024}
    )  # nothing cut: exact round trip
    examples = dm.context_examples(4, seed=3)
    assert examples == dm.context_examples(4, seed=3)  # seeded
    assert examples != dm.context_examples(4, seed=4)
    assert sorted(e["label"] for e in examples) == [0, 0, 1, 1]  # balanced by default
    enc = dm.encoder
    for e in examples:
        assert len(e["ids"]) == len(e["types"]) and set(e["types"]) == {"input", "format", "label"}
        label = [i for i, t in zip(e["ids"], e["types"], strict=True) if t == "label"]
        assert label == enc.label_word_ids(dm.label_words[e["label"]])
        assert e["types"][-len(label) :] == ["label"] * len(label)  # the label word comes last
        text = dm.tokenizer.decode(
            [i for i, t in zip(e["ids"], e["types"], strict=True) if t == "input"]
        )
        query = enc.encode({"sentence": [text]}, 0, 256).ids[0]  # the row as a query
        assert query == enc.prefix + e["ids"][: -len(label)] + enc.suffix
        template = [i for i, t in zip(e["ids"], e["types"], strict=True) if t == "format"]
        assert dm.tokenizer.decode(template) == "Review: " + " Sentiment:"


def test_context_layout(dm):
    m = build(dm, n_examples=3, separator="\n", seed=1)
    ids, types, example = (
        m.context_ids.tolist(),
        m.context_types.tolist(),
        m.context_example.tolist(),
    )
    examples = dm.context_examples(3, seed=1)
    sep = dm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    want_ids = list(m.query_prefix)
    for e in examples:
        want_ids += e["ids"] + sep
    assert ids == want_ids and m.query_prefix == [dm.tokenizer.bos_token_id]
    assert types[0] == SPECIAL and example[0] == -1
    assert m.n_examples == 3 and sorted(set(example)) == [-1, 0, 1, 2]
    for k, e in enumerate(examples):  # separators are format tokens of the example before them
        pos = [p for p, x in enumerate(example) if x == k]
        assert [types[p] for p in pos[-len(sep) :]] == [FORMAT] * len(sep)
        assert [ids[p] for p in pos if types[p] == LABEL] == [
            i for i, t in zip(e["ids"], e["types"], strict=True) if t == "label"
        ]
    assert torch.equal(m.context_base, m.base.input_embeddings.weight[m.context_ids])
    assert m.n_soft_tokens == 0
    assert m.delta.weight.shape == (1, len(ids), 32) and m.delta.weight.dtype == torch.float32


# -- deltas, the frozen label tokens and the projection ----------------------------------
def test_training_moves_deltas_keeps_labels_zero_and_projects(dm, tmp_path):
    m = build(dm, lr=1.0)  # a step this large leaves every trainable delta far outside its ball
    assert torch.equal(m.delta.weight, torch.zeros_like(m.delta.weight))
    backbone0 = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    assert fit(m, dm, 2, tmp_path).global_step == 2
    w = m.delta.weight.detach()[0]
    types = m.context_types
    frozen = (types == LABEL) | (types == SPECIAL)
    assert torch.equal(w[frozen], torch.zeros_like(w[frozen]))  # exactly zero
    moved = w[~frozen].norm(dim=-1)
    assert (moved > 0).all()
    radius = m.radius
    assert radius[types == INPUT].unique().tolist() == pytest.approx([0.2 * math.sqrt(32 / 2048)])
    assert radius[types == FORMAT].unique().tolist() == pytest.approx([0.1 * math.sqrt(32 / 2048)])
    ratio = w.norm(dim=-1)[~frozen] / radius[~frozen]
    assert ratio.max() <= 1 + 1e-5  # every delta inside its ball after the step
    assert ratio.min() >= 1 - 1e-5  # ... and on its surface: the step overshot, projection ran
    assert all(torch.equal(v, backbone0[k]) for k, v in m.backbone.state_dict().items())


def test_projection_leaves_deltas_inside_the_ball_untouched(dm):
    m = build(dm)
    r = m.radius
    p_in = int((m.context_types == INPUT).nonzero()[0])
    p_fmt = int((m.context_types == FORMAT).nonzero()[0])
    p_lab = int((m.context_types == LABEL).nonzero()[0])
    g = torch.Generator().manual_seed(0)
    inside = torch.randn(32, generator=g)
    inside *= 0.5 * r[p_in] / inside.norm()
    outside = torch.randn(32, generator=g)
    outside *= 3 * r[p_fmt] / outside.norm()
    with torch.no_grad():
        m.delta.weight[0, p_in] = inside
        m.delta.weight[0, p_fmt] = outside
        m.delta.weight[0, p_lab] = 1.0  # a label delta set by hand is zeroed
    m.project_deltas()
    w = m.delta.weight.detach()[0]
    assert torch.equal(w[p_in], inside)  # bit-for-bit
    assert w[p_fmt].norm() == pytest.approx(float(r[p_fmt]), rel=1e-5)
    assert torch.allclose(w[p_fmt] / w[p_fmt].norm(), outside / outside.norm(), atol=1e-6)
    assert torch.equal(w[p_lab], torch.zeros(32))


def test_forward_uses_an_out_of_ball_delta_unprojected(dm):
    """Projection is a step after the optimizer's, never part of the forward pass."""
    m = build(dm).eval()
    p = int((m.context_types == INPUT).nonzero()[3])
    with torch.no_grad():
        m.delta.weight[0, p] = 50 * m.radius[p]  # far outside the ball
    big = m.delta.weight.detach().clone()
    batch = dev_batch(dm)
    with torch.no_grad():
        scores = m(batch)
        assert torch.equal(m.delta.weight, big)  # the forward pass did not project
        torch.testing.assert_close(scores, reference_scores(m, batch), atol=1e-4, rtol=1e-5)
        m.project_deltas()
        assert not torch.allclose(m(batch), scores, atol=1e-5)


# -- forward ---------------------------------------------------------------------------
def test_context_cache_equals_one_long_sequence(dm):
    m = build(dm).eval()
    randomise(m, 0.05)
    batch = dev_batch(dm)
    assert batch["attention_mask"][:, 0].min() == 0  # rows of different lengths: left padding
    with torch.no_grad():
        torch.testing.assert_close(m(batch), reference_scores(m, batch), atol=1e-4, rtol=1e-5)


def test_mixed_task_rows_equal_rows_alone(dm):
    m = build(dm, n_tasks=3).eval()
    randomise(m, 0.5)
    batch = dev_batch(dm, task_ids=[2, 0, 1, 2])
    with torch.no_grad():
        mixed = m(batch)
        alone = torch.cat(
            [m({k: v[i : i + 1] for k, v in batch.items()}) for i in range(len(batch["labels"]))]
        )
        task0 = m({**batch, "task_ids": torch.zeros(4, dtype=torch.long)})
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-6)
    assert (mixed[[0, 2, 3]] - task0[[0, 2, 3]]).abs().amax(-1).min() > 1e-3  # gather matters


def test_zero_shot_flag_drops_the_context(dm):
    m = build(dm).eval()
    batch = dev_batch(dm)
    m.use_soft_prompt = False
    with torch.no_grad():
        plain = m.class_scores(m.base.input_embeddings(batch["input_ids"]), batch["attention_mask"])
        assert torch.equal(m(batch), plain)


# -- the loss ----------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [0.5, 1.0])
def test_loss_covers_context_labels_with_decay(dm, decay):
    m = build(dm, loss_decay=decay).eval()
    randomise(m, 0.05)
    k = m.n_examples
    weights = m.context_weights()
    # example 0 is the oldest (first in the context): decay**K; the newest gets decay**1
    assert weights.tolist() == pytest.approx([decay ** (k - i) for i in range(k)])
    batch = dev_batch(dm)
    with torch.no_grad():
        terms = m.loss_terms(batch)
        # by hand: the context alone, log p of each label token from the position before it
        ctx = m.context_embeds(torch.zeros(1, dtype=torch.long))
        logp = F.log_softmax(m.backbone(inputs_embeds=ctx).logits[0].float(), -1)
        nll = torch.zeros(k)
        for p in (m.context_types == LABEL).nonzero().flatten().tolist():
            nll[m.context_example[p]] -= logp[p - 1, m.context_ids[p]]
        query = F.cross_entropy(terms["scores"], batch["labels"])
    torch.testing.assert_close(terms["context_nll"], nll, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms["query_loss"], query)
    want = (query + (weights * nll).sum()) / (1 + weights.sum())
    torch.testing.assert_close(terms["loss"], want, atol=1e-4, rtol=1e-5)
    assert terms["loss"] != terms["query_loss"]
    off = build(dm, context_loss=False).eval()
    with torch.no_grad():
        terms = off.loss_terms(batch)
    assert "context_nll" not in terms and torch.equal(terms["loss"], terms["query_loss"])


def test_context_loss_reaches_the_deltas(dm):
    """The context's label loss alone trains the deltas of the tokens before each label."""
    m = build(dm)
    batch = dev_batch(dm)
    terms = m.loss_terms(batch)
    (terms["context_nll"].sum()).backward()
    grad = m.delta.weight.grad[0]
    assert grad.abs().sum() > 0
    frozen = (m.context_types == LABEL) | (m.context_types == SPECIAL)
    assert torch.equal(grad[frozen], torch.zeros_like(grad[frozen]))


# -- architectures, artifacts, checkpoints ------------------------------------------------
@pytest.mark.parametrize("family,arch", [("bert", "encoder"), ("t5", "encoder-decoder")])
@pytest.mark.parametrize("supports", [None, ["encoder", "decoder", "encoder-decoder"]])
def test_refuses_encoder_and_encoder_decoder(dm, family, arch, supports):
    with pytest.raises(
        SptError,
        match=f"method=cpt does not support {arch} backbones.*"
        r"it supports: decoder$",
    ):
        build(dm, backbone=tiny(family), supports=supports)


def test_checkpoint_holds_only_own_state(dm):
    m = build(dm)
    state = m.state_dict()
    assert set(state) == {
        "delta.weight",
        "context_ids",
        "context_types",
        "context_example",
        "context_base",
    }
    fresh = build(dm, seed=5)
    assert not torch.equal(fresh.context_ids, m.context_ids)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.context_ids, m.context_ids)
    del state["delta.weight"]
    with pytest.raises(SptError, match="delta.weight"):
        fresh.load_state_dict(state)


def test_artifact_round_trip(dm, tmp_path):
    m = build(dm, seed=2).eval()
    randomise(m, 0.01)
    m.project_deltas()
    meta = m.artifact_meta()
    tensors = m.artifact_tensors()
    assert meta["base"] == m.base.identity() and meta["method"] == "cpt"
    assert meta["n_examples"] == 4 and meta["eps_input"] == 0.2 and meta["eps_format"] == 0.1
    assert set(tensors) == {
        "delta",
        "context_ids",
        "context_types",
        "context_example",
        "context_embeds",
    }
    torch.testing.assert_close(
        tensors["context_embeds"][0],
        m.context_base + m.delta.weight.detach()[0] * m.trainable_mask[:, None],
    )
    path = save_artifact(tmp_path / "cpt", tensors, meta)
    # another seed would sample another context: the artifact's context wins
    loaded = build(dm, seed=9, init="file", init_file=str(path)).eval()
    assert torch.equal(loaded.context_ids, m.context_ids)
    assert torch.equal(loaded.delta.weight, m.delta.weight)
    batch = dev_batch(dm)
    with torch.no_grad():
        assert torch.equal(loaded(batch), m(batch))
    # no data module needed to load a trained context
    alone = CPT(tiny("llama"), task=dm.task, init="file", init_file=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(alone(batch), m(batch))


def test_artifact_from_another_base_model_is_refused(dm, tmp_path):
    other = build(dm, backbone=tiny("llama", seed=1))
    path = save_artifact(tmp_path / "p", other.artifact_tensors(), other.artifact_meta())
    bb = tiny("llama", seed=0)
    with pytest.raises(SptError) as err:
        build(dm, backbone=bb, init="file", init_file=str(path))
    msg = str(err.value)
    assert other.base.identity()["fingerprint"] in msg and bb.identity()["fingerprint"] in msg


def test_artifact_of_another_method_is_refused(dm, tmp_path):
    pt = PromptTuning(tiny("llama"), task=dm.task, length=4, init="uniform")
    path = save_artifact(tmp_path / "p", pt.artifact_tensors(), pt.artifact_meta())
    with pytest.raises(SptError, match="method=prompt"):
        build(dm, init="file", init_file=str(path))


def test_artifact_with_other_n_tasks_is_refused(dm, tmp_path):
    m = build(dm, n_tasks=2)
    path = save_artifact(tmp_path / "p", m.artifact_tensors(), m.artifact_meta())
    with pytest.raises(SptError, match=r"method\.n_tasks=2"):
        build(dm, init="file", init_file=str(path))


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"n_examples": 0}, "method.n_examples"),
        ({"n_examples": True}, "method.n_examples"),
        ({"n_examples": 41}, "method.n_examples"),  # more than the 40 train rows
        ({"eps_input": -0.1}, "method.eps_input"),
        ({"eps_input": "big"}, "method.eps_input"),
        ({"eps_format": float("nan")}, "method.eps_format"),
        ({"eps_input": 0, "eps_format": 0}, "nothing to train"),
        ({"loss_decay": 0}, "method.loss_decay"),
        ({"loss_decay": 1.5}, "method.loss_decay"),
        ({"init": "random"}, "method.init"),
        ({"init": "file"}, "method.init_file"),
        ({"n_tasks": 0}, "method.n_tasks"),
        ({"loss": "mse"}, "method.loss"),
        ({"separator": 3}, "method.separator"),
        ({"balanced": "yes"}, "method.balanced"),
        ({"context_loss": 1}, "method.context_loss"),
    ],
)
def test_bad_settings_name_the_key(dm, kw, key):
    with pytest.raises(SptError, match=key.replace(".", r"\.")):
        build(dm, **kw)


def test_without_a_data_module(dm):
    with pytest.raises(SptError, match="datamodule"):
        CPT(tiny("llama"), task=dm.task)


def test_query_with_soft_slots_is_refused(dm):
    m = build(dm)
    batch = dev_batch(dm)
    batch["soft_mask"] = batch["attention_mask"].bool()
    with pytest.raises(SptError, match=r"data\.n_soft"):
        m(batch)


# -- end to end, as a user runs it -------------------------------------------------------
def _run(*overrides, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPT_OUTPUT_DIR": str(out), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "spt.run",
            "method=cpt",
            "model=tiny-llama",
            "data=sst2",
            "debug=fast",
            "logger=csv",
            *overrides,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_end_to_end_and_reload(tmp_path, data_dir):
    r = _run(out=tmp_path / "a")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = [p.parent for p in (tmp_path / "a").rglob("metrics.json")]
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "prompt.json").read_text())
    assert metrics["steps"] == 4 and meta["method"] == "cpt" and meta["n_examples"] == 4
    assert meta["tensors"]["delta"] == [1, meta["context_length"], 32]
    r2 = _run(
        "train=false",
        "method.init=file",
        f"method.init_file={run / 'prompt.safetensors'}",
        out=tmp_path / "b",
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    (run2,) = [p.parent for p in (tmp_path / "b").rglob("metrics.json")]
    assert json.loads((run2 / "metrics.json").read_text())["val/acc"] == metrics["val/acc"]


def test_generation_continues_after_the_trained_context(dm):
    """spt.generate decodes after CPT's context (its trained keys/values as a prefix): cached
    greedy and beam search equal their uncached references, the context changes what is
    generated, and mixed-task rows decode as if alone."""
    from spt.core.generate import beam_search, generate, greedy_reference

    m = build(dm, n_tasks=2).eval()
    randomise(m, 0.5)
    batch = dev_batch(dm, task_ids=[1, 0, 1, 0])
    tokens = generate(m, batch, max_new_tokens=4)
    ref, logits = greedy_reference(m, batch, max_new_tokens=4)
    assert torch.equal(tokens, ref)
    m.use_soft_prompt = False  # the context (and its deltas) shape what is generated
    _, plain = greedy_reference(m, batch, max_new_tokens=1)
    m.use_soft_prompt = True
    assert (plain[0] - logits[0]).abs().max() > 1e-3
    beams = beam_search(m, batch, num_beams=2, max_new_tokens=4)
    assert torch.equal(beams, beam_search(m, batch, num_beams=2, max_new_tokens=4, use_cache=False))
    for i in range(4):
        alone = generate(m, {k: v[i : i + 1] for k, v in batch.items()}, max_new_tokens=4)
        assert torch.equal(tokens[i, : alone.shape[1]], alone[0])
