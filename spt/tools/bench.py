"""Side-by-side speed benchmark: ``python -m spt.bench [--quick] [--model smollm2-135m]
[--out bench.json]``.

In one process, on identical batches, contenders are timed in alternation (each repeat runs
every contender once, in a rotating order) and the medians are compared, so machine noise hits
them alike. Contenders:

- **training step** (forward, backward, optimizer step) for prompt tuning, prefix tuning and
  P-tuning: spt's method against Hugging Face PEFT's equivalent (``PromptTuningConfig``,
  ``PrefixTuningConfig``, ``PromptEncoderConfig``) trained the way PEFT's own classification
  examples do, as a causal LM with the label word as the target; PEFT's P-tuning encoder at
  spt's size (``encoder_hidden_size = d/2``); and ``peft-cls prompt``, PEFT's prompt tuning
  trained on spt's objective (the label words' log-probabilities at the last position,
  ``logits_to_keep=1``), which separates what the objective saves from what the framework
  saves. PEFT runs without spt's LM-head fix (``contiguous_input``);
- **frozen-backbone floor**: the plain transformer's forward and backward to its input
  activations (no weight gradients) at the same token count, with one output position, the
  least work any prompt method has to do;
- **inference**: a batch mixing 8 tasks' prompts in one spt forward, the same batch with one
  task, and PEFT with 8 adapters, which runs one adapter at a time (a forward per task group);
- **peak memory** of each training contender: each runs alone in a forked child (three per
  contender, the median reported); after one warm-up step, the child's peak resident memory
  over two more steps is measured above what it held before them (Linux
  ``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``), so model loading
  does not count and contenders cannot hide in each other's freed heap;
- **time to accuracy** (encoder-only, MiniLM by default): spt's default recipe for
  ``method=prompt`` (its optimizer, learning rates, initialisation, head and pooling, through
  its own data module) against PEFT's ``PromptTuningConfig(task_type="SEQ_CLS")`` trained by a
  plain loop at the same hyper-parameters (optimizer, learning rates, batch, the same initial
  prompt and head weights, the frozen transformer's dropout off on both sides, the same
  batches in the same order; ``--spt-override data.group_by_length=true``
  adds a contender, ``spt+``, with length-grouped batches, while PEFT keeps plain shuffled
  ones). They train in lockstep, one step each in rotating order, and are evaluated on the
  same dev rows every ``--eval-every`` steps; the time to the target counts training steps
  only.

It prints a table of medians and the ratios the README's performance section quotes, and
writes everything to JSON. A contender whose median is over ``NOISY_SPREAD`` (1.25) times its
fastest call was timed on a busy machine: it is flagged, its ratios are withheld, and the table
says to rerun. ``--quick`` uses the tiny Llama and tiny BERT built from config
(seconds; CI). ``--parts`` picks the sections (train, infer, memory, tta).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import multiprocessing
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from spt import CONF_DIR
from spt.backbones.base import contiguous_input
from spt.errors import SptError

TEXTS = [
    "a gripping, beautifully acted film",
    "dull and far too long",
    "the best thing I have seen this year",
    "a mess from start to finish",
    "quietly moving",
    "I wanted my two hours back",
    "funny, sharp and humane",
    "tedious beyond words",
]


# -- set-up --------------------------------------------------------------------------------
def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="run", overrides=overrides)


def load_backbone(model: str):
    """A backbone from ``spt/conf/model/<model>.yaml`` (as ``spt.run`` builds it)."""
    from hydra.utils import instantiate

    return instantiate(_compose([f"model={model}"]).model)


def sst2_batch(backbone, n_soft: int, batch_size: int, template: str | None = None) -> dict:
    """The first training batch of SST-2 through spt's own data module (template, soft slots,
    padding side), ``batch_size`` rows."""
    from hydra.utils import instantiate

    over = [f"data.train_limit={batch_size}", f"data.batch_size={batch_size}"]
    if template:
        over.append(f"data.template='{template}'")  # quoted: braces and colons
    cfg = _compose(["data=sst2", *over])
    dm = instantiate(cfg.data, _partial_=True)(tokenizer=backbone.tokenizer, arch=backbone.arch)
    dm.n_soft = n_soft
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), dm.task


def text_ids(batch: dict) -> list[list[int]]:
    """Each row's token ids without padding and without spt's soft slots (PEFT prepends its
    own virtual tokens)."""
    keep = batch["attention_mask"].bool() & ~batch["soft_mask"]
    return [ids[k].tolist() for ids, k in zip(batch["input_ids"], keep, strict=True)]


def peft_lm_batch(batch: dict, backbone, label_words) -> dict:
    """The same rows for PEFT's causal-LM recipe: the text without spt's soft slots, the gold
    label word appended, loss on that word only."""
    tok = backbone.tokenizer
    words = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in label_words]
    rows, targets = [], []
    for text, y in zip(text_ids(batch), batch["labels"], strict=True):
        rows.append(text + words[int(y)])
        targets.append([-100] * len(text) + words[int(y)])
    input_ids, mask = left_padded(rows, tok.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": left_padded(targets, -100)[0]}


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` right-aligned in ``[N, longest]`` (``pad`` in front) and the mask of real
    tokens: a decoder's last position is then every row's last token."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rotation(names: list[str], r: int) -> list[str]:
    """``names`` started at position ``r`` (mod their count): round ``r`` of an alternation
    in which every contender goes first in turn."""
    return names[r % len(names) :] + names[: r % len(names)]


def race(contenders: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each contender, timed in alternation (rotating order)."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in rotation(names, r):
            times[n].append(timed(contenders[n]))
    out = {
        n: {"median_s": statistics.median(t), "min_s": min(t), "repeats": len(t)}
        for n, t in times.items()
    }
    for v in out.values():
        v["spread"] = round(v["median_s"] / v["min_s"], 3)
        v["noisy"] = v["spread"] > NOISY_SPREAD
    return out


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


def peft_model(kind: str, model, n_adapters: int = 1, copy_model: bool = True):
    """PEFT's equivalent of ``kind`` on a copy of ``model`` (PEFT wraps the model it gets;
    ``copy_model=False`` wraps ``model`` itself, for a process that needs it only once)."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    # PEFT's P-tuning encoder is LSTM(d, h, bidirectional) -> Linear(2h, 2h) -> ReLU ->
    # Linear(2h, d) (peft/tuners/p_tuning/model.py); h = d / 2 gives exactly spt's encoder
    # (LSTM(d, d/2, bidirectional) -> Linear(d, d) -> ReLU -> Linear(d, d)). PEFT's default,
    # h = d, is a 3x larger network (15.3M vs 4.7M at d=576): not like for like.
    half = model.config.hidden_size // 2
    config = {
        "prompt": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
        "prefix": lambda: PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=10,
            prefix_projection=True,
            encoder_hidden_size=512,
        ),
        "ptuning": lambda: PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=6,
            encoder_reparameterization_type="LSTM",
            encoder_hidden_size=half,
        ),
    }[kind]
    base = copy.deepcopy(model) if copy_model else model
    head = base.get_output_embeddings()
    if head is not None:  # PEFT as its users run it: without spt's LM-head fix (a deep copy
        # of spt's backbone would carry spt.backbones.base.contiguous_input along)
        for key, hook in list(head._forward_pre_hooks.items()):
            if hook is contiguous_input:
                del head._forward_pre_hooks[key]
    pm = get_peft_model(base, config())
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


