"""The Low-Norm Effect analysis (Fu et al., ICLR 2024; ``python -m spt.analysis``): the
uncorrupted accuracy is the run's own, a neutral corruption changes nothing, a corruption built
to help or hurt is found at its position, the CLI writes its CSV and plot, and bad input fails
with one clear line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from spt.regularizers import methods_providing
from spt.tools.analysis import load_run, low_norm_effect, main, replaced_prompts
from tests.test_run import REPO, run_dirs, spt_run

pytestmark = pytest.mark.usefixtures("one_thread")


# -- a classifier built so that we know which positions matter ----------------------------
class _Stub(nn.Module):
    """Class 1 scores ``t - ||v1|| + 5 (||v0|| - 1)``, class 0 scores 0: shrinking v1 helps,
    shrinking v0 hurts, v2 does not matter. Batches are image-like (``pixel_values``, no
    ``input_ids``), so the batch size must come from ``labels``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.calls = 0

    def soft_prompts(self, task_ids):
        return self.table[task_ids]

    def scores_with_prompts(self, batch, prompts):
        self.calls += 1
        assert len(batch["pixel_values"]) == len(prompts)
        n = prompts.norm(dim=-1)
        s1 = batch["t"] - n[:, 1] + 5 * (n[:, 0] - 1)
        return torch.stack([torch.zeros_like(s1), s1], -1)


# norms 1, 2, 1: class-1 score t - 2, so rows t = 1.0 and 0.5 are wrong, 3.0 and 2.5 right.
TABLE = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]]])


def _batches(t: list[list[float]], task_ids: list[list[int]] | None = None) -> list[dict]:
    out = []
    for i, rows in enumerate(t):
        b = {
            "pixel_values": torch.zeros(len(rows), 3, 2, 2),
            "t": torch.tensor(rows),
            "labels": torch.ones(len(rows), dtype=torch.long),
        }
        if task_ids is not None:
            b["task_ids"] = torch.tensor(task_ids[i])
        out.append(b)
    return out


T = [[1.0, 3.0], [2.5, 0.5]]


@pytest.mark.parametrize("chunk_rows", [1, 4, 256])
def test_corruption_that_helps_or_hurts_is_found_at_its_position(chunk_rows):
    stub = _Stub(TABLE)
    # rescale by 0.1: v0 -> t - 6.5 (none right), v1 -> t - 0.2 (all right), v2 -> unchanged
    res = low_norm_effect(stub, _batches(T), mode="rescale", weight=0.1, chunk_rows=chunk_rows)
    assert res.baseline == 0.5 and res.rows == 4
    assert res.accuracy == [0.0, 1.0, 0.5] and res.helped == [1]
    assert res.norms == pytest.approx([1.0, 2.0, 1.0])
    assert [r["delta"] for r in res.table()] == [-0.5, 0.5, 0.0]
    # the 4 variants of a 2-row batch: one forward per batch unless chunk_rows splits them
    assert stub.calls == 2 * {1: 4, 4: 2, 256: 1}[chunk_rows]
    assert stub.training  # eval mode inside, the previous mode restored after
    # replace with sigma = 0 zeroes the position: v0 -> t - 7, v1 -> t
    res = low_norm_effect(stub, _batches(T), mode="replace", sigma=0.0, chunk_rows=chunk_rows)
    assert res.accuracy == [0.0, 1.0, 0.5] and res.helped == [1]


def test_rescale_by_one_changes_nothing_and_noise_is_seeded():
    res = low_norm_effect(_Stub(TABLE), _batches(T), mode="rescale", weight=1.0)
    assert res.accuracy == [res.baseline] * 3
    a, b = (
        low_norm_effect(_Stub(TABLE), _batches(T), mode="replace", sigma=3.0, seed=7)
        for _ in range(2)
    )
    assert a == b


def test_replaced_prompts_layout_and_class_axis():
    prompts = torch.arange(2 * 3 * 4 * 2, dtype=torch.float).reshape(2, 3, 4, 2)  # [B, C, N, d]
    noise = -torch.ones(4, 2)
    out = replaced_prompts(prompts, torch.tensor([3, 0]), noise).reshape(3, 2, 3, 4, 2)
    torch.testing.assert_close(out[0], prompts)
    for k, pos in ((1, 3), (2, 0)):
        assert (out[k][..., pos, :] == -1).all()
        keep = [i for i in range(4) if i != pos]
        torch.testing.assert_close(out[k][..., keep, :], prompts[..., keep, :])


