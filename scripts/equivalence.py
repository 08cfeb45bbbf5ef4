"""Record, or check, what short seeded training runs of every method produce (issue 19, point 6).

    python scripts/equivalence.py record [CASE ...]  # writes tests/golden/<case>.safetensors
    python scripts/equivalence.py check [CASE ...]   # reruns cases, compares with those files

A case is a method on a tiny architecture and a small dataset (SST-2 rows, CIFAR-10 images,
E2E for text-to-text, a task mixture, the Nemesis regularizer): two optimizer steps through a
Lightning Trainer, then a dev pass. What is kept: the artifact's tensors, the class scores (or
generated texts) of the first dev batch, the dev metrics and the artifact's metadata. A
refactor that changes no numbers reproduces all of it bit for bit (``torch.equal``) on the
locked environment, one torch thread, on the machine that recorded it (its CPU and torch
build are in the record). Another CPU runs other float kernels (oneDNN/MKL pick code paths by
instruction set), so there the tensors may differ in the last bits: measured up to 1.2e-4 of
a tensor's largest value after the two steps, across all cases, between two Xeon models. Off
the recording machine, each tensor must then be within :data:`RTOL` of its own scale, and the
metrics, texts and metadata stay exact. ``tests/test_equivalence.py`` runs the same cases.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
RTOL = 1e-3  # off the recording machine: |a - b| <= RTOL * max|b| per tensor (8x the 1.2e-4 seen)


def machine() -> str:
    """The CPU (model name, family/model numbers, a digest of its instruction-set flags: cloud
    Xeons often share one generic name) and the torch build a record was made on; bit-exact
    checks need all of them equal."""
    import hashlib
    import platform

    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    flags = hashlib.sha256(info.get("flags", "").encode()).hexdigest()[:12]
    ids = f"family {info.get('cpu family', '?')} model {info.get('model', '?')} flags {flags}"
    return f"{cpu} ({ids}) | torch {torch.__version__}"


_SST2 = [
    "data=sst2",
    "data.root={root}",
    "data.train_limit=8",
    "data.dev_limit=8",
    "data.batch_size=4",
]
_CIFAR = [
    "data=cifar10_subset",
    "data.root={root}",
    "data.shots=1",
    "data.dev_limit=8",
    "data.batch_size=4",
]
_E2E = [
    "data=e2e",
    "data.root={root}",
    "data.train_limit=8",
    "data.dev_limit=3",
    "data.batch_size=4",
    "data.max_new_tokens=4",
]
_MIX = [
    "data=mix_source",
    "method.n_tasks=3",
    "data.batch_size=6",
    "data.tasks.sst2.train_limit=4",
    "data.tasks.agnews.train_limit=4",
    "data.tasks.trec.train_limit=4",
    "data.tasks.sst2.dev_limit=2",
    "data.tasks.agnews.dev_limit=2",
    "data.tasks.trec.dev_limit=2",
    *(f"data.tasks.{t}.root={{root}}" for t in ("sst2", "agnews", "trec")),
]
TINY = {
    "encoder": "tiny-bert",
    "decoder": "tiny-llama",
    "encoder-decoder": "tiny-t5",
    "clip": "tiny-clip",
}  # architecture -> its tiny model (spt/conf/model)


def cases() -> dict[str, list[str]]:
    """Case name -> Hydra overrides (``{root}`` stands for the data directory): every method
    of the registry on every tiny architecture it supports, and on E2E where it generates."""
    from spt import methods

    out = {}
    small = {"prefix": ["method.hidden=32"]}  # the MLP's width is no code path; 1 MB files
    for method, info in methods.registry().items():
        for arch in info.archs:
            model, data = TINY[arch], _CIFAR if arch == "clip" else _SST2
            out[f"{method}-{model}-{data[0][5:]}"] = [
                f"method={method}",
                f"model={model}",
                *data,
                *small.get(method, []),
            ]
        for arch in ("decoder", "encoder-decoder"):  # text-to-text
            if info.generation and arch in info.archs:
                model = TINY[arch]
                label_init = _yaml_default(method, "init") == "class_labels"  # needs labels
                init = ["method.init=sampled_vocab"] if label_init else []
                out[f"{method}-{model}-e2e"] = [
                    f"method={method}",
                    f"model={model}",
                    *_E2E,
                    *init,
                    *small.get(method, []),
                ]
    for model in ("tiny-bert", "tiny-llama"):  # one pass for a mixture's rows
        out[f"mpt-{model}-mix_source"] = ["method=mpt", f"model={model}", *_MIX]
    out["prompt-tiny-llama-sst2-nemesis"] = [
        "method=prompt",
        "model=tiny-llama",
        *_SST2,
        "regularizer=nemesis",
    ]
    out["prompt-tiny-bert-sst2-residual"] = [  # Residual Prompt Tuning, an option of prompt
        "method=prompt",
        "model=tiny-bert",
        *_SST2,
        "method.residual=16",
    ]
    out["coop-tiny-clip-cifar10_subset-nemesis"] = [
        "method=coop",
        "model=tiny-clip",
        *_CIFAR,
        "regularizer=nemesis",
    ]
    return out


def _yaml_default(method: str, key: str):
    """``key``'s value in ``spt/conf/method/<method>.yaml`` (None where it has none)."""
    from omegaconf import OmegaConf

    from spt import CONF_DIR

    return OmegaConf.load(Path(CONF_DIR) / "method" / f"{method}.yaml").get(key)


