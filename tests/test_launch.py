"""Launch paths beyond one local process: DDP across 2 CPU processes (gloo), a sweep through
submitit's local executor (the code path SLURM jobs take), and the strategy/launcher configs."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.test_run import _compose, run_dirs, spt_run

FAST = ("debug=fast", "logger=csv")


def _ddp_run_matches_one_process(model: str, tmp_path) -> dict:
    """Train with DDP on 2 CPU processes, then score the saved prompt in one process: one run
    directory, one artifact, and the DDP dev accuracy (synced across ranks) equals the
    single-process one on the same 32 dev rows."""
    r = spt_run(
        f"model={model}",
        *FAST,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        out=tmp_path / "ddp",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "ddp")
    assert sorted(p.name for p in run.glob("prompt.*")) == ["prompt.json", "prompt.safetensors"]
    assert r.stdout.count("spt: dev acc") == 1  # rank 0 reports, rank 1 stays quiet
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["val/acc"] <= 1.0
    again = spt_run(
        f"model={model}",
        *FAST,
        "train=false",
        "method.init=file",
        f"method.init_file={run / 'prompt.safetensors'}",
        out=tmp_path / "one",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    (one,) = run_dirs(tmp_path / "one")
    assert json.loads((one / "metrics.json").read_text())["val/acc"] == metrics["val/acc"]
    return metrics


def test_ddp_on_two_cpu_processes(tmp_path, data_dir):
    _ddp_run_matches_one_process("tiny-bert", tmp_path)


@pytest.mark.slow
@pytest.mark.ci  # issue 5: CI runs the default job itself with DDP
def test_ddp_default_job_on_minilm(tmp_path, data_dir):
    """The default job (Prompt Tuning, SST-2, MiniLM) with DDP, a few steps."""
    _ddp_run_matches_one_process("minilm", tmp_path)


def test_sweep_through_submitit_local(tmp_path, data_dir):
    """A 2-job multirun through submitit's local executor: each job writes its own run with its
    own seed under the sweep directory."""
    r = spt_run(
        "-m",
        "hydra/launcher=local",
        "model=tiny-bert",
        *FAST,
        "seed=1,2",
        out=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted((tmp_path / "multirun").glob("*/*/metrics.json"))
    assert [p.parent.name.split("_")[0] for p in jobs] == ["0", "1"]  # <n>_<its overrides>
    assert "seed=1" in jobs[0].parent.name and "seed=2" in jobs[1].parent.name
    seeds = [json.loads(p.read_text())["seed"] for p in jobs]
    assert seeds == [1, 2]
    assert all((p.parent / "prompt.safetensors").is_file() for p in jobs)
    assert list((tmp_path / "multirun").glob("*/.submitit"))  # submitit ran the jobs
    # each job its own name (its number and overrides); one summary of the sweep at the end
    names = [yaml.safe_load((p.parent / "config.yaml").read_text())["run_name"] for p in jobs]
    assert names[0].startswith("sst2-tiny-bert-prompt #0 ") and "seed=1" in names[0], names
    assert names[1].startswith("sst2-tiny-bert-prompt #1 ") and "seed=2" in names[1], names
    (summary,) = (tmp_path / "multirun").glob("*/summary.md")
    table = " ".join(summary.read_text().split())  # without the column padding
    assert table.count("| done |") == 2 and "val/acc" in table, table
    assert (summary.parent / "summary.csv").read_text().count("\n") == 3  # header + 2 jobs


@pytest.mark.parametrize(
    "strategy,target",
    [("ddp", "ddp"), ("fsdp", "FSDPStrategy"), ("deepspeed", "DeepSpeedStrategy")],
)
def test_strategy_configs_compose(strategy, target):
    cfg = _compose(f"trainer={strategy}")
    value = cfg.trainer.strategy
    assert (value if isinstance(value, str) else value._target_).endswith(target)
    assert cfg.trainer.max_steps == 500  # the rest of the trainer defaults are kept


@pytest.mark.parametrize(
    "launcher,target", [("local", "LocalLauncher"), ("slurm", "SlurmLauncher")]
)
def test_launcher_configs_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    from tests.test_run import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="run", return_hydra_config=True, overrides=[f"hydra/launcher={launcher}"]
        )
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.timeout_min > 0
