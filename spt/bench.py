"""Side-by-side speed benchmark: ``python -m spt.bench [--quick] [--model smollm2-135m]
[--out bench.json]``.

In one process, on identical batches, contenders are timed in alternation (each repeat runs
every contender once, in a rotating order) and the medians are compared, so machine noise hits
them alike. Contenders:

- **training step** (forward, backward, optimizer step) for prompt tuning, prefix tuning and
  P-tuning: spt's method against Hugging Face PEFT's equivalent (``PromptTuningConfig``,
  ``PrefixTuningConfig``, ``PromptEncoderConfig``) trained the way PEFT's own classification
  examples do, as a causal LM with the label word as the target;
- **frozen-backbone floor**: the plain transformer's forward and backward to its input
  activations (no weight gradients) at the same token count, with one output position, the
  least work any prompt method has to do;
- **inference**: a batch mixing 8 tasks' prompts in one spt forward, the same batch with one
  task, and PEFT with 8 adapters, which runs one adapter at a time (a forward per task group).

It prints a table of medians and the ratios the README's performance section quotes, and
writes everything to JSON. ``--quick`` uses the tiny Llama built from config (seconds; CI).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from spt.core.errors import SptError

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a gripping, beautifully acted film", "dull and far too long",
         "the best thing I have seen this year", "a mess from start to finish",
         "quietly moving", "I wanted my two hours back", "funny, sharp and humane",
         "tedious beyond words"]


# -- set-up --------------------------------------------------------------------------------
def load_backbone(model: str):
    """A backbone from ``conf/model/<model>.yaml`` (as ``spt.run`` builds it)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"model={model}"])
    return instantiate(cfg.model)


def sst2_batch(backbone, n_soft: int, batch_size: int, template: str | None = None) -> dict:
    """The first training batch of SST-2 through spt's own data module (template, soft slots,
    padding side), ``batch_size`` rows."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    over = [f"data.train_limit={batch_size}", f"data.batch_size={batch_size}"]
    if template:
        over.append(f"data.template='{template}'")  # quoted: braces and colons
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["data=sst2", *over])
    dm = instantiate(cfg.data, _partial_=True)(tokenizer=backbone.tokenizer, arch=backbone.arch)
    dm.n_soft = n_soft
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), dm.task


def peft_lm_batch(batch: dict, backbone, label_words) -> dict:
    """The same rows for PEFT's causal-LM recipe: the text without spt's soft slots (PEFT
    prepends its virtual tokens), the gold label word appended, loss on that word only."""
    tok = backbone.tokenizer
    words = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in label_words]
    rows, targets = [], []
    for ids, keep, y in zip(batch["input_ids"], batch["attention_mask"].bool()
                            & ~batch["soft_mask"], batch["labels"], strict=True):
        text = ids[keep].tolist()
        rows.append(text + words[int(y)])
        targets.append([-100] * len(text) + words[int(y)])
    width = max(map(len, rows))
    pad = tok.pad_token_id
    out = {"input_ids": torch.full((len(rows), width), pad),
           "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
           "labels": torch.full((len(rows), width), -100)}
    for i, (r, t) in enumerate(zip(rows, targets, strict=True)):  # left padding
        out["input_ids"][i, width - len(r):] = torch.tensor(r)
        out["attention_mask"][i, width - len(r):] = 1
        out["labels"][i, width - len(t):] = torch.tensor(t)
    return out


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def race(contenders: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each contender, timed in alternation (rotating order)."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            times[n].append(timed(contenders[n]))
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "repeats": len(t)}
            for n, t in times.items()}


# -- contenders ----------------------------------------------------------------------------
def _adamw(params, lr: float = 1e-3):
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr)


def spt_method(kind: str, backbone, task, n_tasks: int = 1):
    """spt's method ``kind`` at its YAML defaults (prompt 20 vectors, prefix 10 positions
    through the 512-wide MLP, P-tuning 6 pseudo-tokens from a bi-LSTM)."""
    from spt.methods.prefix import PrefixTuning
    from spt.methods.prompt import PromptTuning
    from spt.methods.ptuning import PTuning

    if kind == "prompt":
        m = PromptTuning(backbone, task, length=20, init="sampled_vocab", n_tasks=n_tasks)
    elif kind == "prefix":
        m = PrefixTuning(backbone, task, length=10)
    else:
        m = PTuning(backbone, task, length=6)
    return m.train()


def peft_model(kind: str, model, n_adapters: int = 1):
    """PEFT's equivalent of ``kind`` on a copy of ``model`` (PEFT wraps the model it gets)."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    config = {
        "prompt": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
        "prefix": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10,
                                             prefix_projection=True, encoder_hidden_size=512),
        "ptuning": lambda: PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=6,
                                               encoder_reparameterization_type="LSTM"),
    }[kind]
    pm = get_peft_model(copy.deepcopy(model), config())
    for i in range(1, n_adapters):
        pm.add_adapter(f"task{i}", config())
    return pm


