"""Resume after a kill: a training subprocess is SIGKILLed mid-epoch, resumed from its last
checkpoint (``resume=last``), and ends with exactly the prompt of an uninterrupted run (CPU,
same seed): model, optimizer, data position and RNG all come back. Also through a Hydra
multirun job, and the clear refusals around it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_run import REPO, run_dirs, spt_run

STEPS = 150  # tiny-bert: a few ms a step, so the kill lands well before the end
# 8 batches per epoch: the kill lands mid-epoch; dropout (method.head.dropout 0.1) draws from the RNG
COMMON = (
    "model=tiny-bert",
    "data.train_limit=32",
    "data.dev_limit=16",
    "data.batch_size=4",
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "logger=csv",
    "callbacks.last_checkpoint.every_n_train_steps=20",
    "seed=7",
)


def _env(out: Path) -> dict:
    return {**os.environ, "SPT_OUTPUT_DIR": str(out), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _step(ckpt: Path) -> int:
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    except Exception:  # not there yet
        return -1


def _start_and_signal(
    args: list[str], out: Path, ckpt_glob: str, min_step: int, sig, delay: float = 0.0
) -> tuple[int, str]:
    """Start ``spt.run`` with ``args``, send ``sig`` ``delay`` seconds after a checkpoint of
    step >= ``min_step`` exists; return its exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spt.run", *args],
        cwd=REPO,
        env=_env(out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = sorted(out.glob(ckpt_glob))
            if found and _step(found[0]) >= min_step:
                time.sleep(delay)
                proc.send_signal(sig)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _start_and_kill(args: list[str], out: Path, ckpt_glob: str, min_step: int = 40) -> Path:
    """Start ``spt.run`` with ``args``, SIGKILL it once a checkpoint of step >= ``min_step``
    exists; return that checkpoint."""
    code, err = _start_and_signal(args, out, ckpt_glob, min_step, signal.SIGKILL)
    assert code == -signal.SIGKILL, f"not killed mid-run ({code}): {err}"
    (ckpt,) = out.glob(ckpt_glob)
    assert 0 < _step(ckpt) < STEPS
    return ckpt


def _job(sweep: Path, n: int) -> Path:
    """Job ``n``'s folder of a sweep (``<n>_<its overrides>``)."""
    (found,) = sweep.glob(f"{n}_*")
    return found


def _prompt(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "prompt.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    r = spt_run(*COMMON, out=out, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(out)
    return run


@pytest.mark.reliability
def test_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = _start_and_kill(
        [*COMMON, f"hydra.run.dir={run_dir}"], tmp_path, "run/checkpoints/last.ckpt"
    )
    killed_at = _step(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["callbacks"]["FitClock"]["seconds"] > 0
    state["callbacks"]["FitClock"]["seconds"] = 1e5  # marked, to be found in fit_seconds
    torch.save(state, ckpt)
    assert not (run_dir / "metrics.json").exists()
    r = spt_run(*COMMON, f"hydra.run.dir={run_dir}", "resume=last", out=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and killed_at % 20 == 0
    assert 1e5 < metrics["fit_seconds"] < 1e5 + 600  # the stretch before the kill counts
    want, got = _prompt(reference), _prompt(run_dir)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed prompt differs"
    assert metrics["val/acc"] == json.loads((reference / "metrics.json").read_text())["val/acc"]


@pytest.mark.reliability
def test_killed_sweep_job_resumes_by_rerunning_the_sweep(reference, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *COMMON, f"hydra.sweep.dir={sweep}"]
    _start_and_kill(args, tmp_path, "sweep/0_*/checkpoints/last.ckpt")
    r = spt_run(*args, "resume=last", out=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = _prompt(_job(sweep, 0)), _prompt(reference)
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed sweep job differs"


@pytest.mark.reliability
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoints(tmp_path, data_dir):
    """SGD at lr 1e30 blows the prompt up after one step: the run stops at the NaN loss with one
    clear line naming the step, exit status 2, the checkpoint from before that step intact and
    loadable, and no artifact of a diverged prompt."""
    run_dir = tmp_path / "run"
    r = spt_run(
        "model=tiny-bert",
        "debug=fast",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "method.optimizer._target_=torch.optim.SGD",
        "~method.optimizer.scale_parameter",
        "~method.optimizer.relative_step",
        "~method.optimizer.warmup_init",
        "~method.optimizer.clip_threshold",
        "method.optimizer.lr=1e30",
        out=tmp_path,
    )
    assert r.returncode == 2
    (line,) = [s for s in r.stderr.splitlines() if s.startswith("spt: error:")]
    assert "non-finite training loss (nan) at step 1" in line and "method.optimizer.lr" in line
    assert "Traceback" not in r.stderr
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert _step(ckpt) == 1  # saved after step 0's update, before the failing step 1
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (run_dir / "prompt.safetensors").exists()  # no artifact from a diverged prompt


@pytest.mark.reliability
def test_checkpoints_are_written_beside_their_target_and_a_dead_write_leaves_the_last(
    tmp_path, monkeypatch
):
    """spt's checkpoint writer (the Trainer's plugin) writes a temp file beside the
    checkpoint, not in $TMPDIR as Lightning's fsspec transaction does (where a killed writer
    leaves a checkpoint-sized file nothing removes): a write that dies half way leaves the
    previous last.ckpt loadable and no temp file, and a killed writer's temp file is removed
    by the next save."""
    from omegaconf import OmegaConf

    from spt.resume import AtomicCheckpointIO
    from spt.train import build_trainer

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read $TMPDIR
    run = tmp_path / "run"
    path = run / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    real_save, seen = torch.save, []

    def dies_midway(obj, f, *args, **kwargs):
        seen.append(Path(f))
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(Exception, match="No space left on device"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert seen[0].parent == run and seen[0].name.startswith(".last.ckpt.")
    assert _step(path) == 1 and torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in run.iterdir()) == ["last.ckpt"] and not list(tmpdir.iterdir())
    killed = run / ".last.ckpt.x1y2.tmp"  # what a SIGKILL mid-write leaves
    killed.write_bytes(b"partial")
    os.utime(killed, (time.time() - 120, time.time() - 120))
    io.save_checkpoint({"global_step": 3, "w": torch.ones(3)}, path)
    assert sorted(p.name for p in run.iterdir()) == ["last.ckpt"] and _step(path) == 3
    trainer = build_trainer(
        OmegaConf.create({"_target_": "lightning.pytorch.Trainer", "logger": False}),
        plugins=[AtomicCheckpointIO()],
    )
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.reliability
def test_resume_refuses_a_checkpoint_that_would_run_pickled_code(tmp_path, data_dir):
    """resume= loads with weights_only=True: a checkpoint carrying an arbitrary Python object
    is refused, and its code never runs."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, evil)
    r = spt_run("model=tiny-bert", "debug=fast", "logger=csv", f"resume={evil}", out=tmp_path)
    assert r.returncode == 2 and not marker.exists()
    assert "is not a checkpoint spt can load safely" in r.stderr and "Traceback" not in r.stderr
    assert run_dirs(tmp_path) == []


class _Payload:
    """Pickles to a call that would create ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.reliability
def test_resume_auto_keeps_finished_jobs_resumes_killed_ones_and_refuses_a_changed_config(
    reference, tmp_path
):
    """Rerunning a sweep with resume=auto: a finished job is kept as it is (not retrained), a
    killed one continues from its last checkpoint to the uninterrupted result, and a finished
    job, or a killed job's checkpoint, whose config has since changed is refused, naming the
    key."""
    sweep = tmp_path / "sweep"
    args = ["-m", *COMMON, f"hydra.sweep.dir={sweep}", "resume=auto"]
    r = spt_run(*args, out=tmp_path, env={"OMP_NUM_THREADS": "1"})  # nothing there: starts
    assert r.returncode == 0, r.stderr[-3000:]
    job = _job(sweep, 0)
    assert "seed=7" in job.name and "model=tiny-bert" in job.name  # named by its overrides
    done = job / "metrics.json"
    first, stamp = done.read_text(), done.stat().st_mtime_ns
    r = spt_run(*args, out=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already finished" in (job / "run.log").read_text()
    assert done.read_text() == first and done.stat().st_mtime_ns == stamp  # not retrained
    assert "spt: dev acc" in r.stdout

    saved = job / "config.yaml"  # a run finished before spt/conf/ gained a key: kept
    lines = saved.read_text().splitlines()
    saved.write_text(
        "\n".join(line for line in lines if not line.strip().startswith("group_by_length:")) + "\n"
    )
    r = spt_run(*args, out=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and done.read_text() == first, r.stderr[-3000:]

    # a finished job whose saved config differs from what spt/conf/ composes now (a default
    # changed since): refused, naming the key
    original = saved.read_text()
    saved.write_text(original.replace("dev_limit: 16", "dev_limit: 8", 1))
    r = spt_run(*args, out=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    assert "another config" in r.stderr and "data.dev_limit" in r.stderr
    assert done.read_text() == first  # nothing lost
    saved.write_text(original)  # (another override is another job, in its own folder)

    shelf = tmp_path / "shelf"  # a finished sweep moved elsewhere: its paths are not a change
    sweep.rename(shelf)
    r = spt_run(
        "-m",
        *COMMON,
        f"hydra.sweep.dir={shelf}",
        "resume=auto",
        out=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (_job(shelf, 0) / "metrics.json").read_text() == first  # kept, not retrained

    # a killed job's checkpoint under a changed config, in a folder pinned to the job number
    # (hydra.sweep.subdir): refused, naming the key and the fix
    killed = tmp_path / "killed"
    pinned = "hydra.sweep.subdir=${hydra.job.num}"
    kargs = ["-m", *COMMON, f"hydra.sweep.dir={killed}", pinned]
    ckpt = _start_and_kill(kargs, tmp_path, "killed/0/checkpoints/last.ckpt")
    before = ckpt.read_bytes()
    r = spt_run(*kargs, "resume=auto", "data.dev_limit=8", out=tmp_path)  # not this run's
    assert r.returncode != 0
    assert "another config" in r.stderr and "data.dev_limit" in r.stderr, r.stderr[-2000:]
    assert f"resume={ckpt}" in r.stderr  # the fix, if meant
    assert ckpt.read_bytes() == before  # nothing lost
    moved = tmp_path / "moved"  # a killed sweep copied elsewhere (scratch to home) resumes
    killed.rename(moved)
    r = spt_run(
        "-m",
        *COMMON,
        f"hydra.sweep.dir={moved}",
        pinned,
        "resume=auto",
        out=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = _prompt(moved / "0"), _prompt(reference)
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed job differs"


def test_resumed_config_check_refuses_auto_warns_on_a_named_path_and_skips_unstamped(caplog):
    from spt.errors import SptError
    from spt.resume import check_resumed_config, in_run_dir

    ckpt = Path("/runs/x/checkpoints/last.ckpt")
    saved = {"seed": 1, "data": {"dev_limit": 16}, "resume": None}
    new = {"seed": 1, "data": {"dev_limit": 8}, "resume": "auto"}
    for how in ("auto", "last"):
        with pytest.raises(SptError, match=r"data\.dev_limit differ.*resume=/runs/x"):
            check_resumed_config(how, ckpt, saved, new)
    with caplog.at_level("WARNING", logger="spt.run"):
        check_resumed_config(str(ckpt), ckpt, saved, new)  # named on purpose: continues
    assert "data.dev_limit" in caplog.text
    check_resumed_config("auto", ckpt, None, new)  # written before spt stamped its config
    assert in_run_dir({"a": ["/r/x", "/r/x/c.ckpt", "/r/xy"], "b": 1}, Path("/r/x")) == {
        "a": ["<run dir>", "<run dir>/c.ckpt", "/r/xy"],
        "b": 1,
    }
    check_resumed_config("auto", ckpt, {**saved, "data": {"dev_limit": 8}}, new)  # same run


def test_finished_run_compares_paths_relative_to_where_it_ran(tmp_path):
    """A finished run is kept whether it was moved (its paths under the old run directory) or
    wrote to a ``paths.output_dir`` outside its run directory; a changed outside
    ``paths.output_dir`` is still refused, naming the key."""
    from omegaconf import OmegaConf

    from spt.errors import SptError
    from spt.resume import finished_run, in_run_dir

    def config(root):
        return {
            "seed": 1,
            "paths": {"output_dir": str(root)},
            "trainer": {"default_root_dir": str(root)},
        }

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"val/acc": 0.5}))
    for written, now in [
        (tmp_path / "was_here", run),  # moved
        (tmp_path / "elsewhere", tmp_path / "elsewhere"),
    ]:  # outside, unmoved
        (run / "config.yaml").write_text(OmegaConf.to_yaml(config(written)))
        stamp = in_run_dir(config(now), run)
        assert finished_run("auto", run, stamp) == {"val/acc": 0.5}
    with pytest.raises(SptError, match=r"paths\.output_dir"):
        finished_run("auto", run, in_run_dir(config(tmp_path / "other"), run))


def test_names_and_loggers_are_not_a_changed_config():
    """A rerun sweep job's W&B name and tags carry its overrides and sweep folder: they name
    the run, they do not change it; any other key does."""
    from spt.resume import config_differences

    old = {"run_name": "a #0 seed=1", "logger": {"wandb": {"tags": ["sweep:x"]}}, "seed": 1}
    new = {
        "run_name": "a #0 seed=1,resume=auto",
        "logger": {"wandb": {"tags": ["sweep:y"]}},
        "seed": 1,
        "resume": "auto",
    }
    assert config_differences(new, old) == ""
    assert config_differences({**new, "seed": 2}, old) == "seed"


@pytest.mark.reliability
def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_identically(reference, tmp_path):
    """A preempted run (SLURM sends SIGTERM): the current step is checkpointed, the exit
    status is 143 (a scheduler or a sweep reads a failure, not a success, and writes no
    artifact), and resume=last continues to the uninterrupted prompt."""
    run_dir = tmp_path / "run"
    args = [*COMMON, f"hydra.run.dir={run_dir}"]
    # a few steps past the periodic checkpoint at 20, with training under way
    code, err = _start_and_signal(
        args, tmp_path, "run/checkpoints/last.ckpt", 20, signal.SIGTERM, delay=0.3
    )
    assert code == 143, err[-2000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    stopped = _step(ckpt)
    assert f"checkpoint at step {stopped}" in err and "resume=last" in err
    assert 20 <= stopped < STEPS and not (run_dir / "prompt.safetensors").exists()
    r = spt_run(*args, "resume=last", out=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    want, got = _prompt(reference), _prompt(run_dir)
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed prompt differs"
