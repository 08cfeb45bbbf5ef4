"""Table-driven bad input for the command line (issue 21): each case exits 2 with one
``spt: error:`` line naming the setting, prints no traceback, and leaves no run directory
and no artifact behind."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from spt.core.artifact import load_artifact, save_artifact
from spt.errors import SptError
from tests.test_run import run_dirs, spt_run

pytestmark = pytest.mark.reliability

FAST = ("model=tiny-bert", "debug=fast", "logger=csv")


def _empty_split(root, split: str) -> list[str]:
    """A data root whose ``split`` file holds the header alone."""
    import shutil

    from tests.conftest import DATA_DIR

    (root / "sst2").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(DATA_DIR / "sst2" / name, root / "sst2" / name)
    target = root / "sst2" / ("train.tsv" if split == "train" else "dev.tsv")
    target.write_text(target.read_text().splitlines()[0] + "\n")
    return [f"data.root={root}"]


CASES = {
    "lr zero": (["method.optimizer.lr=0"], "method.optimizer.lr=0"),
    "lr negative": (["method.optimizer.lr=-0.1"], "method.optimizer.lr=-0.1"),
    "head lr zero": (["method.head.lr=0"], "method.head.lr=0"),
    "head dropout 1": (["method.head.dropout=1.0"], "method.head.dropout=1.0"),
    "no steps": (["trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
    "forever": (["trainer.max_steps=-1"], "trains forever"),
    "seed not a number": (["seed=abc"], "seed='abc'"),
    "lr not a number": (["method.optimizer.lr=abc"], "method.optimizer.lr='abc'"),
    "steps not a number": (["trainer.max_steps=abc"], "trainer.max_steps='abc'"),
    "unknown precision": (["trainer.precision=abc"], "Precision 'abc' is invalid"),
    "accumulate zero": (["trainer.accumulate_grad_batches=0"], "accumulate_grad_batches=0"),
    "no validation interval": (["trainer.val_check_interval=0"], "trainer.val_check_interval=0"),
    "unknown group option": (["data=nope"], "Could not find 'data/nope'"),
    "unparsed override": (["method=prompt,prefix"], "Ambiguous value"),
    "run dir under a file": (["paths.root={file}/x"], "cannot create the run directory"),
    "resume from a plain dict": (["resume={dict}"], "no Lightning state_dict, loops"),
    # one per class of configuration error (moved from test_run.py)
    "length zero": (["method.length=0"], "method.length"),
    "length negative": (["method.length=-2"], "method.length"),
    "length not a number": (["method.length=abc"], "method.length='abc'"),
    "rank zero": (["method=mpt", "method.rank=0"], "method.rank=0"),
    "dept rank zero": (["method=dept", "method.rank=0"], "method.rank=0"),
    "dept prompt past the budget": (["method=dept", "method.length=20"], "leaves no budget"),
    "negative radius": (["method=cpt", "model=tiny-llama", "method.eps_input=-1"], "eps_input"),
    "dropout past 1": (["method=ptuning_v2", "method.prompt_dropout=1.5"], "prompt_dropout"),
    "method x arch": (["method=cpt"], "method=cpt does not support encoder"),
    "adaption layers past the model": (
        ["method=adaption_prompt", "model=tiny-llama", "method.layers=9"],
        "method.layers to 1..2",
    ),
    "adaption length zero": (
        ["method=adaption_prompt", "model=tiny-llama", "method.length=0"],
        "method.length=0",
    ),
    "prefix_plus layers zero": (
        ["method=prefix_plus", "model=tiny-llama", "method.layers=0"],
        "method.layers to 1..2",
    ),
    "prefix_plus layers negative": (
        ["method=prefix_plus", "model=tiny-llama", "method.layers=-1"],
        "method.layers to 1..2",
    ),
    "adaption layers negative": (
        ["method=adaption_prompt", "model=tiny-llama", "method.layers=-1"],
        "method.layers to 1..2",
    ),
    "prefix_plus init": (
        ["method=prefix_plus", "model=tiny-llama", "method.init=random"],
        "method.init='random'",
    ),
    "prefix_plus x arch": (["method=prefix_plus"], "method=prefix_plus does not support encoder"),
    "data batch size": (["data.batch_size=0"], "data.batch_size"),
    "settings node key": (["+method.head.dropot=0.2"], "method.head has no ['dropot']"),
    "negative warmup": (["method.scheduler.warmup_steps=-1"], "method.scheduler.warmup_steps=-1"),
    "unknown trainer key": (["trainer.max_stepz=3"], "max_stepz"),
    "select neither last nor best": (["select=first"], "select='first': choose last or best"),
    "unknown optimized metric": (["optimized_metric=val/f1"], "optimized_metric='val/f1'"),
    "resume=last without one": (["resume=last"], "hydra.run.dir=<the killed run"),
    "resume from nowhere": (["resume={file}.ckpt"], "check the path"),
    "empty train": ("train", "the train split has no rows"),
    "empty dev": ("dev", "the dev split has no rows"),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, data_dir):
    """Every case of the table, each through ``python -m spt.run``'s entry, in one process."""
    import subprocess
    import sys

    from tests.test_run import REPO

    root = tmp_path_factory.mktemp("bad")
    (root / "file").write_text("")
    torch.save({"weights": torch.zeros(2)}, root / "plain.ckpt")  # a dict, not Lightning's
    lines, outs = [], {}
    for case, (overrides, _) in sorted(CASES.items()):
        where = root / case.replace(" ", "_")
        if isinstance(overrides, str):
            overrides = _empty_split(where / "data", overrides)
        overrides = [o.format(file=root / "file", dict=root / "plain.ckpt") for o in overrides]
        outs[case] = where / "out"
        lines.append([str(outs[case]), *FAST, *overrides])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "tests.cli_cases"],
        input=json.dumps(lines),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout)
    return {case: (res, outs[case]) for case, res in zip(sorted(CASES), results, strict=True)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_settings_fail_in_one_line_and_write_nothing(case, cli_results):
    (result, out), needle = cli_results[case], CASES[case][1]
    assert result["code"] == 2, result
    errors = [line for line in result["stderr"].splitlines() if line.startswith("spt: error:")]
    assert len(errors) == 1 and needle in errors[0], result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    assert run_dirs(out) == [] and not list(out.rglob("prompt.safetensors"))


def test_the_process_exits_2_on_what_hydra_refuses(tmp_path):
    """The real process, once: an unknown group option is exit status 2 (Hydra's own is 1)."""
    r = spt_run(*FAST, "data=nope", out=tmp_path)
    assert r.returncode == 2 and r.stderr.count("spt: error:") == 1
    assert "Traceback" not in r.stderr and run_dirs(tmp_path) == []


# -- prompt tensors that must be refused on load, save and import ---------------------------


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.tensor([[1.0, float("inf")]]), "non-finite"),
        (torch.tensor([[float("nan"), 0.0]]), "non-finite"),
        (torch.tensor([[1, 2]], dtype=torch.int64), "not a floating-point prompt"),
    ],
)
@pytest.mark.parametrize(
    ("name", "method"),
    [("prompt", "prompt"), ("adaption.gates", "adaption_prompt"), ("update.a", "dept")],
)
def test_non_finite_or_integer_prompts_are_refused(tmp_path, tensor, message, name, method):
    """Any method's tensors (not a list of known names: DePT's update and adaption gates were
    missed by one), except CPT's token indices."""
    meta = {"method": method}
    with pytest.raises(SptError, match=message):
        save_artifact(tmp_path / "a.safetensors", {name: tensor}, meta)
    assert not (tmp_path / "a.safetensors").exists()
    path = tmp_path / "b.safetensors"
    save_file({name: tensor}, str(path), metadata={"spt": json.dumps(meta)})
    with pytest.raises(SptError, match=message):
        load_artifact(path)  # what spt.load, serving, init=file and PEFT export read through


