"""Key/value prompt methods on tiny encoder-only and decoder-only backbones: Prefix Tuning
(Li & Liang 2021) and P-Tuning v2 (Liu et al. 2022)."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from spt import methods
from spt.backbones import tiny
from spt.backbones.arch import prefix_cache
from spt.backbones.encoder import Encoder
from spt.backbones.encoder_decoder import cross_route, decoder_cache, encode
from spt.core.artifact import save_artifact
from spt.data.task import TaskInfo
from spt.errors import SptError
from spt.methods.prefix import PrefixTuning, attention_sizes
from spt.methods.ptuning_v2 import PTuningV2

TASK = TaskInfo(
    name="t",
    label_names=("neg", "pos"),
    label_words=("bad", "great"),
    metrics=("acc",),
    num_classes=2,
)
ADAMW = functools.partial(torch.optim.AdamW, lr=0.05)


KV_METHODS = [methods.get(n).cls for n in methods.names(prompt="kv")]  # the registry's


def _method(family: str, cls=PrefixTuning, **kw):
    return cls(tiny(family, hidden=64, seed=3), TASK, length=4, optimizer=ADAMW, hidden=32, **kw)


def _randomise(m, seed: int = 1) -> None:
    with torch.no_grad():
        for p in m.prefix.parameters():
            p.normal_(0, 1, generator=torch.Generator().manual_seed(seed))


def _batch(m, texts, task_ids, labels=None) -> dict:
    tok, left = m.base.tokenizer, m.base.arch == "decoder"
    rows = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        off = width - len(r) if left else 0
        ids[i, off : off + len(r)] = torch.tensor(r)
        mask[i, off : off + len(r)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "soft_mask": torch.zeros_like(ids).bool(),
        "task_ids": torch.tensor(task_ids),
        "labels": torch.tensor(labels or [0] * len(rows)),
    }


TEXTS = ["fine film", "a much longer and rather dull film", "ok"]


@pytest.mark.parametrize("cls", KV_METHODS)
@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_one_step_changes_only_prefix_and_head(family, cls):
    m = _method(family, cls)
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    prefix_before = m.prefix.table().detach().clone()
    batch = _batch(m, TEXTS, [0, 0, 0], [1, 0, 1])
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(m, train_dataloaders=DataLoader([batch], collate_fn=lambda x: x[0]))
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(m.prefix.table().detach(), prefix_before)
    assert set(m.state_dict()) == {n for n, p in m.named_parameters() if p.requires_grad}
    m.check_frozen()


@pytest.mark.parametrize("cls", KV_METHODS)
def test_an_architecture_left_out_of_supports_is_refused(cls):
    with pytest.raises(SptError, match="does not support encoder-decoder"):
        cls(tiny("t5"), TASK, supports=["encoder", "decoder"])


def test_t5_encoder_prefix_changes_the_encoder_output():
    """The HF T5 encoder ignores its cache; spt routes the prefix in regardless."""
    m = _method("t5", cross_attention=False).eval()
    batch = _batch(m, TEXTS, [0, 0, 0])
    embeds = m.base.input_embeddings(batch["input_ids"])
    kv = m.prefix(batch["task_ids"])
    n_enc = m.prefix.layout.parts[0]
    assert n_enc == m.backbone.config.num_layers
    assert kv.shape[1] == n_enc + m.backbone.config.num_decoder_layers
    plain = encode(m.backbone, embeds, batch["attention_mask"])
    a = encode(m.backbone, embeds, batch["attention_mask"], kv[:, :n_enc])
    b = encode(m.backbone, embeds, batch["attention_mask"], kv[:, :n_enc] * 2)
    assert (a - plain).abs().max() > 1e-3 and (a - b).abs().max() > 1e-3
    again = encode(m.backbone, embeds, batch["attention_mask"])
    assert torch.equal(plain, again), "the route is inert outside a prefixed call"


def _t5_kv_of_first(attentions, run, p: int) -> torch.Tensor:
    """Per-layer keys/values ``[B, layers, 2, heads, p, d_kv]`` that the given T5 attention
    modules compute for the first ``p`` positions during ``run()``."""
    seen = []
    hooks = [
        a.register_forward_hook(
            lambda mod, args, kwargs, out, seen=seen: seen.append(
                (mod.k(args[0])[:, :p], mod.v(args[0])[:, :p])
            ),
            with_kwargs=True,
        )
        for a in attentions
    ]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    a = attentions[0]
    b = seen[0][0].shape[0]
    shape = (b, p, a.n_heads, a.key_value_proj_dim)
    return torch.stack(
        [
            torch.stack([k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)], 1)
            for k, v in seen
        ],
        1,
    )


def test_t5_encoder_prefix_equals_real_tokens_in_front():
    """An encoder prefix holding the per-layer keys/values of the first P real tokens gives the
    other tokens exactly the encoder states they have when those P tokens are in the input:
    checks the route into encoder self-attention, the relative position bias after P prefix
    positions and the widened mask (with a padded row)."""
    model = tiny("t5", hidden=64, seed=3).model.eval()
    ids = torch.tensor([[5, 6, 7, 40, 41, 42, 43], [8, 9, 10, 44, 45, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    embeds = model.get_input_embeddings()(ids)
    attn = [block.layer[0].SelfAttention for block in model.get_encoder().block]
    full = {}
    kv = _t5_kv_of_first(attn, lambda: full.setdefault("h", encode(model, embeds, mask)), 3)
    rest = encode(model, embeds[:, 3:], mask[:, 3:], kv)
    real = mask[:, 3:].bool()
    torch.testing.assert_close(rest[real], full["h"][:, 3:][real], atol=1e-5, rtol=1e-5)


def test_t5_decoder_prefix_equals_real_tokens_in_front():
    """A decoder self-attention prefix from the keys/values of the first P decoder tokens acts
    exactly like those tokens (cache path and the decoder's one-way position bias)."""
    model = tiny("t5", hidden=64, seed=3).model.eval()
    enc_ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    hidden = encode(model, model.get_input_embeddings()(enc_ids), mask)
    dec_ids = torch.tensor([[0, 11, 12, 13, 14]])
    attn = [block.layer[0].SelfAttention for block in model.get_decoder().block]
    full = {}
    kv = _t5_kv_of_first(
        attn,
        lambda: full.setdefault(
            "logits",
            model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=dec_ids).logits,
        ),
        2,
    )
    rest = model(
        encoder_outputs=(hidden,),
        attention_mask=mask,
        decoder_input_ids=dec_ids[:, 2:],
        cache=decoder_cache(kv),
        use_cache=False,
    ).logits
    torch.testing.assert_close(rest, full["logits"][:, 2:], atol=1e-5, rtol=1e-5)