def test_mixture_accuracy_is_the_mean_over_tasks():
    stub = _Stub(torch.cat([TABLE, TABLE]))
    res = low_norm_effect(stub, _batches([[3.0, 3.0], [3.0, 1.0]], [[0, 0], [0, 1]]))
    assert res.baseline == 0.5  # task 0: 3/3 right, task 1: 0/1 (micro would be 0.75)


# -- a real (tiny) run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("lownorm")
    r = spt_run(
        "model=tiny-llama",
        "data=sst2",
        f"data.root={data_dir}",
        "data.train_limit=8",
        "data.dev_limit=16",
        "data.batch_size=8",
        "trainer.max_steps=2",
        "logger=csv",
        "method.length=4",
        out=out,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = run_dirs(out)
    return path


def test_uncorrupted_accuracy_is_the_runs_dev_accuracy(run):
    _, dm, method = load_run(run)
    metrics = json.loads((run / "metrics.json").read_text())
    res = low_norm_effect(method, dm.val_dataloader(), mode="rescale", weight=1.0, chunk_rows=8)
    assert res.rows == 16
    assert res.baseline == pytest.approx(metrics["val/acc"], abs=1e-6)  # though reordered:
    lengths = [n for b in dm.val_dataloader() for n in b["attention_mask"].sum(1).tolist()]
    assert len(set(lengths)) > 1 and lengths == sorted(lengths, reverse=True)  # longest-first
    assert res.accuracy == [res.baseline] * 4  # w = 1 is no corruption
    assert len(res.norms) == 4 and all(n > 0 for n in res.norms)


def test_cli_writes_csv_and_plot(run, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "spt.analysis",
            str(run),
            "--mode",
            "replace",
            "--sigma",
            "2.0",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with (tmp_path / "low_norm_replace.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(row["position"]) for row in rows] == [0, 1, 2, 3]
    assert all(float(row["norm"]) > 0 for row in rows)
    with Image.open(tmp_path / "low_norm_replace.png") as img:
        img.verify()
    assert "| position | norm | accuracy | delta |" in " ".join(r.stdout.split())
    assert "positions (replace) raised it" in r.stdout


# -- bad input -------------------------------------------------------------------------------
def test_missing_run_dir_fails_with_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "spt.analysis", str(tmp_path / "nowhere")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("spt: error: ") and "Traceback" not in r.stderr
    assert str(tmp_path / "nowhere") in r.stderr and "spt.run" in r.stderr


def test_method_without_soft_prompts_and_missing_artifact(run, tmp_path, capsys):
    import spt
    from spt.backbones import tiny

    prefix = tmp_path / "prefix"
    config = (run / "config.yaml").read_text()
    spt.prompt_model(
        tiny("llama"), method="prefix", length=2, hidden=8, labels=["negative", "positive"],
        template="{soft}Review: {sentence} Sentiment:", task="sst2",
    ).save(prefix / "prompt.safetensors")  # fmt: skip
    assert main([str(prefix)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spt: error: method=prefix has no soft-prompt vectors")
    named = {m.strip() for m in err.split("needs a run of method=")[-1].split("|")}
    assert named == set(methods_providing(("soft_prompts", "scores_with_prompts")))
    assert {"prompt", "ptuning", "mpt"} <= named
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(config)
    assert main([str(bare)]) == 2
    assert "no prompt.safetensors" in capsys.readouterr().err


def test_a_run_directory_runs_no_code_it_names(run, tmp_path):
    """Issue 21: the analysis rebuilds the run from its artifact and spt's own data configs;
    a config.yaml whose targets name builtins.exec is never instantiated."""

    source, run = run, tmp_path / "evil"
    shutil.copytree(source, run)
    marker = tmp_path / "pwned"
    evil = f"{{_target_: builtins.exec, _args_: [\"open({str(marker)!r}, 'w')\"]}}"
    (run / "config.yaml").write_text(f"model: {evil}\nmethod: {evil}\ndata: {evil}\n")
    _, dm, method = load_run(run)
    assert not marker.exists() and dm.num_rows("dev") > 0
