"""The benchmark's quick mode runs (CI keeps it working); its numbers are not asserted here: speed
is shown by the benchmark's own side-by-side ratios, never by timed unit tests."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_run import REPO


def test_quick_benchmark_writes_every_contender_and_ratio(tmp_path, data_dir):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "spt.bench",
            "--quick",
            "--repeats",
            "2",
            "--spt-override",
            "data.group_by_length=true",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    contenders = {
        "spt prompt",
        "peft prompt",
        "peft-cls prompt",
        "floor",
        "spt prefix",
        "peft prefix",
        "spt ptuning",
        "peft ptuning",
    }
    assert set(results["train"]) == contenders
    assert set(results["infer"]) == {"spt mixed 8 tasks", "spt single task", "peft 8 adapters"}
    # memory: one forked child per contender, a positive step peak over the same model
    assert set(results["memory"]) == contenders
    assert all(v["peak_mib"] > 0 and v["resident_mib"] > 0 for v in results["memory"].values())
    # time to accuracy: spt, spt with grouped batches and PEFT trained in lockstep, evaluated
    # at the same steps
    tta = results["tta"]["contenders"]
    assert set(tta) == {"spt", "spt+", "peft"}
    assert tta["spt"]["steps"] == tta["spt+"]["steps"] == tta["peft"]["steps"] > 0
    assert len({tuple(c[0] for c in v["curve"]) for v in tta.values()}) == 1
    assert all(0 <= c[2] <= 1 for v in tta.values() for c in v["curve"])
    assert results["tta"]["spt_overrides"] == ["data.group_by_length=true"]
    assert all(v is None or v > 0 for v in results["ratios"].values())  # None: noisy
    assert all(v["spread"] >= 1 for part in ("train", "infer") for v in results[part].values())
    assert {
        "train prompt spt/peft",
        "memory prompt spt/peft",
        "infer mixed/single throughput",
    } <= set(results["ratios"])
    assert "| train prompt spt/peft |" in r.stdout
    assert "| memory: spt prompt |" in r.stdout


def test_unknown_part_is_refused_with_the_choices():
    r = subprocess.run(
        [sys.executable, "-m", "spt.bench", "--quick", "--parts", "train,speed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "choose from train, infer, memory, tta" in r.stderr


def test_time_to_accuracy_alone_names_only_its_own_model(data_dir):
    """A ``--parts tta`` run carries the model and batch size of the encoder it trained, not
    the decoder defaults of the parts it did not run."""
    from spt.tools.bench import run

    results = run(
        "smollm2-135m",
        8,
        2,
        parts=("tta",),
        tta={
            "model": "tiny-bert",
            "target": 0.5,
            "batch_size": 8,
            "eval_every": 4,
            "max_steps": 4,
            "dev_limit": 16,
            "train_limit": 32,
            "spt_overrides": [],
        },
    )
    assert not {"model", "batch_size"} & set(results)
    assert results["tta"]["batch_size"] == 8 and results["tta"]["model"] != "smollm2-135m"


def _timing(median, minimum):
    return {
        "median_s": median,
        "min_s": minimum,
        "repeats": 6,
        "spread": round(median / minimum, 3),
        "noisy": median / minimum > 1.25,
    }


def test_a_noisy_contender_gets_no_ratio_and_a_rerun_note():
    """Medians 2-8x their minima (a busy machine) once printed ratios of 0.33 and 15.7 as if
    valid: such a contender is flagged and every ratio with it is withheld."""
    from spt.tools.bench import noisy, ratios, table

    train = {
        n: _timing(1.0, 0.95)
        for n in (
            "spt prompt",
            "peft prompt",
            "peft-cls prompt",
            "floor",
            "spt prefix",
            "peft prefix",
            "spt ptuning",
            "peft ptuning",
        )
    }
    train["spt prefix"] = _timing(18.157, 1.714)
    results = {"train": train}
    results["ratios"] = ratios(results)
    assert results["ratios"]["train prefix spt/peft"] is None
    assert results["ratios"]["train prompt spt/floor"] == 1.0
    assert noisy(results) == ["train: spt prefix"]
    text = table(results)
    assert "| train prefix spt/peft | noisy: rerun |" in text
    assert "NOISY: train: spt prefix" in text and "Rerun on a quiet machine" in text


def test_peft_p_tuning_encoder_is_the_size_of_spts():
    """Like for like: PEFT's P-tuning encoder at encoder_hidden_size = d/2 has exactly spt's
    encoder's parameters (PEFT's default, d, is about 3x larger)."""
    from spt.backbones import tiny
    from spt.methods.ptuning import PTuning
    from spt.tools.bench import peft_model
    from tests.test_prompt import TASK

    backbone = tiny("llama", hidden=64)
    spt_count = sum(
        p.numel() for p in PTuning(backbone, TASK, length=6).prompt_encoder.parameters()
    )
    pm = peft_model("ptuning", backbone.model)
    peft_count = sum(
        p.numel() for n, p in pm.named_parameters() if p.requires_grad and "prompt_encoder" in n
    )
    assert peft_count == spt_count


def test_peft_contenders_run_without_spts_lm_head_fix():
    """PEFT is timed as its users run it: the deep copy of spt's backbone loses spt's
    contiguous-input hook on the LM head (the bench would otherwise lend PEFT spt's fix)."""
    from spt.backbones import tiny
    from spt.backbones.base import contiguous_input
    from spt.tools.bench import peft_model

    backbone = tiny("llama", hidden=64)
    head_hooks = backbone.model.get_output_embeddings()._forward_pre_hooks.values()
    assert contiguous_input in list(head_hooks)
    pm = peft_model("prompt", backbone.model)
    assert contiguous_input not in list(pm.get_output_embeddings()._forward_pre_hooks.values())
    assert contiguous_input in list(head_hooks)  # spt's own model keeps it