def compose(overrides: list[str], data_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from spt import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            config_name="run", overrides=[o.format(root=data_dir) for o in overrides]
        )


def run_case(overrides: list[str], data_dir: Path):
    """Fit two steps and validate; returns ``(tensors, record, method, datamodule, before)``:
    the tensors to compare, the JSON-able record (metrics, metadata, texts), the fitted method
    and its data and, for the caller's own checks, the backbone's state and the artifact's
    tensors before fitting."""
    import lightning as L

    from spt.build import build

    cfg = compose(overrides, data_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order wherever it runs
    try:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        _, dm, m = build(cfg)
        before = {
            "backbone": {k: v.clone() for k, v in m.backbone.state_dict().items()},
            "artifact": {k: v.clone() for k, v in m.artifact_tensors().items()},
        }
        trainer = L.Trainer(
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            max_steps=2,
            val_check_interval=2,
            num_sanity_val_steps=0,
            limit_val_batches=1,
            deterministic=True,
        )
        trainer.fit(m, datamodule=dm)
        tensors = {k: v.detach().clone() for k, v in m.artifact_tensors().items()}
        record = {
            "metrics": {k: float(v) for k, v in m.last_val.items()},
            "meta": json.loads(json.dumps(m.artifact_meta(), default=str)),
        }
        loader = dm.val_dataloader()
        if isinstance(loader, list):  # a mixture validates task by task; train rows mix them
            loader = dm.train_dataloader()
        batch = next(iter(loader))
        m.eval()
        with torch.no_grad():
            if m.objective.generative:
                record["texts"] = m.objective.texts(m, batch)
            else:
                tensors["_scores"] = m(batch).detach().float()
    finally:
        torch.set_num_threads(threads)
    return tensors, record, m, dm, before


def save(name: str, tensors: dict, record: dict) -> Path:
    from safetensors.torch import save_file

    GOLDEN.mkdir(parents=True, exist_ok=True)
    path = GOLDEN / f"{name}.safetensors"
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(path),
        metadata={"record": json.dumps({**record, "machine": machine()}, sort_keys=True)},
    )
    return path


def load(name: str) -> tuple[dict, dict]:
    from safetensors import safe_open

    path = GOLDEN / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        record = json.loads(f.metadata()["record"])
    return tensors, record


def differences(name: str, tensors: dict, record: dict) -> list[str]:
    """What differs from the recorded case (empty when nothing does): tensors bit for bit on
    the recording machine, within :data:`RTOL` of their scale elsewhere. Metadata keys added
    since the recording are allowed; every recorded key must keep its value."""
    want_t, want_r = load(name)
    exact = want_r.get("machine") == machine()
    out = []
    if sorted(tensors) != sorted(want_t):
        out.append(f"tensors {sorted(tensors)} != recorded {sorted(want_t)}")
    for k in sorted(tensors.keys() & want_t.keys()):
        a, b = tensors[k], want_t[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            out.append(f"{k}: {a.dtype} {list(a.shape)} != recorded {b.dtype} {list(b.shape)}")
            continue
        if torch.equal(a, b):
            continue
        err = (a.float() - b.float()).abs().max().item()
        scale = b.float().abs().max().item() if b.numel() else 0.0
        if exact or not torch.is_floating_point(b) or err > RTOL * scale:
            how = "bit for bit (the recording machine)" if exact else f"{RTOL:g} of {scale:.3g}"
            out.append(f"{k}: differs (max abs {err:.3g}; must match {how})")
    if record["metrics"] != want_r["metrics"]:
        out.append(f"metrics {record['metrics']} != recorded {want_r['metrics']}")
    if record.get("texts") != want_r.get("texts"):
        out.append(f"texts {record.get('texts')} != recorded {want_r.get('texts')}")
    for k, v in want_r["meta"].items():
        if record["meta"].get(k, "<absent>") != v:
            out.append(f"meta {k}: {record['meta'].get(k, '<absent>')!r} != recorded {v!r}")
    return out


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_dir = Path(os.environ.get("SPT_DATA_DIR") or REPO.parent / "shared" / "data")
    if not argv or argv[0] not in ("record", "check"):
        print("usage: python scripts/equivalence.py record|check [CASE ...]", file=sys.stderr)
        return 2
    chosen = cases()
    unknown = sorted(set(argv[1:]) - set(chosen))
    if unknown:
        print(f"unknown cases {unknown}: choose from {sorted(chosen)}", file=sys.stderr)
        return 2
    if argv[1:]:
        chosen = {name: chosen[name] for name in argv[1:]}
    failed = 0
    for name, overrides in chosen.items():
        tensors, record, *_ = run_case(overrides, data_dir)
        if argv[0] == "record":
            print(f"{name}: {save(name, tensors, record).relative_to(REPO)}")
            continue
        diff = differences(name, tensors, record)
        failed += bool(diff)
        print(f"{name}: {'ok' if not diff else 'DIFFERS: ' + '; '.join(diff)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
