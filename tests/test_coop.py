"""CoOp on a tiny CLIP: CLIP's own scoring, class-token layouts, mixed-task rows, the artifact
without class-name buffers, and refusals that name the fix."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from spt.backbones import tiny
from spt.core.artifact import load_artifact, save_artifact
from spt.data.task import TaskInfo
from spt.errors import SptError
from spt.methods.coop import CoOp, class_prompt_tokens
from spt.regularizers import attach
from spt.regularizers.nemesis import Nemesis, corrupted_prompts, probe_scores
from tests.test_run import run_dirs, spt_run

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("airplane", "automobile", "bird")
TASK = TaskInfo("toy", NAMES, NAMES, ("acc",), 3)


@pytest.fixture(scope="module")
def clip():
    return tiny("clip")


def _sgd(groups):
    return torch.optim.SGD(groups, lr=0.1)


def _coop(clip, **kw):
    return CoOp(clip, TASK, optimizer=_sgd, **{"length": 4, **kw})


def _batch(n=5, tasks=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(n, 3, 32, 32, generator=g),
        "labels": torch.arange(n) % 3,
        "task_ids": torch.zeros(n, dtype=torch.long) if tasks is None else tasks,
    }


def test_text_init_reproduces_clip_zero_shot_logits(clip):
    """A context initialised from a text's token embeddings is that text: the logits equal
    CLIP's own scaled cosine similarity with "<text><name>." computed by Hugging Face."""
    text = "a ph"  # 4 byte tokens with the tiny tokenizer
    m = _coop(clip, init="text", init_text=text)
    batch = _batch()
    tok = clip.tokenizer([f"{text}{n}." for n in NAMES], padding=True, return_tensors="pt")
    with torch.no_grad():
        txt = clip.model.get_text_features(**tok).pooler_output
        img = clip.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        want = clip.model.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
        got = m(batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "position,layout", [("end", "ssssnnn."), ("middle", "ssnnnss."), ("front", "nnnssss.")]
)
def test_class_token_position_layouts(clip, position, layout):
    """The placeholder slots sit before, around or after the class name, then "." and the end
    token; padding follows the end token."""
    ids, soft = class_prompt_tokens(clip.tokenizer, ["cat", "horse"], 4, position)
    tok = clip.tokenizer
    row = ids[0].tolist()
    assert row[0] == tok.bos_token_id and row[len(layout) + 1] == tok.eos_token_id
    dot = tok(".", add_special_tokens=False).input_ids[0]
    body = zip(row[1 : len(layout) + 1], soft[0, 1 : len(layout) + 1].tolist(), strict=True)
    marks = "".join("s" if s else "." if t == dot else "n" for t, s in body)
    assert marks == layout
    assert soft.sum(1).tolist() == [4, 4]
    assert ids[0, len(layout) + 2 :].eq(tok.pad_token_id).all()  # "cat" is shorter than "horse"


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_scores_with_own_prompts_equal_forward(clip, class_specific, position):
    m = _coop(clip, class_specific=class_specific, class_token_position=position)
    batch = _batch()
    prompts = m.soft_prompts(batch["task_ids"])
    assert prompts.shape == ((5, 3, 4, 32) if class_specific else (5, 4, 32))
    with torch.no_grad():
        torch.testing.assert_close(m.scores_with_prompts(batch, prompts), m(batch))


def test_class_specific_contexts_differ_per_class(clip):
    """With class-specific contexts, changing class 1's context changes only column 1."""
    m = _coop(clip, class_specific=True)
    batch = _batch()
    with torch.no_grad():
        before = m(batch)
        m.prompt[0, 1] += torch.randn(4, 32)  # (a constant shift is erased by LayerNorm)
        after = m(batch)
    assert torch.equal(before[:, [0, 2]], after[:, [0, 2]])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_mixed_task_rows_equal_rows_run_alone(clip):
    m = _coop(clip, n_tasks=2, task_names=["a", "b"])
    with torch.no_grad():
        m.prompt[1] += torch.randn(4, 32)
        batch = _batch(4, tasks=torch.tensor([0, 1, 1, 0]))
        mixed = m(batch)
        for i in range(4):
            alone = {k: v[i : i + 1] for k, v in batch.items()}
            torch.testing.assert_close(mixed[i : i + 1], m(alone), atol=1e-5, rtol=1e-5)
        task0 = m({**batch, "task_ids": torch.zeros(4, dtype=torch.long)})
    assert not torch.allclose(mixed[1], task0[1])  # row 1 really used task 1's context