def _tiny_encoder(kind: str):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    sizes = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    if kind == "roberta":  # positions start at padding_idx + 1 = 2
        return RobertaModel(RobertaConfig(pad_token_id=1, **sizes)).eval()
    return BertModel(BertConfig(**sizes)).eval()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_encoder_prefix_equals_real_tokens_in_front(kind):
    """An encoder-only prefix holding the per-layer keys/values of the first P real tokens gives
    the other tokens exactly the states they have with those tokens in the input, on BERT and
    on RoBERTa (whose positions start after its padding row: with arange(L) positions the
    prefix read that row instead)."""
    model = _tiny_encoder(kind)
    ids = torch.tensor([[5, 6, 7, 20, 21, 22, 23], [8, 9, 10, 24, 25, 26, 27]])
    embeds = model.get_input_embeddings()(ids)
    seen = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: seen.append(out[:, :3]))
        for layer in model.encoder.layer
        for m in (layer.attention.self.key, layer.attention.self.value)
    ]
    full = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).last_hidden_state
    for h in hooks:
        h.remove()
    heads = model.config.num_attention_heads
    kv = torch.stack(seen).view(2, 2, 2, 3, heads, -1)  # [layers, k/v, B, P, heads, d]
    kv = kv.permute(2, 0, 1, 4, 3, 5)  # [B, layers, 2, heads, P, d]
    rest_mask = torch.ones(2, 4, dtype=torch.long)
    got = Encoder().pooled(model, embeds[:, 3:], rest_mask, "mean", kv)
    torch.testing.assert_close(got, full[:, 3:].mean(1), atol=1e-5, rtol=1e-5)