# -- the tools' command lines --------------------------------------------------------------


def _one_error(capsys, message: str) -> None:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("spt: error: ") and message in err[0], err


def _run_dir(root, metrics="{}", config="seed: 1\n"):
    run = root / "run"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(metrics)
    (run / "config.yaml").write_bytes(config if isinstance(config, bytes) else config.encode())
    return run


@pytest.mark.parametrize(
    ("metrics", "config", "message"),
    [
        ("[1, 2]", "seed: 1\n", "holds a JSON list"),
        ("{not json", "seed: 1\n", "not a readable metrics.json"),
        ("{}", bytes(range(256)), "not a readable config"),
        ("{}", "a: [unclosed\n", "not a readable config"),
    ],
)
def test_compare_refuses_damaged_runs_in_one_line(tmp_path, capsys, metrics, config, message):
    from spt.tools.compare import main

    _run_dir(tmp_path, metrics, config)
    assert main([str(tmp_path)]) == 2
    _one_error(capsys, message)


def test_tool_outputs_that_cannot_be_written_are_one_line(tmp_path, capsys):
    from spt.tools import analysis, compare

    good = {"data": "sst2", "model": "m", "method": "prompt", "val/acc": 0.5, "seed": 1}
    _run_dir(tmp_path, json.dumps(good))
    (tmp_path / "file").write_text("")
    assert compare.main([str(tmp_path), "--csv", str(tmp_path / "file" / "t.csv")]) == 2
    _one_error(capsys, "cannot write")
    assert analysis.main([str(tmp_path / "run"), "--weight", "nan"]) == 2
    _one_error(capsys, "--weight nan")
    assert analysis.main([str(tmp_path / "run"), "--device", "cuda:5"]) == 2
    _one_error(capsys, "CUDA device")


