"""DePT (Shi & Lipani 2024) on the three tiny families: the paper's budget split, scores equal
to a hand-built reference (the backbone on embeddings updated token by token), Prompt Tuning's
scores at initialisation, padding and task mixing, text-to-text targets left alone, the two
learning rates, and the artifact round trip."""

from __future__ import annotations

import functools

import pytest
import torch

from spt.backbones import tiny
from spt.data.batches import IGNORE
from spt.errors import SptError
from spt.methods.dept import DecomposedPromptTuning, budget_split
from spt.methods.prompt import PromptTuning
from tests.test_prompt import FAMILIES, TASK, TEXTS, make_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def build(family="llama", backbone=None, **kw) -> DecomposedPromptTuning:
    settings = dict(task=TASK, init="uniform", positions=16, budget=8, low_rank_lr=0.05)
    settings.update(kw)
    return DecomposedPromptTuning(
        backbone or tiny(family), optimizer=functools.partial(torch.optim.AdamW, lr=0.1),
        **settings,
    )  # fmt: skip


def randomise_update(m: DecomposedPromptTuning, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.update.b.copy_(torch.randn(m.update.b.shape, generator=g))


def test_the_papers_budget_split():
    """m * d + (s + d) * r = l * d at every (m, r) the authors released for l = 100 on T5-base
    (d 768): (60, 30), (80, 15), (40, 45) at s 256, (60, 24) at s 512; 60 is the default."""
    assert budget_split(100, 768, 256) == (60, 30)
    assert budget_split(100, 768, 256, length=80) == (80, 15)
    assert budget_split(100, 768, 256, length=40) == (40, 45)
    assert budget_split(100, 768, 512, length=60) == (60, 24)
    assert budget_split(100, 768, 256, rank=30) == (60, 30)
    m, r = budget_split(20, 576, 256)  # spt's default budget on SmolLM2
    assert (m, r) == (12, 5) and m * 576 + (256 + 576) * r <= 20 * 576
    assert budget_split(20, 32, 256) == (11, 1)  # the tiny models: rank 1, the rest prompt
    with pytest.raises(SptError, match="method.length=20 leaves no budget"):
        budget_split(20, 576, 256, length=20)
    with pytest.raises(SptError, match="method.budget=2 vectors of 32 = 64 parameters leave no"):
        budget_split(2, 32, 256)


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_equal_the_backbone_on_embeddings_updated_token_by_token(family):
    """The reference: each row's k-th real non-soft token gets row k of scale * A @ B (the
    update's own table), the soft slots get the prompt, and the frozen backbone scores
    those embeddings; padding on either side gives the same rows."""
    m = build(family)
    randomise_update(m)
    m.eval()
    batch = make_batch(m.base, TEXTS, m.prompt.length)
    table = m.update.table()[0]  # [positions, d]
    embeds = m.base.input_embeddings(batch["input_ids"]).clone()
    for i in range(len(TEXTS)):
        k = 0
        for t in range(batch["input_ids"].shape[1]):
            if batch["attention_mask"][i, t] and not batch["soft_mask"][i, t]:
                if k < m.update.positions:
                    embeds[i, t] += table[k]
                k += 1
    embeds[batch["soft_mask"]] = m.prompt.weight[0].repeat(len(TEXTS), 1)
    with torch.no_grad():
        want = m.class_scores(embeds, batch["attention_mask"], task_ids=batch["task_ids"])
        got = m(batch)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(got, PromptTuningScores.of(m, batch), atol=1e-3)


class PromptTuningScores:
    @staticmethod
    def of(m: DecomposedPromptTuning, batch: dict) -> torch.Tensor:
        """Prompt Tuning's scores with DePT's prompt (and head) and no update."""
        pt = PromptTuning(m.base, task=TASK, length=m.prompt.length, init="uniform")
        with torch.no_grad():
            pt.prompt.weight.copy_(m.prompt.weight)
            if m.objective.head is not None:
                pt.objective.head.load_state_dict(m.objective.head.state_dict())
        pt.eval()
        with torch.no_grad():
            return pt(batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_at_initialisation_it_is_prompt_tuning_with_the_shorter_prompt(family):
    """B starts at zero (the reference's lora_embedding_B), so step 0 scores as Prompt
    Tuning with the m-vector prompt does."""
    m = build(family).eval()
    batch = make_batch(m.base, TEXTS, m.prompt.length)
    with torch.no_grad():
        torch.testing.assert_close(m(batch), PromptTuningScores.of(m, batch), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_task_rows_and_padding_equal_rows_alone(family):
    m = build(family, n_tasks=2)
    with torch.no_grad():
        m.update.b.normal_()
        m.prompt.weight[1].normal_()
    m.eval()
    mixed = make_batch(m.base, TEXTS, m.prompt.length, task_ids=[1, 0, 1])
    with torch.no_grad():
        together = m(mixed)
        for i, text in enumerate(TEXTS):
            alone = m(make_batch(m.base, [text], m.prompt.length, task_ids=[[1, 0, 1][i]]))
            torch.testing.assert_close(together[i], alone[0], rtol=1e-6, atol=1e-5)


def test_decoder_targets_and_tokens_past_the_positions_get_no_update():
    """Decoder-only text-to-text rows (labels aligned with input_ids): the target tokens keep
    their embeddings, as at generation; tokens past ``positions`` too."""
    m = build("llama", positions=4)
    randomise_update(m)
    batch = make_batch(m.base, ["abcdefgh"], m.prompt.length)
    labels = torch.full_like(batch["input_ids"], IGNORE)
    labels[0, -3:] = batch["input_ids"][0, -3:]  # the last three tokens are the target
    update = m.embedding_update({**batch, "labels": labels})[0]
    source = batch["attention_mask"][0].bool() & ~batch["soft_mask"][0] & (labels[0] == IGNORE)
    got = update.abs().sum(-1) > 0
    expect = source & (source.long().cumsum(0) <= 4)  # the first 4 source tokens only
    assert torch.equal(got, expect) and int(expect.sum()) == 4


def test_two_learning_rates_and_only_prompt_update_and_head_train():
    m = build("bert")
    groups = m.optimizer_factory(m.param_groups()).param_groups
    assert [g["lr"] for g in groups] == [0.1, 0.05, 0.01]  # prompt, A and B, head
    assert groups[1]["params"] == [m.update.a, m.update.b]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.weight", "update.a", "update.b"} | {
        n for n in trainable if n.startswith("objective.head")
    }
    counts = m.parameter_counts()
    d = m.base.hidden_size
    head = sum(p.numel() for p in m.objective.head.parameters())
    assert counts["params/trainable"] == m.prompt.length * d + (16 + d) * m.update.rank + head
    assert counts["params/trainable"] - head <= 8 * d  # within Prompt Tuning's budget


def test_artifact_round_trip_and_bad_settings(tmp_path):
    m = build("llama", n_tasks=2)
    randomise_update(m)
    path = tmp_path / "p.safetensors"
    from spt.core.artifact import save_artifact

    save_artifact(path, m.artifact_tensors(), m.artifact_meta())
    again = build("llama", n_tasks=2, init="file", init_file=str(path))
    assert torch.equal(again.update.a, m.update.a) and torch.equal(again.update.b, m.update.b)
    assert torch.equal(again.prompt.weight, m.prompt.weight)
    assert m.served_parameters(m.artifact_tensors()) == sum(
        t.numel() for t in m.artifact_tensors().values()
    )
    with pytest.raises(SptError, match="method.rank"):
        build("llama", rank=7, init="file", init_file=str(path))
    for kw, key in (
        ({"rank": 0}, "method.rank=0"),
        ({"positions": 0}, "method.positions=0"),
        ({"alpha": -1.0}, "method.alpha=-1.0"),
        ({"low_rank_lr": 0}, "method.low_rank_lr=0"),
        ({"budget": 2, "length": 2}, "method.length=2 leaves no budget"),
    ):
        with pytest.raises(SptError, match=key):
            build("llama", **kw)


def test_the_peft_export_refuses_it_by_name(tmp_path):
    """PEFT has no DePT, and its prompt alone would score differently: refused, not exported
    half. (Serving: tests/test_serve.py's llama runs include two DePT runs, stacked.)"""
    from spt.core.artifact import save_artifact
    from spt.interop.peft import export_peft
    from spt.serve.server import served_methods

    m = build("llama")
    path = save_artifact(tmp_path / "p.safetensors", m.artifact_tensors(), m.artifact_meta())
    with pytest.raises(SptError, match="method=dept: its low-rank update .*PEFT has no DePT"):
        export_peft(path, tmp_path / "out")
    assert "dept" in served_methods()
