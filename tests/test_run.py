"""The Hydra entry point: every YAML composes, runs end to end on tiny models, and bad input
fails with a clear message, exit status != 0 and no half-written run directory."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.utils import _locate
from omegaconf import OmegaConf

from spt import CONF_DIR
from spt.backbones.tiny_models import TINY_ARCHS
from spt.build import build
from spt.errors import SptError

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
TINY = [m for m in MODELS if m.startswith("tiny-")]
CLASSIFICATION = [
    d for d in DATA if "TextClassificationDataModule" in (CONF / "data" / f"{d}.yaml").read_text()
]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides))


def _target(node) -> object:
    return _locate(node._target_)


def _refusal(cfg, arch: str) -> str | None:
    """The message (a regex) ``build(cfg)`` must refuse with, or None when it must build:
    text data on CLIP, or an architecture the method's YAML leaves out."""
    image_data = "FewShotImageDataModule" in cfg.data._target_
    if arch == "clip" and not image_data:
        return "is a text task and the model is CLIP"
    if image_data and arch != "clip":
        return "holds images"
    supports = cfg.method.get("supports")
    if supports is not None and arch not in supports:
        return f"does not support {arch}"
    return None


def _small_data(arch: str, data_dir) -> list[str]:
    """Overrides for the small dataset a method is smoke-tested on, per architecture: 8 train
    rows of SST-2, or one image per CIFAR-10 class."""
    if arch == "clip":
        return [
            "data=cifar10_subset",
            f"data.root={data_dir}",
            "data.shots=1",
            "data.dev_limit=8",
            "data.batch_size=4",
        ]
    return [
        "data=sst2",
        f"data.root={data_dir}",
        "data.train_limit=8",
        "data.dev_limit=8",
        "data.batch_size=4",
    ]


@pytest.mark.parametrize("method", METHODS)
def test_every_yaml_combination_composes(method):
    """The method with every model YAML and with every data YAML composes and resolves
    (instantiation of the tiny combinations is tested below)."""
    pairs = [(m, "sst2") for m in MODELS] + [("tiny-llama", d) for d in DATA]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for model, data in pairs:
            cfg = compose(
                config_name="run", overrides=[f"method={method}", f"model={model}", f"data={data}"]
            )
            for group in ("method", "model", "data", "trainer"):
                assert callable(_target(cfg[group])), f"{model}/{data}: {group} target"
            for group in ("method", "model", "data"):  # the rest needs Hydra's runtime
                OmegaConf.to_container(cfg[group], resolve=True)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    """... and names its study (the W&B group) and tags, which the main config's own keys do
    not override."""
    cfg = _compose(f"experiment={experiment}")
    for group in ("method", "model", "data"):
        OmegaConf.to_container(cfg[group], resolve=True)
    assert cfg.tags and "/" not in cfg.study and cfg.logger.wandb.group == cfg.study


def _swept_experiments() -> list[str]:
    """The experiments whose YAML carries a ``hydra.sweeper.params`` grid."""
    return sorted(
        p.stem
        for p in (CONF / "experiment").glob("*.yaml")
        if OmegaConf.select(OmegaConf.load(p), "hydra.sweeper.params")
    )


def test_sweep_grids_are_found():
    assert {"lester_prompt_length", "lester_init", "mpt_transfer"} <= set(_swept_experiments())