def peft_class_step(pm, batch, backbone, label_words) -> Callable[[], None]:
    """PEFT prompt tuning trained on spt's objective: the text without the label word, the
    logits of the last position only (``logits_to_keep=1``), cross-entropy over the label
    words' log-probabilities, so the table separates what the objective saves (no LM head over
    the target) from what the framework saves."""
    tok = backbone.tokenizer
    ids = backbone.ops.label_tokens(tok, list(label_words)).ids[:, 0]  # single-token words
    input_ids, mask = left_padded(text_ids(batch), tok.pad_token_id)
    labels = batch["labels"]
    pm.train()
    opt = _adamw(pm.parameters())

    def step():
        logits = pm(input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        scores = F.log_softmax(logits.float(), dim=-1)[:, ids]
        F.cross_entropy(scores, labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def floor_step(backbone, batch) -> Callable[[], None]:
    """The frozen transformer's forward and backward to its input activations at the batch's
    token count, one output position (no LM head over the sequence, no weight gradients).
    Decoder-only, as every backbone the training benchmark takes (:func:`decoder_backbone`)."""
    from spt.backbones.arch import position_ids

    body = backbone.model.get_decoder()
    body.requires_grad_(False)  # frozen, as under every method: no weight gradients
    b, length = batch["input_ids"].shape
    x = torch.randn(b, length, backbone.hidden_size, requires_grad=True)
    mask = batch["attention_mask"]

    pos = position_ids(mask)

    def step():  # called as spt calls the backbone: no key/value cache, explicit positions
        h = body(
            inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state[:, -1]
        h.float().sum().backward()
        x.grad = None

    return step


# -- the benchmark -------------------------------------------------------------------------
KINDS = ("prompt", "prefix", "ptuning")
TRAIN_CONTENDERS = (
    "spt prompt",
    "peft prompt",
    "peft-cls prompt",
    "floor",
    "spt prefix",
    "peft prefix",
    "spt ptuning",
    "peft ptuning",
)
# A contender whose median is more than this many times its fastest call was timed on a busy
# machine: its median says little, and no ratio is printed for it.
NOISY_SPREAD = 1.25


def train_step(name: str, backbone, batch_size: int, copy_model: bool = True):
    """The training step of contender ``name`` (one of TRAIN_CONTENDERS) on SST-2's first
    ``batch_size`` training rows; the floor runs at prompt tuning's token count."""
    who, _, kind = name.partition(" ")
    kind = kind or "prompt"
    template = "{soft:3}Review: {sentence}{soft:3} Sentiment:" if kind == "ptuning" else None
    n_soft = {"prompt": 20, "prefix": 0, "ptuning": 6}[kind]
    batch, task = sst2_batch(backbone, n_soft, batch_size, template)
    if who == "floor":
        return floor_step(backbone, batch)
    if who == "spt":
        return spt_train_step(spt_method(kind, backbone, task), batch)
    if who == "peft-cls":
        return peft_class_step(
            peft_model(kind, backbone.model, copy_model=copy_model),
            batch,
            backbone,
            task.label_words,
        )
    lm = peft_lm_batch(batch, backbone, task.label_words)
    return peft_train_step(peft_model(kind, backbone.model, copy_model=copy_model), lm)


def decoder_backbone(model: str):
    backbone = load_backbone(model)
    if backbone.arch != "decoder":
        raise SptError(
            f"the benchmark compares with PEFT's causal-LM recipe; model={model} is "
            f"{backbone.arch}: use a decoder-only model (smollm2-135m, tiny-llama)"
        )
    return backbone


def run(
    model: str,
    batch_size: int,
    repeats: int,
    parts=("train", "infer", "memory"),
    tta: dict | None = None,
    memory_repeats: int = 3,
) -> dict:
    results: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if set(parts) & {"train", "infer", "memory"}:  # time to accuracy carries its own
        results.update(model=model, batch_size=batch_size, repeats=repeats)
    if "memory" in parts:  # first: each child forks from a process holding no model yet
        results["memory"] = memory(model, batch_size, repeats=memory_repeats)
    if "train" in parts or "infer" in parts:
        torch.manual_seed(0)
        backbone = decoder_backbone(model)
        results["model"] = backbone.name
    if "train" in parts:
        results["train"] = {}
        for kind in KINDS:
            names = [
                n
                for n in TRAIN_CONTENDERS
                if n.endswith(kind) or (kind == "prompt" and n == "floor")
            ]
            results["train"].update(
                race({n: train_step(n, backbone, batch_size) for n in names}, repeats)
            )
    if "infer" in parts:
        results["infer"] = inference(backbone, batch_size, repeats)
    if "tta" in parts:
        results["tta"] = time_to_accuracy(**(tta or {}))
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
        return race(
            {
                "spt mixed 8 tasks": lambda: method(mixed),
                "spt single task": lambda: method(single),
                "peft 8 adapters": peft_mixed,
            },
            repeats,
        )


# -- peak memory ---------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS: resident now, VmHWM: peak since reset)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1))


def _probe_memory(model: str, name: str, batch_size: int, steps: int, conn) -> None:
    """In a forked child: build contender ``name`` alone, run one warm-up step, return the
    heap to the system, reset the peak, run ``steps`` more and send the peak above the memory
    resident before them (the model, the optimizer state)."""
    try:
        torch.manual_seed(0)
        step = train_step(name, decoder_backbone(model), batch_size, copy_model=False)
        step()  # warm-up: optimizer state and the runtime's one-time buffers stay resident
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed set-up memory out of the heap
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        resident = _status_kib("VmRSS")
        for _ in range(steps):
            step()
        conn.send(
            {
                "peak_mib": (_status_kib("VmHWM") - resident) / 1024,
                "resident_mib": resident / 1024,
                "steps": steps,
            }
        )
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def memory(model: str, batch_size: int, steps: int = 2, repeats: int = 3) -> dict:
    """Peak resident memory of each training step contender, each in its own forked child
    (one process, one contender: a process's peak cannot be split between two), ``repeats``
    children per contender in rotating order; the median peak is reported (the C allocator
    makes single peaks vary by tens of MiB)."""
    if not Path("/proc/self/clear_refs").exists():
        raise SptError(
            "the memory benchmark reads Linux's /proc/self/status; on this system "
            "run with --parts train,infer,tta"
        )
    # Imports only (no tensor work, so no OpenMP pool for the forks to inherit): each child
    # then spends its time on its contender, not on importing transformers again.
    import peft  # noqa: F401

    import spt.backbones.tiny_models  # noqa: F401
    import spt.data.text_classification  # noqa: F401
    import spt.methods.prefix  # noqa: F401
    import spt.methods.prompt  # noqa: F401
    import spt.methods.ptuning  # noqa: F401

    names = list(TRAIN_CONTENDERS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for name in rotation(names, r):
            runs[name].append(_memory_child(model, name, batch_size, steps))
    return {
        n: {
            "peak_mib": statistics.median(g["peak_mib"] for g in got),
            "peaks_mib": [round(g["peak_mib"], 1) for g in got],
            "resident_mib": statistics.median(g["resident_mib"] for g in got),
            "steps": steps,
        }
        for n, got in runs.items()
    }


def _memory_child(model: str, name: str, batch_size: int, steps: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe_memory, args=(model, name, batch_size, steps, child))
    proc.start()
    child.close()
    try:
        got = parent.recv() if parent.poll(1800) else {"error": "no answer in 30 min"}
    except EOFError:  # the child died without a word (a signal, e.g. the OOM killer)
        proc.join()
        got = {"error": f"the child process died (exit code {proc.exitcode})"}
    finally:
        parent.close()
    if proc.is_alive():
        proc.kill()
    proc.join()
    if "error" in got:
        raise SptError(f"memory probe of {name!r} on model={model} failed: {got['error']}")
    return got


# -- time to accuracy ----------------------------------------------------------------------
def peft_classifier(
    backbone, head: torch.nn.Linear, prompt: torch.Tensor, head_lr, optimizer_factory
):
    """PEFT's prompt tuning for sequence classification on a copy of ``backbone``'s weights:
    ``PromptTuningConfig(task_type="SEQ_CLS")`` (PEFT trains the prompt and the classifier),
    started from spt's initial ``prompt`` and ``head`` weights and optimised like spt (prompt
    at the optimizer's lr, classifier at ``head_lr``, None = the same lr)."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = copy.deepcopy(backbone.model.config)
    config.num_labels = head.out_features
    model = AutoModelForSequenceClassification.from_config(config)
    getattr(model, model.base_model_prefix).load_state_dict(backbone.model.state_dict())
    pm = get_peft_model(
        model, PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=prompt.shape[0])
    )
    embedding = pm.prompt_encoder["default"].embedding
    classifier = pm.base_model.classifier.modules_to_save["default"]
    with torch.no_grad():
        embedding.weight.copy_(prompt)
        classifier.weight.copy_(head.weight)
        classifier.bias.copy_(head.bias)
    head_params = [
        p for n, p in pm.named_parameters() if p.requires_grad and "prompt_encoder" not in n
    ]
    optimizer = optimizer_factory(
        [
            {"params": [embedding.weight]},
            {"params": head_params, **({} if head_lr is None else {"lr": head_lr})},
        ]
    )
    return pm, optimizer


def peft_cls_batch(batch: dict, pad_id: int) -> dict:
    """spt's rows for PEFT: the same tokens without spt's soft slots, right-padded as BERT
    expects (by spt's own collator)."""
    from spt.data.batches import Collator

    rows = [
        {"input_ids": ids, "soft_start": (), "soft_counts": (), "label": int(y)}
        for ids, y in zip(text_ids(batch), batch["labels"], strict=True)
    ]
    out = Collator(pad_id, left=False)(rows)
    return {k: out[k] for k in ("input_ids", "attention_mask", "labels")}


def time_to_accuracy(
    model: str = "minilm",
    target: float = 0.75,
    batch_size: int = 32,
    eval_every: int = 25,
    max_steps: int = 600,
    dev_limit: int | None = None,
    train_limit: int | None = None,
    spt_overrides: list[str] | None = None,
) -> dict:
    """spt's default prompt-tuning recipe vs PEFT's, trained in lockstep on the same batches
    (see the module docstring); stops once every contender reached ``target`` or at
    ``max_steps``. With ``spt_overrides`` (Hydra overrides, e.g. ``data.group_by_length=true``)
    a third contender, ``spt+``, runs spt's recipe so changed, from the same initial weights;
    PEFT's plain loop keeps the plain shuffled batches."""
    import lightning as L
    from hydra.utils import instantiate

    from spt.build import build

    over = [f"model={model}", "method=prompt", "data=sst2", f"data.batch_size={batch_size}"]
    over += [
        f"data.{k}={v}" for k, v in (("dev_limit", dev_limit), ("train_limit", train_limit)) if v
    ]
    variants = {"spt": over, **({"spt+": over + list(spt_overrides)} if spt_overrides else {})}
    spt, configs, dm = {}, {}, None
    for name, overrides in variants.items():
        cfg = configs[name] = _compose(overrides)
        L.seed_everything(cfg.seed, verbose=False)  # the weights' init and the loaders' order
        backbone, variant_dm, method = build(cfg)
        if backbone.arch != "encoder":
            raise SptError(
                f"time to accuracy compares with PEFT's SEQ_CLS recipe; model={model}"
                f" is {backbone.arch}: use an encoder-only model (minilm, tiny-bert)"
            )
        variant_dm.setup("fit")
        optimizer = method.configure_optimizers()
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise SptError(
                "time to accuracy runs spt's constant-schedule default; drop the "
                "method.scheduler / warmup override"
            )
        spt[name] = (method, optimizer, variant_dm)
        dm = dm or variant_dm  # the default's data module: dev rows and PEFT's batches
    method = spt["spt"][0]
    pm, peft_opt = peft_classifier(
        backbone,
        method.objective.head[-1],
        method.prompt.weight[0].detach().clone(),
        method.objective.head_lr,
        instantiate(configs["spt"].method.optimizer),
    )
    pad = backbone.tokenizer.pad_token_id
    dev = list(dm.val_dataloader())
    n_dev = sum(len(b["labels"]) for b in dev)

    def plain_loader():  # what a plain training loop shuffles: no length grouping
        grouped, dm.group_by_length = dm.group_by_length, False
        try:
            return dm.train_dataloader()
        finally:
            dm.group_by_length = grouped

    def endless(loader):  # epoch after epoch; the loader's sampler draws each one anew
        while True:
            yield from loader

    def spt_step(method, optimizer, batch, i):
        method.training_step(batch, i).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def peft_step(batch, i):
        pm(**batch).loss.backward()
        peft_opt.step()
        peft_opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def spt_acc(method):
        method.eval()
        right = sum(int((method(b).argmax(-1) == b["labels"]).sum()) for b in dev)
        method.train()
        return right / n_dev

    def peft_train():  # the frozen transformer's dropout off, as spt keeps it (backbone_dropout)
        pm.train()
        getattr(pm.base_model, pm.base_model.base_model_prefix).eval()

    @torch.no_grad()
    def peft_acc():
        pm.eval()
        right = sum(
            int((pm(**peft_cls_batch(b, pad)).logits.argmax(-1) == b["labels"]).sum()) for b in dev
        )
        peft_train()
        return right / n_dev

    # name -> (step(batch, i), accuracy(), endless batches, batch conversion outside the timer)
    contenders = {
        name: (
            partial(spt_step, m, opt),
            partial(spt_acc, m),
            endless(d.train_dataloader()),
            lambda b: b,
        )
        for name, (m, opt, d) in spt.items()
    }
    contenders["peft"] = (
        peft_step,
        peft_acc,
        endless(plain_loader()),
        partial(peft_cls_batch, pad_id=pad),
    )
    log = {
        k: {
            "train_s": 0.0,
            "steps": 0,
            "curve": [],
            "time_to_target_s": None,
            "steps_to_target": None,
            "best_acc": 0.0,
        }
        for k in contenders
    }
    for m, _, _ in spt.values():
        m.train()
    peft_train()
    names = list(contenders)
    for i in range(max_steps):
        for k in rotation(names, i):
            step, _, batches, convert = contenders[k]
            batch = convert(next(batches))
            log[k]["train_s"] += timed(partial(step, batch, i))
            log[k]["steps"] += 1
        if (i + 1) % eval_every:
            continue
        for k, (_, accuracy, _, _) in contenders.items():
            acc, v = accuracy(), log[k]
            v["curve"].append([i + 1, round(v["train_s"], 3), round(acc, 4)])
            v["best_acc"] = max(v["best_acc"], acc)
            if acc >= target and v["time_to_target_s"] is None:
                v["time_to_target_s"], v["steps_to_target"] = round(v["train_s"], 3), i + 1
        print(
            f"tta step {i + 1}: "
            + ", ".join(
                f"{k} acc {v['curve'][-1][2]:.4f} after {v['train_s']:.1f} s"
                for k, v in log.items()
            ),
            file=sys.stderr,
            flush=True,
        )
        if all(v["time_to_target_s"] is not None for v in log.values()):
            break
    return {
        "model": backbone.name,
        "target": target,
        "batch_size": batch_size,
        "spt_overrides": list(spt_overrides or []),
        "eval_every": eval_every,
        "max_steps": max_steps,
        "dev_rows": n_dev,
        "contenders": log,
    }


def noisy(results: dict) -> list[str]:
    """The timed contenders whose median is over :data:`NOISY_SPREAD` times their minimum."""
    return [
        f"{part}: {name}"
        for part in ("train", "infer")
        for name, v in results.get(part, {}).items()
        if v.get("noisy")
    ]


def ratios(results: dict) -> dict:
    """Ratios of medians; None where a contender in it was timed on a busy machine."""
    out = {}

    def r(a, b):
        return round(a / b, 3)

    def medians(part):
        return {k: None if v.get("noisy") else v["median_s"] for k, v in results[part].items()}

    def q(a, b):
        return None if a is None or b is None else r(a, b)

    if "train" in results:
        t = medians("train")
        out.update({f"train {k} spt/peft": q(t[f"spt {k}"], t[f"peft {k}"]) for k in KINDS})
        out["train prompt spt/peft-cls"] = q(t["spt prompt"], t["peft-cls prompt"])
        out["train prompt peft-cls/peft"] = q(t["peft-cls prompt"], t["peft prompt"])
        out["train prompt spt/floor"] = q(t["spt prompt"], t["floor"])
    if "infer" in results:
        i = medians("infer")
        out["infer mixed/single throughput"] = q(i["spt single task"], i["spt mixed 8 tasks"])
        out["infer spt mixed/peft throughput"] = q(i["peft 8 adapters"], i["spt mixed 8 tasks"])
    if "memory" in results:
        m = {k: v["peak_mib"] for k, v in results["memory"].items()}
        out.update({f"memory {k} spt/peft": r(m[f"spt {k}"], m[f"peft {k}"]) for k in KINDS})
        out["memory prompt spt/floor"] = r(m["spt prompt"], m["floor"])
    if "tta" in results:
        runs = results["tta"]["contenders"]
        peft_s = runs["peft"]["time_to_target_s"]
        for k in (k for k in runs if k != "peft"):
            spt_s = runs[k]["time_to_target_s"]
            if spt_s is not None and peft_s is not None:
                out[f"time to accuracy {k}/peft"] = r(spt_s, peft_s)
            elif spt_s is not None:  # PEFT never got there: its whole run bounds the ratio
                out[f"time to accuracy {k}/peft (upper bound)"] = r(spt_s, runs["peft"]["train_s"])
    return out


def table(results: dict) -> str:
    lines = ["| contender | median ms | min ms | median/min |", "|---|---|---|---|"]
    for part in ("train", "infer"):
        for name, v in results.get(part, {}).items():
            flag = " (noisy)" if v.get("noisy") else ""
            lines.append(
                f"| {part}: {name} | {1e3 * v['median_s']:.1f} | "
                f"{1e3 * v['min_s']:.1f} | {v['median_s'] / v['min_s']:.2f}{flag} |"
            )
    if "memory" in results:
        lines += [
            "",
            "| contender | step peak MiB above resident (median) | each child's | resident MiB |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| memory: {k} | {v['peak_mib']:.1f} | {v['peaks_mib']} | {v['resident_mib']:.0f} |"
            for k, v in results["memory"].items()
        ]
    if "tta" in results:
        tta = results["tta"]
        lines += [
            "",
            f"time to dev acc >= {tta['target']} ({tta['model']}, batch "
            f"{tta['batch_size']}, eval every {tta['eval_every']} steps, spt overrides "
            f"{tta['spt_overrides'] or 'none'}):",
            "",
            "| contender | steps to target | train s to target | best acc | s per step |",
            "|---|---|---|---|---|",
        ]
        for k, v in tta["contenders"].items():
            lines.append(
                f"| {k} | {v['steps_to_target']} | {v['time_to_target_s']} | "
                f"{v['best_acc']:.4f} | {v['train_s'] / v['steps']:.3f} |"
            )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [
        f"| {k} | {'noisy: rerun' if v is None else v} |" for k, v in results["ratios"].items()
    ]
    bad = noisy(results)
    if bad:
        lines += [
            "",
            f"NOISY: {', '.join(bad)} had a median over {NOISY_SPREAD}x its fastest "
            "call: the machine was busy, so those medians (and every ratio with them) "
            "mean little. Rerun on a quiet machine.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spt.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny Llama and tiny BERT, few repeats and steps (CI)"
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="a model name from spt/conf/model (decoder)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, help="timed calls per contender (10; quick 5)")
    parser.add_argument(
        "--parts",
        default="train,infer,memory,tta",
        help="comma-separated sections: train, infer, memory, tta",
    )
    parser.add_argument(
        "--tta-model",
        default="minilm",
        help="time to accuracy: a model name from spt/conf/model (encoder-only)",
    )
    parser.add_argument("--target", type=float, default=0.75, help="SST-2 dev accuracy")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument(
        "--spt-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="time to accuracy: a Hydra override of spt's recipe (repeatable), "
        "e.g. data.group_by_length=true",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - {"train", "infer", "memory", "tta"}
    if unknown or not parts:
        parser.error(f"--parts {args.parts!r}: choose from train, infer, memory, tta")
    model = "tiny-llama" if args.quick else args.model
    repeats = args.repeats or (5 if args.quick else 10)
    tta = (
        {
            "model": "tiny-bert",
            "target": 0.5,
            "batch_size": 8,
            "eval_every": 4,
            "max_steps": 8,
            "dev_limit": 32,
            "train_limit": 64,
        }
        if args.quick
        else {
            "model": args.tta_model,
            "target": args.target,
            "eval_every": args.eval_every,
            "max_steps": args.max_steps,
        }
    )
    tta["spt_overrides"] = args.spt_override
    try:
        results = run(
            model, args.batch_size, repeats, parts, tta, memory_repeats=1 if args.quick else 3
        )
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