def test_encoder_prefix_past_the_position_table_is_refused():
    model = _tiny_encoder("roberta")  # 40 positions, the first 2 before padding_idx + 1
    embeds = model.get_input_embeddings()(torch.ones(1, 30, dtype=torch.long))
    prefix = torch.zeros(1, 2, 2, 4, 10, 8)
    with pytest.raises(SptError, match="lower data.max_length to 28"):
        Encoder().pooled(model, embeds, torch.ones(1, 30, dtype=torch.long), "mean", prefix)


def test_t5_prefix_defaults_follow_li_and_liang():
    """On T5, method=prefix prefixes encoder, decoder and cross-attention by default, each set
    from its own embedding and MLP (Li & Liang's seq2seq model); shared_reparam keeps one."""
    m = PrefixTuning(tiny("t5", hidden=64, seed=3), TASK, length=4, hidden=32).eval()
    enc_layers, dec_layers = m.backbone.config.num_layers, m.backbone.config.num_decoder_layers
    assert m.prefix.layout.cross_attention and [
        len(b.mlp[2].bias) // (2 * 64) for b in m.prefix.blocks
    ] == [
        enc_layers,
        dec_layers,
        dec_layers,
    ]
    batch = _batch(m, TEXTS, [0, 0, 0])
    before = m.kv_prefix(batch)
    with torch.no_grad():
        m.prefix.blocks[2].mlp[2].bias.add_(1.0)  # the cross-attention set's MLP only
    after = m.kv_prefix(batch)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[2], after[2])
    shared = PrefixTuning(
        tiny("t5", hidden=64, seed=3), TASK, length=4, hidden=32, shared_reparam=True
    )
    assert not hasattr(shared.prefix, "blocks") and shared.prefix.table().shape[-1] == (
        (enc_layers + 2 * dec_layers) * 2 * 64
    )
    assert not PrefixTuning(tiny("llama"), TASK, length=2, hidden=8).prefix.layout.cross_attention


def test_t5_decoder_prefix_changes_the_scores():
    m = _method("t5", cross_attention=False).eval()
    batch = _batch(m, TEXTS, [0, 0, 0])
    embeds = m.base.input_embeddings(batch["input_ids"])
    kv = m.prefix(batch["task_ids"])
    enc, dec = kv[:, : m.prefix.layout.parts[0]], kv[:, m.prefix.layout.parts[0] :]
    with_dec = m.class_scores(embeds, batch["attention_mask"], (enc, dec))
    without = m.class_scores(embeds, batch["attention_mask"], (enc, None))
    assert (with_dec - without).abs().max() > 1e-4


def test_t5_cross_attention_prefix_acts_as_extra_encoder_positions():
    """A cross-attention prefix holding the keys/values of encoder position 0 gives the
    decoder exactly what it gets when position 0 is part of the encoder output."""
    m = _method("t5", cross_attention=True).eval()
    model = m.backbone
    batch = _batch(m, TEXTS, [0, 0, 0])
    mask = batch["attention_mask"]
    hidden = encode(model, m.base.input_embeddings(batch["input_ids"]), mask)
    dec_ids = torch.tensor([[0, 5, 9]] * 3)
    full = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=dec_ids).logits
    heads, d_kv = model.config.num_heads, model.config.d_kv
    kv = []
    for block in model.get_decoder().block:
        att = block.layer[1].EncDecAttention
        k = att.k(hidden[:, :1]).view(3, 1, heads, d_kv).transpose(1, 2)
        v = att.v(hidden[:, :1]).view(3, 1, heads, d_kv).transpose(1, 2)
        kv.append(torch.stack([k, v], 1))
    cross = torch.stack(kv, 1)  # [B, dec_layers, 2, heads, 1, d_kv]
    with cross_route(model, cross):
        rest = model(
            encoder_outputs=(hidden[:, 1:],),
            attention_mask=mask[:, 1:],
            decoder_input_ids=dec_ids,
            cache=decoder_cache(None, cross),
            use_cache=False,
        ).logits
    torch.testing.assert_close(rest, full, atol=1e-5, rtol=1e-5)
    # the method's own cross prefix changes its scores; outside the route nothing is widened
    embeds = m.base.input_embeddings(batch["input_ids"])
    enc, dec, cross = m.kv_prefix(batch)
    assert cross.shape[1] == model.config.num_decoder_layers
    with_cross = m.class_scores(embeds, mask, (enc, dec, cross))
    without = m.class_scores(embeds, mask, (enc, dec, None))
    assert (with_cross - without).abs().max() > 1e-4
    again = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=dec_ids)
    torch.testing.assert_close(again.logits, full)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_cross_attention_needs_an_encoder_decoder(family):
    with pytest.raises(SptError, match="cross_attention"):
        _method(family, cross_attention=True)


