"""Where the MPT study's RTE predictions go (README.md, "Where the predictions go").

Serves every finished target-stage run (the three arms x their seeds) on one backbone with
:class:`spt.serve.PromptServer`, scores the RTE dev pairs and prints, per run, the dev accuracy,
the share of pairs predicted "entailment", each class's recall and the balanced accuracy::

    SPT_DATA_DIR=../shared/data python experiments/mpt_transfer/predictions.py outputs/mpt

The dev pairs are read as the runs read them, through their saved ``data`` config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from spt.data.readers import read_local
from spt.errors import SptError, cli_error
from spt.serve import PromptServer

ARMS = {"baseline_rte": "Prompt Tuning", "target_rte": "MPT, distilled source",
        "target_rte_nodistill": "MPT, undistilled source"}
POSITIVE = "entailment"


def finished_runs(root: Path) -> dict[str, Path]:
    """``{"<arm>/<seedN>": run_dir}`` for every arm's seed directory holding ``metrics.json``."""
    runs = {f"{arm}/{d.name}": d for arm in ARMS for d in sorted((root / arm).glob("seed*"))
            if (d / "metrics.json").is_file()}
    if not runs:
        raise SptError(f"no finished target runs under {root}/{{{','.join(ARMS)}}}/"
                                "seed*: run experiments/mpt_transfer/run.sh first")
    return runs


def class_stats(pred: list[str], gold: list[str]) -> dict[str, float]:
    """Accuracy, share predicted positive, recall per class and their mean (balanced acc)."""
    def recall(label):
        rows = [p == g for p, g in zip(pred, gold, strict=True) if g == label]
        return sum(rows) / len(rows)
    r_pos, r_neg = recall(POSITIVE), recall(next(g for g in gold if g != POSITIVE))
    return {"acc": sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold),
            "pred_pos": pred.count(POSITIVE) / len(pred),
            "recall_pos": r_pos, "recall_neg": r_neg, "balanced": (r_pos + r_neg) / 2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="the study's runs (SPT_MPT_RUNS)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding superglue/ (default $SPT_DATA_DIR, else the runs' "
                        "data.root)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N pairs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args(argv)
    try:
        runs = finished_runs(args.root)
        data = OmegaConf.load(next(iter(runs.values())) / "config.yaml").data
        root = args.data_root or Path(os.environ.get("SPT_DATA_DIR") or data.root or ".")
        dev = read_local(root, OmegaConf.to_container(data.local.dev), data.text_fields,
                         data.label_names, "data.local.dev")
        dev = dev.subset(range(min(args.limit, len(dev)))) if args.limit is not None else dev
        gold = [data.label_names[i] for i in dev.labels]
        if len(set(gold)) < 2:
            raise SptError(f"the {len(gold)} dev pairs scored hold fewer than two classes, "
                           "so recall is undefined: raise --limit or drop it")
        if args.threads:
            torch.set_num_threads(args.threads)
        server = PromptServer.from_runs(runs)
        print("| run | dev acc | predicts entailment | recall, entailment | "
              "recall, not entailment | balanced acc |\n|---|---|---|---|---|---|")
        for name in runs:
            rows = [{"task": name, "text": {f: dev.texts[f][i] for f in data.text_fields}}
                    for i in range(len(dev))]
            pred = [out["label"] for start in range(0, len(rows), args.batch_size)
                    for out in server.predict(rows[start:start + args.batch_size])]
            s = class_stats(pred, gold)
            arm, seed = name.split("/")
            print(f"| {ARMS[arm]}, seed {seed.removeprefix('seed')} | " + " | ".join(
                f"{100 * s[k]:.1f}%" for k in
                ("acc", "pred_pos", "recall_pos", "recall_neg", "balanced")) + " |",
                flush=True)
        return 0
    except Exception as exc:  # a user error: one line, status 2
        return cli_error(exc)


if __name__ == "__main__":
    sys.exit(main())