def test_gradient_reaches_only_the_context(clip):
    m = _coop(clip)
    m.train()
    loss = F.cross_entropy(m(_batch()), _batch()["labels"])
    loss.backward()
    assert m.prompt.grad is not None and m.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.backbone.parameters())


@pytest.mark.parametrize("class_specific", [False, True])
def test_artifact_holds_only_the_context_and_reloads(clip, class_specific, tmp_path):
    """No class-name token buffers in the state or the artifact (CoOp's own checkpoints carry
    them); the class names travel as metadata and init=file restores the context."""
    m = _coop(clip, class_specific=class_specific)
    with torch.no_grad():
        m.prompt.normal_()
    assert list(m.state_dict()) == ["prompt"]
    path = save_artifact(tmp_path / "prompt.safetensors", m.artifact_tensors(), m.artifact_meta())
    tensors, meta = load_artifact(path)
    assert set(tensors) == {"prompt"}
    assert tensors["prompt"].shape == (1, 3 if class_specific else 1, 4, 32)
    assert meta["class_names"] == list(NAMES) and meta["class_token_position"] == "end"
    assert m.served_parameters(tensors) == tensors["prompt"].numel()
    again = _coop(clip, class_specific=class_specific, init="file", init_file=str(path))
    assert torch.equal(again.prompt, m.prompt)


def test_generic_context_transfers_to_other_classes(clip, tmp_path):
    """A generic context loads on a dataset with other class names (CoOp's transfer setting);
    a class-specific one is refused there, naming both class lists."""
    m = _coop(clip)
    path = save_artifact(tmp_path / "p.safetensors", m.artifact_tensors(), m.artifact_meta())
    other = TaskInfo("other", ("cat", "dog", "frog"), ("cat", "dog", "frog"), ("acc",), 3)
    CoOp(clip, other, length=4, init="file", init_file=str(path), optimizer=_sgd)
    csc = _coop(clip, class_specific=True)
    path = save_artifact(tmp_path / "c.safetensors", csc.artifact_tensors(), csc.artifact_meta())
    with pytest.raises(SptError, match="class-specific contexts for"):
        CoOp(
            clip,
            other,
            length=4,
            class_specific=True,
            init="file",
            init_file=str(path),
            optimizer=_sgd,
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"init": "text", "init_text": "a photo of a"},
            r"is 12 tokens but method.length=4: set "
            r"method.length=12",
        ),
        ({"class_token_position": "left"}, "choose one of end, middle, front"),
        ({"length": 0}, "at least one vector"),
        ({"init": "text"}, "needs method.init_text"),
        ({"loss": "lm"}, "CoOp trains with class_ce"),
    ],
)
def test_bad_settings_name_the_fix(clip, kw, match):
    with pytest.raises(SptError, match=match):
        _coop(clip, **kw)


def test_text_backbone_is_refused(clip):
    with pytest.raises(SptError, match="does not support encoder"):
        CoOp(tiny("bert"), TASK, optimizer=_sgd)


# -- Nemesis on CoOp contexts --------------------------------------------------------------
@pytest.mark.parametrize("class_specific", [False, True])
def test_nemesis_probe_and_penalty_on_coop_contexts(clip, class_specific):
    """The batched PAN probe equals each corrupted context scored alone, and PUN is the mean
    per-position norm of the context (summed over classes when class-specific, as the authors'
    normalize does; the logged norms average over classes)."""
    m = _coop(clip, class_specific=class_specific)
    with torch.no_grad():
        m.prompt.normal_(generator=torch.Generator().manual_seed(1))
    m.eval()
    batch = _batch()
    positions = torch.tensor([3, 1])
    with torch.no_grad():
        batched = probe_scores(m, batch, positions, 0.001)
        own = m.soft_prompts(batch["task_ids"])
        variants = corrupted_prompts(own, positions, 0.001).view(3, *own.shape)
        alone = torch.stack([m.scores_with_prompts(batch, v) for v in variants])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], m(batch).detach(), atol=1e-5, rtol=1e-5)
    reg = Nemesis(weight=1.0, p=2, beta=1.0, schedule="constant")
    attach(reg, m)
    term, logs = reg(m, batch)
    norms = m.prompt[0].norm(dim=-1).mean(0)  # [length], averaged over the class axis
    summed = m.prompt[0].norm(dim=-1).sum(0)  # [length], summed over it (1 class: the same)
    assert term.item() == pytest.approx(summed.mean().item(), rel=1e-5)
    assert logs["train/prompt_norm/3"].item() == pytest.approx(norms[3].item(), rel=1e-5)
    term.backward()
    assert m.prompt.grad.abs().sum() > 0


