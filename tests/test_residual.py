"""Residual Prompt Tuning (Razdaibiedina et al. 2023) as ``method=prompt method.residual=B``:
the reparameterised prompt equals a hand computation of ``P + LN(W_up relu(W_down P))``, the
artifact serves it as a plain Prompt Tuning prompt (the MLP dropped), and resuming reloads
``P`` and the MLP bit for bit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spt.core.artifact import save_artifact
from tests.test_prompt import TEXTS, build, make_batch


def residual(family="llama", **kw):
    return build(family, residual=16, **kw)


def test_the_prompt_is_p_plus_layernorm_of_the_mlp_of_p():
    """The authors' ResMLP (prompt_tuner2.py): Linear, ReLU, Linear, LayerNorm, plus P."""
    m = residual()
    p = m.prompt.weight
    down, _, up, _, norm = m.residual.mlp
    h = F.linear(F.relu(F.linear(p, down.weight, down.bias)), up.weight, up.bias)
    want = p + F.layer_norm(h, (p.shape[-1],), norm.weight, norm.bias, norm.eps)
    assert torch.equal(m.table(), want) and not torch.allclose(m.table(), p)
    ids = torch.tensor([0, 0])
    assert torch.equal(m.soft_prompts(ids), want[ids])


def test_the_artifact_serves_the_materialised_prompt_and_resumes_the_mlp(tmp_path):
    """A plain Prompt Tuning model loading the artifact scores exactly as the residual one
    (the MLP is dropped at inference); a residual one loading it gets P and the MLP back."""
    m = residual().eval()
    with torch.no_grad():
        m.residual.mlp[0].weight.mul_(3)  # a trained-looking MLP
    path = tmp_path / "r.safetensors"
    save_artifact(path, m.artifact_tensors(), m.artifact_meta())
    plain = build("llama", init="file", init_file=str(path)).eval()
    batch = make_batch(m.base, TEXTS, m.prompt.length)
    with torch.no_grad():
        assert torch.equal(plain(batch), m(batch))
    tensors = m.artifact_tensors()
    assert m.served_parameters(tensors) == tensors["prompt"].numel()  # no MLP served
    again = residual(init="file", init_file=str(path))
    assert torch.equal(again.prompt.weight, m.prompt.weight)
    for (name, a), b in zip(
        again.residual.named_parameters(), m.residual.parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_saved_prompt_is_the_eval_mode_one_whatever_the_mode():
    """With dropout in the MLP, saving mid-training (train mode) stores the eval-mode P'
    (no dropout mask), twice the same, and leaves the module in train mode."""
    m = residual(residual_dropout=0.5)
    m.train()
    first, second = m.artifact_tensors()["prompt"], m.artifact_tensors()["prompt"]
    assert m.residual.training and torch.equal(first, second)
    m.eval()
    assert torch.equal(first, m.table().detach())


def test_the_mlp_trains_at_the_prompts_rate_and_counts_as_trainable():
    m = residual()
    (group,) = m.param_groups()
    assert group["params"] == [m.prompt.weight, *m.residual.parameters()]
    mlp = sum(p.numel() for p in m.residual.parameters())
    assert m.parameter_counts()["params/trainable"] == m.prompt.weight.numel() + mlp
    loss = m(make_batch(m.base, TEXTS, m.prompt.length)).logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.residual.parameters())


def test_bad_residual_settings_name_the_key():
    import pytest

    from spt.errors import SptError

    for kw, key in (
        ({"residual": 0}, "method.residual=0"),
        ({"residual": 4, "residual_dropout": 1.0}, "residual_dropout=1.0"),
    ):
        with pytest.raises(SptError, match=key):
            build("llama", **kw)