def test_sizes_come_from_the_config_with_gqa():
    m = _method("llama")
    cfg = m.backbone.config
    assert m.prefix.layout.sizes["n_kv_heads"] == cfg.num_key_value_heads < cfg.num_attention_heads
    kv = m.prefix(torch.tensor([0, 0]))
    assert kv.shape == (
        2,
        cfg.num_hidden_layers,
        2,
        cfg.num_key_value_heads,
        4,
        cfg.hidden_size // cfg.num_attention_heads,
    )
    assert attention_sizes(tiny("t5").config)["n_layers"] == 2


def test_decoder_prefix_equals_real_tokens_in_front():
    """Prefixes made from the K/V of real tokens must act exactly like those tokens: this
    checks the cache path, the position offset and the extended mask."""
    m = _method("llama")
    model = m.backbone
    ctx = torch.tensor([[5, 6, 7, 8]])
    x = torch.tensor([[40, 41, 42]])
    full = model(input_ids=torch.cat([ctx, x], 1), use_cache=True)
    cache = full.cache
    kv = torch.stack(
        [torch.stack([layer.keys[:, :, :4], layer.values[:, :, :4]], 1) for layer in cache.layers],
        1,
    )
    out = model(
        input_ids=x,
        attention_mask=torch.ones(1, 7, dtype=torch.long),
        position_ids=torch.arange(4, 7)[None],
        cache=prefix_cache(kv),
        use_cache=False,
    )
    torch.testing.assert_close(out.logits[0, -1], full.logits[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", KV_METHODS)
@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_mixed_task_rows_equal_rows_alone(family, cls):
    m = _method(family, cls, n_tasks=3).eval()
    _randomise(m)
    task_ids = [2, 0, 1]
    mixed = m(_batch(m, TEXTS, task_ids))
    for i, (text, t) in enumerate(zip(TEXTS, task_ids, strict=True)):
        alone = m(_batch(m, [text], [t]))
        torch.testing.assert_close(mixed[i], alone[0], atol=1e-5, rtol=1e-5)
    other = m(_batch(m, TEXTS, [0, 0, 0]))
    assert not torch.allclose(mixed, other), "the task gather must matter"


def test_mlp_runs_once_per_step_not_per_row():
    m = _method("llama", n_tasks=2)
    calls = []
    m.prefix.mlp.register_forward_hook(lambda *a: calls.append(a[1][0].shape))
    m(_batch(m, TEXTS * 4, [0, 1, 0] * 4))
    assert len(calls) == 1 and calls[0][0] == 2  # the task table, not 12 rows


def test_default_prefix_init_gives_distinct_positions():
    """The paper's N(0, 1) embedding init: the MLP's prefix positions start nearly orthogonal
    (at std 0.02 the biases dominate and they start ~0.98 cosine-alike)."""
    from hydra import compose, initialize_config_dir

    from spt import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yaml_std = compose(config_name="run", overrides=["method=prefix"]).method.init_std
    m = PrefixTuning(tiny("llama", hidden=64, seed=3), TASK, length=10, hidden=512)
    assert yaml_std == 1.0 and m.hparams.init_std == 1.0
    t = torch.nn.functional.normalize(m.prefix.table()[0], dim=-1)
    mean_cos = (t @ t.T - torch.eye(10)).sum() / 90
    assert abs(float(mean_cos)) < 0.2, float(mean_cos)


@pytest.mark.parametrize("reparam", [True, False])
def test_prefix_dropout_draws_one_mask_per_example(reparam):
    """Rows of the same task get independent dropout masks (the references drop out the
    batch-expanded prefix); in eval mode every row of a task gets the same prefix."""
    from spt.modules.prefix_encoder import PrefixEncoder

    enc = PrefixEncoder(
        2,
        4,
        n_layers=2,
        n_kv_heads=2,
        head_dim=4,
        d_model=8,
        reparam=reparam,
        hidden=16,
        dropout=0.5,
        init_std=1.0,
    ).train()
    task_ids = torch.tensor([0] * 8 + [1] * 8)
    out = enc(task_ids)
    masks = (out == 0).flatten(1)  # where dropout zeroed an entry
    assert len({tuple(m.tolist()) for m in masks[:8]}) > 1, "one mask for all rows of task 0"
    enc.eval()
    out = enc(task_ids)
    assert torch.equal(out[0], out[7]) and not torch.equal(out[0], out[8])


@pytest.mark.parametrize("cls", KV_METHODS)
@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_artifact_round_trip(family, cls, tmp_path):
    m = _method(family, cls).eval()
    _randomise(m)
    path = save_artifact(tmp_path / "p.safetensors", m.artifact_tensors(), m.artifact_meta())
    again = cls(m.base, TASK, length=4, hidden=32, init="file", init_file=str(path)).eval()
    batch = _batch(m, TEXTS, [0, 0, 0])
    torch.testing.assert_close(again(batch), m(batch))
    assert m.artifact_meta()["prefix_parameters"] == m.prefix.table().numel()
    with pytest.raises(SptError, match="shape"):
        cls(m.base, TASK, length=5, hidden=32, init="file", init_file=str(path))
    other = PTuningV2 if cls is PrefixTuning else PrefixTuning
    with pytest.raises(SptError, match="saved by method="):
        other(m.base, TASK, length=4, hidden=32, init="file", init_file=str(path))


@pytest.mark.parametrize("cls", KV_METHODS)
@pytest.mark.parametrize("bad", [{"length": 0}, {"hidden": 0}, {"init": "file"}, {"loss": "nope"}])
def test_bad_settings_name_the_key(bad, cls):
    with pytest.raises(SptError, match="method."):
        cls(tiny("llama"), TASK, **bad)


def test_ptuning_v2_defaults_and_the_reference_pooler_head():
    """The default head reads the model's pooler output (tanh(W h_CLS)), as the reference's
    BertPrefixForSequenceClassification does; the raw [CLS] state stays an option."""
    m = PTuningV2(tiny("bert"), TASK).eval()
    assert not m.prefix.reparam and m.prefix.dropout.p == 0.1 and m.pooling == "pooler"
    batch = _batch(m, TEXTS, [0, 0, 0])
    seen = []
    m.objective.head.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    m(batch)
    prefix = m.kv_prefix(batch)
    p, length = prefix.shape[-2], batch["attention_mask"].shape[1]
    am = torch.cat([torch.ones(3, p, dtype=torch.long), batch["attention_mask"]], 1)
    out = m.backbone(
        inputs_embeds=m.embed(batch),
        attention_mask=am,
        cache=prefix_cache(prefix),
        position_ids=torch.arange(p, p + length).expand(3, -1),
    )
    torch.testing.assert_close(seen[0], out.pooler_output)
    assert PTuningV2(tiny("bert"), TASK, pooling="cls").pooling == "cls"
    with pytest.raises(SptError, match="method.pooling"):
        PTuningV2(tiny("bert"), TASK, pooling="max")