def spt_train_step(method, batch) -> Callable[[], None]:
    opt = _adamw(method.parameters())

    def step():
        loss = F.cross_entropy(method(batch).float(), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def peft_train_step(pm, lm_batch) -> Callable[[], None]:
    pm.train()
    opt = _adamw(pm.parameters())

    def step():
        pm(**lm_batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def floor_step(backbone, batch) -> Callable[[], None]:
    """The frozen transformer's forward and backward to its input activations at the batch's
    token count, one output position (no LM head over the sequence, no weight gradients)."""
    body = backbone.model.get_decoder() if backbone.arch == "decoder" else backbone.model
    b, length = batch["input_ids"].shape
    x = torch.randn(b, length, backbone.hidden_size, requires_grad=True)
    mask = batch["attention_mask"]

    def step():
        h = body(inputs_embeds=x, attention_mask=mask).last_hidden_state[:, -1]
        h.float().sum().backward()
        x.grad = None
    return step


# -- the benchmark -------------------------------------------------------------------------
def run(model: str, batch_size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    backbone = load_backbone(model)
    if backbone.arch != "decoder":
        raise SptError(f"the benchmark compares with PEFT's causal-LM recipe; model={model} is "
                       f"{backbone.arch}: use a decoder-only model (smollm2-135m, tiny-llama)")
    results: dict = {"model": backbone.name, "batch_size": batch_size, "repeats": repeats,
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "machine": platform.machine(), "train": {}, "infer": {}}
    for kind in ("prompt", "prefix", "ptuning"):
        template = ("{soft:3}Review: {sentence}{soft:3} Sentiment:" if kind == "ptuning"
                    else None)
        n_soft = {"prompt": 20, "prefix": 0, "ptuning": 6}[kind]
        batch, task = sst2_batch(backbone, n_soft, batch_size, template)
        method = spt_method(kind, backbone, task)
        lm = peft_lm_batch(batch, backbone, task.label_words)
        contenders = {f"spt {kind}": spt_train_step(method, batch),
                      f"peft {kind}": peft_train_step(peft_model(kind, backbone.model), lm)}
        if kind == "prompt":
            contenders["floor"] = floor_step(backbone, batch)
        results["train"].update(race(contenders, repeats))
    results["infer"] = inference(backbone, batch_size, repeats)
    results["ratios"] = ratios(results)
    return results


def inference(backbone, batch_size: int, repeats: int, n_tasks: int = 8) -> dict:
    """A batch mixing ``n_tasks`` prompts in one forward vs one task vs PEFT, which switches
    adapters and runs a forward per task group."""
    batch, task = sst2_batch(backbone, 20, batch_size)
    method = spt_method("prompt", backbone, task, n_tasks=n_tasks).eval()
    with torch.no_grad():
        method.prompt.weight.add_(0.01 * torch.randn_like(method.prompt.weight))  # distinct
    mixed = {**batch, "task_ids": torch.arange(batch_size) % n_tasks}
    single = {**batch, "task_ids": torch.zeros(batch_size, dtype=torch.long)}
    pm = peft_model("prompt", backbone.model, n_adapters=n_tasks).eval()
    names = ["default"] + [f"task{i}" for i in range(1, n_tasks)]
    lm = peft_lm_batch(batch, backbone, task.label_words)
    groups = [(names[t], (mixed["task_ids"] == t).nonzero().squeeze(1)) for t in range(n_tasks)]

    def peft_mixed():
        for name, rows in groups:
            pm.set_adapter(name)
            pm(input_ids=lm["input_ids"][rows], attention_mask=lm["attention_mask"][rows])

    with torch.no_grad():
        return race({"spt mixed 8 tasks": lambda: method(mixed),
                     "spt single task": lambda: method(single),
                     "peft 8 adapters": peft_mixed}, repeats)


def ratios(results: dict) -> dict:
    t, i = results["train"], results["infer"]

    def r(a, b):
        return round(a["median_s"] / b["median_s"], 3)
    out = {f"train {k} spt/peft": r(t[f"spt {k}"], t[f"peft {k}"])
           for k in ("prompt", "prefix", "ptuning")}
    out["train prompt spt/floor"] = r(t["spt prompt"], t["floor"])
    out["infer mixed/single throughput"] = r(i["spt single task"], i["spt mixed 8 tasks"])
    out["infer spt mixed/peft throughput"] = r(i["peft 8 adapters"], i["spt mixed 8 tasks"])
    return out


def table(results: dict) -> str:
    lines = ["| contender | median ms | min ms |", "|---|---|---|"]
    for part in ("train", "infer"):
        for name, v in results[part].items():
            lines.append(f"| {part}: {name} | {1e3 * v['median_s']:.1f} | "
                         f"{1e3 * v['min_s']:.1f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in results["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spt.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny Llama, few repeats (CI)")
    parser.add_argument("--model", default="smollm2-135m", help="a conf/model name (decoder)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, help="timed calls per contender (10; quick 5)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    model = "tiny-llama" if args.quick else args.model
    repeats = args.repeats or (5 if args.quick else 10)
    try:
        results = run(model, args.batch_size, repeats)
    except SptError as exc:
        print(f"spt: error: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