# -- through spt.run -----------------------------------------------------------------------
def test_coop_with_nemesis_runs_end_to_end_and_reloads(tmp_path, data_dir):
    """``method=coop regularizer=nemesis`` on CIFAR-10 images trains, logs the Nemesis terms,
    writes a context-only artifact, and the artifact reloads to the same dev accuracy."""
    common = (
        "method=coop",
        "model=tiny-clip",
        "data=cifar10_subset",
        "debug=fast",
        "logger=csv",
        "data.shots=2",
        "method.length=4",
    )
    r = spt_run(*common, "regularizer=nemesis", out=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "prompt.json").read_text())
    assert meta["tensors"] == {"prompt": [1, 1, 4, 32]} and len(meta["class_names"]) == 10
    assert metrics["params/served"] == 4 * 32 and metrics["steps"] == 4
    logged = (next(run.rglob("metrics.csv"))).read_text().splitlines()[0].split(",")
    assert {"train/pun", "train/pan", "train/omega", "train/prompt_norm/3"} <= set(logged)
    r2 = spt_run(
        *common,
        "train=false",
        "method.init=file",
        f"method.init_file={run / 'prompt.safetensors'}",
        out=tmp_path / "again",
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    (run2,) = run_dirs(tmp_path / "again")
    assert json.loads((run2 / "metrics.json").read_text())["val/acc"] == metrics["val/acc"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("method=prompt", "model=tiny-clip", "data=cifar10_subset"), "does not support clip"),
        (("method=coop", "model=tiny-clip", "data=sst2"), "is a text task and the model is CLIP"),
        (("method=coop", "model=tiny-bert", "data=cifar10_subset"), "holds images"),
    ],
)
def test_wrong_pairings_are_refused_by_name(overrides, match, tmp_path, data_dir):
    r = spt_run(*overrides, "debug=fast", "logger=csv", out=tmp_path)
    assert r.returncode == 2 and re.search(match, r.stderr), r.stderr[-2000:]
    assert run_dirs(tmp_path) == []


@pytest.mark.parametrize(("shots", "epochs"), [(1, 50), (2, 50), (4, 100), (8, 100), (16, 200)])
def test_coop_cluster_recipe_composes(shots, epochs):
    """experiments/nemesis_coop/README.md's sweep point: CoOp's setting, the shot count's epochs, each
    seed its own k-shot draw, Nemesis, and the SLURM launcher."""
    from hydra import compose, initialize_config_dir

    from tests.test_run import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="run",
            return_hydra_config=True,
            overrides=[
                "experiment=coop_fewshot",
                f"data.shots={shots}",
                "seed=3",
                "regularizer=nemesis",
                "data=coop_dtd",
                "hydra/launcher=slurm",
            ],
        )
    assert cfg.model.name_or_path == "openai/clip-vit-base-patch16"
    assert cfg.method.length == 16 and cfg.method.optimizer.lr == 0.002
    assert cfg.method.scheduler.name == "cosine" and cfg.data.batch_size == 32
    assert cfg.data.shots == shots and cfg.data.seed == 3
    assert cfg.trainer.max_epochs == epochs == cfg.trainer.check_val_every_n_epoch
    assert cfg.trainer.max_steps == -1
    assert cfg.regularizer._target_.endswith("Nemesis")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_a_shot_count_without_a_schedule_is_named(tmp_path):
    r = spt_run("experiment=coop_fewshot", "data.shots=3", out=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no entry for 3" in r.stderr and "[1, 2, 4, 8, 16]" in r.stderr


def test_hub_code_path_loads_a_saved_clip_directory(clip, tmp_path):
    """model=clip-vit-b16's loader (from_pretrained, arch=clip) on a tiny CLIP saved the way a
    hub snapshot is laid out: same weights (fingerprint), tokenizer and image processor."""
    from spt.backbones import from_pretrained

    clip.model.save_pretrained(tmp_path)
    clip.tokenizer.save_pretrained(tmp_path)
    clip.image_processor.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path), arch="clip")
    assert loaded.arch == "clip" and loaded.image_processor is not None
    assert loaded.identity()["fingerprint"] == clip.identity()["fingerprint"]
    m, again = _coop(clip), _coop(loaded)
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again(batch), m(batch))