def test_serve_refuses_a_port_outside_tcp(tmp_path, capsys):
    from spt.serve.cli import main

    assert main(["http", "--run", str(tmp_path), "--port", "99999"]) == 2
    _one_error(capsys, "--port 99999")
    assert main(["http", "--run", str(tmp_path), "--max-rows", "0"]) == 2
    _one_error(capsys, "server limits")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"sentence\tlabel\n\xff\xfe\x00binary\t1\n", "is not UTF-8"),
        (b"\x1f\x8b\x08\x00gzip\x00" * 20, "is not UTF-8"),  # a compressed file
    ],
)
def test_data_files_that_are_not_text_are_one_line(tmp_path, content, message):
    from spt.data.readers import read_rows

    path = tmp_path / "train.tsv"
    path.write_bytes(content)
    with pytest.raises(SptError, match=message):
        list(read_rows(path, "tsv", None, "none"))


def test_a_lone_surrogate_in_jsonl_is_named(tmp_path):
    from spt.data.readers import read_rows

    path = tmp_path / "train.jsonl"
    path.write_text('{"premise": "ok", "label": 1}\n{"premise": "a\\ud800b", "label": 0}\n')
    with pytest.raises(SptError, match=r"train.jsonl:2: column 'premise'.*lone surrogate"):
        list(read_rows(path, "jsonl", None, "minimal"))
    path.write_text("[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(SptError, match="not valid JSON"):
        list(read_rows(path, "jsonl", None, "minimal"))


def test_outputs_under_a_file_are_refused_before_the_work(tmp_path, capsys):
    """eval and generate check --out/--predictions before loading anything (else an hour of
    evaluation ends in a write error)."""
    import spt
    from spt import eval as spt_eval
    from spt import generate
    from spt.backbones import tiny

    prompt = spt.prompt_model(tiny("llama"), method="prompt", length=2,
                              template="{soft}{sentence}", labels=["a", "b"], task="t")  # fmt: skip
    path = str(prompt.save(tmp_path / "p.safetensors"))
    (tmp_path / "file").write_text("")
    under = str(tmp_path / "file" / "x.json")
    assert spt_eval.main([path, "--out", under]) == 2
    _one_error(capsys, f"cannot write --out {under}: {tmp_path / 'file'} is not a folder")
    assert spt_eval.main([path, "--predictions", under]) == 2
    _one_error(capsys, "cannot write --predictions")
    assert generate.main([path, "--text", "hi", "--out", under]) == 2
    _one_error(capsys, "cannot write --out")
    assert not (tmp_path / "file").read_text()


def test_a_file_size_limit_on_the_artifact_is_one_error_and_no_temp_file(tmp_path):
    """EFBIG (RLIMIT_FSIZE, or a filesystem's largest file): safetensors reports it as its own
    error, which spt names with the path; the half-written temp file is removed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises(SptError, match=r"cannot write .*a.safetensors: .*File too large"):
            save_artifact(tmp_path / "a.safetensors", {"prompt": torch.ones(64, 64)}, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


def test_a_400_megapixel_image_is_refused_unread(tmp_path):
    """A PNG whose header claims 20000 x 20000 pixels: PIL's decompression-bomb check refuses
    it on open, before any pixel is decoded, and spt names the file."""
    import struct
    import zlib

    from spt.data.images import open_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)  # 8-bit RGB
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(
        SptError, match=r"cannot read image .*bomb.png from rows.csv: .*decompression bomb"
    ):
        open_image(str(tmp_path / "bomb.png"), "rows.csv")


def test_peft_import_of_a_nested_config_or_a_bad_model_setting_is_one_line(tmp_path, capsys):
    from spt.interop.peft import main

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"")
    out = str(tmp_path / "p.safetensors")
    assert main(["import", str(tmp_path / "a"), out, "--model", "tiny-llama"]) == 2
    _one_error(capsys, "is not a readable JSON adapter config")
    assert (
        main(["import", str(tmp_path / "a"), out, "--model", "tiny-llama", "--set", "hidden=abc"])
        == 2
    )
    _one_error(capsys, "--set hidden=abc: the model could not be built")
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.parametrize("config", [bytes(range(256)), b"a: [unclosed\n"])
def test_analysis_of_a_run_with_a_damaged_config_is_one_line(tmp_path, capsys, config):
    import spt
    from spt.backbones import tiny
    from spt.tools import analysis

    run = _run_dir(tmp_path, config=config)
    prompt = spt.prompt_model(tiny("llama"), method="prompt", length=2,
                              template="{soft}{sentence}", labels=["negative", "positive"], task="sst2")  # fmt: skip
    prompt.save(run / "prompt.safetensors")
    assert analysis.main([str(run)]) == 2
    _one_error(capsys, "config.yaml is not a readable config")