@pytest.mark.parametrize("experiment", _swept_experiments())
def test_every_experiment_sweep_grid_composes(experiment):
    """The first and the last point of an experiment's ``hydra.sweeper.params`` grid compose
    and resolve, and the experiment's own settings survive the sweep's overrides (a grid key
    that names no config key, or a value that is no option of its group, fails here, not on
    the cluster)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="run", overrides=[f"experiment={experiment}"], return_hydra_config=True
        )
        params = cfg.hydra.sweeper.params
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        values = [
            list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]
            for o in parsed
        ]
        for pick in (0, -1):
            point = [f"{o.key_or_group}={v[pick]}" for o, v in zip(parsed, values, strict=True)]
            job = compose(config_name="run", overrides=[f"experiment={experiment}", *point])
            for group in ("method", "model", "data"):  # the rest needs Hydra's runtime
                OmegaConf.to_container(job[group], resolve=True)
            swept = {o.key_or_group.split(".")[0] for o in parsed}
            for key in ("study", "tags", "method", "regularizer"):  # what the grid leaves alone
                if key not in swept:
                    assert OmegaConf.to_container(job)[key] == OmegaConf.to_container(cfg)[key], (
                        point,
                        key,
                    )  # unresolved: ${seed}
    if experiment.startswith("nemesis_coop_") and "regularizer" in params:  # per-dataset A
        assert (job.regularizer.weight, job.regularizer.schedule) == (
            50,
            "constant",
        ) or experiment.endswith("imagenet")


TINY_CASES = sorted(
    {
        *itertools.product(METHODS, TINY, ["sst2", "cifar10_subset"]),
        *itertools.product(["prompt"], TINY, CLASSIFICATION),
        *itertools.product(METHODS, ["tiny-llama"], ["rte"]),
    }
)


@pytest.mark.parametrize("method,model,data", TINY_CASES)
def test_tiny_combinations_instantiate(method, model, data, data_dir):
    """Every method on every tiny architecture, and every classification dataset on every
    architecture, builds and scores a dev batch (or is refused by name)."""
    cfg = _compose(
        f"method={method}",
        f"model={model}",
        f"data={data}",
        f"data.root={data_dir}",
        "data.dev_limit=8",
    )
    arch = TINY_ARCHS[cfg.model.family]
    refusal = _refusal(cfg, arch)
    if refusal:  # declared in YAML (or text data on an image model), refused clearly
        with pytest.raises(SptError, match=refusal):
            build(cfg)
        return
    backbone, dm, m = build(cfg)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    scores = m(batch)
    assert scores.shape == (len(batch["labels"]), dm.task.num_classes)
    if "soft_mask" in batch:
        assert m.n_soft_tokens == int(batch["soft_mask"][0].sum())


# -- end to end, in a subprocess as a user runs it ------------------------------------------


def spt_run(*overrides: str, out: Path, env: dict | None = None, timeout: int = 300):
    e = {**os.environ, "SPT_OUTPUT_DIR": str(out), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "spt.run", *overrides],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_dirs(out: Path) -> list[Path]:
    runs = out / "runs"
    return sorted(p.parent for p in runs.rglob(".hydra")) if runs.exists() else []


@pytest.mark.parametrize("model", [m for m in TINY if m != "tiny-clip"])  # CLIP: test_coop
def test_run_end_to_end_and_reload(model, tmp_path, data_dir):
    r = spt_run(f"model={model}", "debug=fast", "logger=csv", out=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    for name in ("prompt.safetensors", "prompt.json", "config.yaml", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "prompt.json").read_text())
    assert meta["method"] == "prompt" and meta["task_names"] == ["sst2"]
    assert meta["base"]["name"] == model and len(meta["base"]["fingerprint"]) == 16
    assert meta["tensors"]["prompt"][:2] == [1, 20]
    assert metrics["steps"] == 4 and 0.0 <= metrics["val/acc"] <= 1.0
    assert metrics["artifact_bytes"] < 100_000
    assert "dev acc" in r.stdout and "prompt.safetensors" in r.stdout
    (csv,) = run.rglob("metrics.csv")  # every metric logged is in the CSV too
    header = csv.read_text().splitlines()[0].split(",")
    assert {"fit_seconds", "params/served", "params/trainable", "val/acc"} <= set(header)
    # the artifact reloads to the same dev accuracy
    r2 = spt_run(
        f"model={model}",
        "debug=fast",
        "logger=csv",
        "train=false",
        "method.init=file",
        f"method.init_file={run / 'prompt.safetensors'}",
        out=tmp_path / "again",
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    (run2,) = run_dirs(tmp_path / "again")
    assert json.loads((run2 / "metrics.json").read_text())["val/acc"] == metrics["val/acc"]


def test_run_with_wandb_offline_groups_and_finishes(tmp_path, data_dir):
    r = spt_run(
        "model=tiny-bert", "debug=fast", "tags=[ci]", out=tmp_path, env={"WANDB_MODE": "offline"}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "one finished offline W&B run"
    assert (run / "csv" / "metrics.csv").is_file()
    assert "spt: dev acc" in r.stdout


def test_what_wandb_is_handed_is_the_study_the_tags_and_the_resolved_config(tmp_path):
    """What the W&B UI will show once synced, read from the live (offline) run that spt's
    logger config builds: the study as group, the tags, spt's resolved config untouched
    (Lightning's own hparams logging would overwrite seed with data.seed), and the metrics
    logged at the end."""
    from hydra.core.hydra_config import HydraConfig

    from spt.build import instantiate_loggers

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="run",
            overrides=["logger=wandb", "tags=[ci]", "seed=3", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    try:
        plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        resolved = OmegaConf.to_container(plain, resolve=True)
        loggers = instantiate_loggers(cfg)
        assert sorted(type(lg).__name__ for lg in loggers) == ["CSVLogger", "WandbLogger"]
        (wb,) = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
        wb.log_hyperparams(resolved)
        wb.log_metrics({"val/acc": 0.75, "params/served": 20}, step=4)
        run = wb.experiment
        assert run.group == "prompt/minilm/sst2" and list(run.tags) == ["ci"]
        logged = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        assert logged["seed"] == 3 and logged["method"] == resolved["method"]
        assert run.summary["val/acc"] == 0.75 and run.summary["params/served"] == 20
        run.finish()
    finally:
        HydraConfig.instance().cfg = None


def test_the_console_is_quiet_and_shows_progress(tmp_path, data_dir):
    """A short run with W&B (offline) prints what spt says and no third-party noise: no
    device or tip lines, no duplicated Lightning lines, no torchdata or wandb deprecation
    warnings, no W&B run-history block, no "Epoch 0/-2" or v_num; one plain line per
    validation (debug=fast validates once, at step 4)."""
    r = spt_run(
        "model=tiny-bert",
        "debug=fast",
        out=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "false"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    for noise in (
        "GPU available",
        "TPU available",
        "Tip:",
        "set_vital",
        "anonymous setting",
        "Run history",
        "Run summary",
        "Epoch 0/-2",
        "v_num",
        "INFO: ",
    ):
        assert noise not in text, f"{noise!r} in the console:\n{text[-3000:]}"
    progress = [line for line in text.splitlines() if "validation | step" in line]
    assert len(progress) == 1 and "step 4/4 | val/acc " in progress[0], progress
    assert len(text.splitlines()) <= 25, text


def test_zero_shot_writes_no_prompt(tmp_path, data_dir):
    r = spt_run("model=tiny-llama", "debug=fast", "logger=csv", "zero_shot=true", out=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["zero_shot"] is True and metrics["steps"] == 0
    assert not (run / "prompt.safetensors").exists()


# -- bad input ---------------------------------------------------------------------------


def _fails(r, *needles: str, out: Path):
    assert r.returncode != 0
    text = r.stderr + r.stdout
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert run_dirs(out) == [], "a failed run left a run directory"
    assert not (out / "runs").exists(), f"a failed run left folders: {list(out.rglob('*'))}"


def test_help_lists_the_config_groups(tmp_path):
    """``--help`` is spt's: the groups and their options, usage and examples."""
    r = spt_run("--help", out=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Config groups (group=option)" in r.stdout and "Examples:" in r.stdout
    methods = next(line for line in r.stdout.splitlines() if line.startswith("method: "))
    assert methods.split(": ", 1)[1].split(", ") == METHODS
    assert run_dirs(tmp_path) == []


def test_the_entry_point_imports_neither_torch_nor_lightning():
    """``--help`` and ``--cfg job`` answer in about a second because spt.run defers torch,
    Lightning and transformers to the job itself (timed in the closing note, not here)."""
    code = "import sys, spt.run; print([m for m in ('torch', 'lightning', 'transformers') if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_unknown_group_option(tmp_path):
    r = spt_run("method=nosuchmethod", out=tmp_path)
    _fails(r, "nosuchmethod", "prompt", out=tmp_path)


def test_missing_data_root(tmp_path):
    r = spt_run(
        "model=tiny-bert",
        "debug=fast",
        "logger=csv",
        out=tmp_path,
        env={"SPT_DATA_DIR": str(tmp_path / "nowhere")},
    )
    _fails(r, str(tmp_path / "nowhere"), "SPT_DATA_DIR", out=tmp_path)
    assert r.returncode == 2


def test_label_not_covered_by_verbalizer(tmp_path):
    root = tmp_path / "data" / "sst2"
    root.mkdir(parents=True)
    rows = "sentence\tlabel\ngood film\t1\nbad film\t0\nodd film\t7\n"
    (root / "train.tsv").write_text(rows)
    (root / "dev.tsv").write_text(rows)
    r = spt_run(
        "model=tiny-bert",
        "debug=fast",
        "logger=csv",
        f"data.root={tmp_path / 'data'}",
        out=tmp_path / "out",
    )
    _fails(r, "'7'" if "'7'" in r.stderr else "7", "label", out=tmp_path / "out")
    assert r.returncode == 2


# Configuration errors of every class (a type, a range, method x arch, a settings node, an
# unknown key, ...): the table in tests/test_bad_input.py, run in one process.


@pytest.mark.parametrize(
    ("data", "method", "metric"), [("e2e", "prefix", "val/bleu"), ("sst2", "mpt", "val/acc")]
)
def test_select_best_reloads_the_best_checkpoint(data, method, metric, tmp_path, data_dir):
    """select=best reloads best.ckpt (weights_only); the monitor defaults to the task's first
    metric (val/bleu on text-to-text, which also writes its scored predictions)."""
    r = spt_run(
        "model=tiny-llama",
        f"data={data}",
        f"method={method}",
        "debug=fast",
        "logger=csv",
        "select=best",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        f"data.root={data_dir}",
        *(["data.max_new_tokens=4"] if data == "e2e" else []),
        out=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["optimized_metric"] == metric
    assert (run / "checkpoints" / "best.ckpt").exists()
    if data == "e2e":
        rows = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 32 and {"input", "prediction", "references", "ref_index"} <= set(
            rows[0]
        )
        assert rows[0]["input"].startswith("name : ")  # the linearised table it was given


def test_offline_hub_model(tmp_path):
    r = spt_run(
        "model=t5-small",
        "debug=fast",
        "logger=csv",
        out=tmp_path,
        env={"HF_HOME": str(tmp_path / "hf")},
    )
    _fails(r, "google/t5-small-lm-adapt", "offline", "model=minilm", out=tmp_path)
    assert r.returncode == 2


def test_prompt_file_from_another_base_model(tmp_path, data_dir):
    r = spt_run("model=tiny-llama", "debug=fast", "logger=csv", out=tmp_path / "a")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "a")
    r2 = spt_run(
        "model=tiny-llama",
        "model.seed=1",
        "debug=fast",
        "logger=csv",
        "train=false",
        "method.init=file",
        f"method.init_file={run / 'prompt.safetensors'}",
        out=tmp_path / "b",
    )
    meta = json.loads((run / "prompt.json").read_text())
    _fails(r2, meta["base"]["fingerprint"], "tiny-llama", out=tmp_path / "b")
    assert r2.returncode == 2


def test_generation_data_on_an_encoder_only_model_is_refused(data_dir):
    cfg = _compose("method=prompt", "model=tiny-bert", "data=e2e", f"data.root={data_dir}")
    with pytest.raises(SptError, match="generation"):
        build(cfg)


def test_class_label_init_on_generation_data_names_the_fix(data_dir):
    cfg = _compose("method=prompt", "model=tiny-llama", "data=e2e", f"data.root={data_dir}")
    with pytest.raises(SptError, match="init=sampled_vocab"):
        build(cfg)


# Training on every method x supported tiny architecture (and text-to-text, mixtures) is
# tests/test_equivalence.py: the same fits, compared bit for bit with recorded runs.


@pytest.mark.parametrize(
    "method,model", list(itertools.product(METHODS, ["tiny-llama", "tiny-t5"]))
)
def test_text_to_text_is_refused_by_name_where_unsupported(method, model, data_dir):
    """Methods that only classify, or architectures a YAML leaves out, refuse E2E by name
    (the rest train on it in tests/test_equivalence.py)."""
    cfg = _compose(
        f"method={method}",
        f"model={model}",
        "data=e2e",
        f"data.root={data_dir}",
        "data.train_limit=8",
        "data.dev_limit=3",
        *(["method.init=sampled_vocab"] if method == "prompt" else []),
    )
    target = _locate(cfg.method._target_)
    arch = TINY_ARCHS[cfg.model.family]
    if arch in cfg.method.supports and getattr(target, "supports_generation", True):
        return
    with pytest.raises(SptError, match=f"does not support {arch}|generation"):
        build(cfg)


@pytest.mark.parametrize("method,model", list(itertools.product(METHODS, TINY)))
def test_optimizer_groups_follow_the_config(method, model, data_dir):
    """Contract, per method YAML x tiny architecture: every trainable tensor is in exactly one
    optimizer group, the head's at ``method.head.lr`` (when set), a group that names its own
    ``setting`` (DePT's update: ``method.low_rank_lr``) at that setting, and all others at
    ``method.optimizer.lr``. (Prefix methods once lost the head's lr to the mixin order.)"""
    arch = TINY_ARCHS[_compose(f"model={model}").model.family]
    overrides = [f"method={method}", f"model={model}", *_small_data(arch, data_dir)]
    cfg = _compose(*overrides)
    if _refusal(cfg, arch):
        return  # refused by name: test_every_method_trains_one_step_on_every_supported_tiny_arch
    head = cfg.method.get("head")
    if head is not None and head.lr is None:  # make a lost head lr visible
        cfg = _compose(*overrides, "method.head.lr=0.0123")
    _, _, m = build(cfg)
    m._trainer = types.SimpleNamespace(estimated_stepping_batches=10)  # for lr schedulers
    opt = m.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    names = {id(p): n for n, p in m.trainable_named_parameters()}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names), "a trainable tensor is in no group, or in two"
    head_lr = cfg.method.head.lr if "head" in cfg.method else None
    for group in opt.param_groups:
        for p in group["params"]:
            is_head = names[id(p)].startswith("objective.head.")
            want = head_lr if is_head and head_lr is not None else cfg.method.optimizer.lr
            if "setting" in group:  # a learning rate of its own, named by the group
                want = cfg.method[group["setting"]]
            assert group["lr"] == pytest.approx(want), f"{names[id(p)]}: lr {group['lr']}"


# Keys whose YAML value differs from the class default on purpose: `supports` narrows the
# architectures a class implements (None = all of them), `seed` follows the run's seed.
CONFIG_ONLY = {"supports", "seed"}


@pytest.mark.parametrize("method", METHODS)
def test_class_defaults_equal_the_yaml(method):
    """A method built in Python with its defaults is the method its YAML builds
    (PromptTuning once defaulted to init=sampled_vocab in Python and class_labels in YAML)."""
    node = OmegaConf.to_container(_compose(f"method={method}").method, resolve=True)
    params = inspect.signature(_locate(node["_target_"])).parameters
    differ = {}
    for key, value in node.items():
        if key.startswith("_") or key == "optimizer" or key in CONFIG_ONLY:
            continue
        assert key in params, f"method.{key} is not an argument of {node['_target_']}"
        default = params[key].default
        if dataclasses.is_dataclass(default):  # a settings node: method.head, method.scheduler
            default = dataclasses.asdict(default)
        if default is not inspect.Parameter.empty and default != value:
            differ[key] = (value, default)
    assert differ == {}, f"YAML vs class default: {differ}"


def test_a_sweep_job_is_named_and_tagged_by_the_sweep():
    """In a multirun job the W&B name carries the job number and overrides and the tags the
    sweep folder; a single run keeps both plain (the 2-job sweep in test_launch.py checks the
    names end to end)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="run", overrides=["seed=2", "tags=[ci]"], return_hydra_config=True
        )
    try:
        HydraConfig.instance().set_config(cfg)
        assert cfg.run_name == "sst2-minilm-prompt" and list(cfg.logger.wandb.tags) == ["ci"]
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = 3
        cfg.hydra.job.override_dirname = "seed=2,tags=[ci]"
        cfg.hydra.sweep.dir = "outputs/multirun/2026-12-02_00-00-00"
        HydraConfig.instance().set_config(cfg)
        assert cfg.run_name == "sst2-minilm-prompt #3 seed=2,tags=[ci]"
        assert list(cfg.logger.wandb.tags) == ["ci", "sweep:2026-12-02_00-00-00"]
        assert cfg.hydra.sweep.subdir == "3_seed=2,tags=_ci"  # the job's folder
    finally:
        HydraConfig.instance().cfg = None


def test_a_sweep_job_folder_is_its_number_and_overrides():
    from spt.resolvers import _job_dir

    assert _job_dir(0, "") == "0"
    assert _job_dir(1, "method=prefix,seed=2") == "1_method=prefix,seed=2"
    assert _job_dir(2, "data.root=/a/b c") == "2_data.root=_a_b_c"  # no path separators
    many = ",".join(f"method.k{i}=value{i}" for i in range(20))
    long = _job_dir(3, many)
    assert len(long) < 160 and long.startswith("3_method.k0=value0,")
    assert long == _job_dir(3, many) != _job_dir(3, many + ",x=1")  # stable and unique
