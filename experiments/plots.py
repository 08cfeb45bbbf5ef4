"""Regenerate every study's committed plot from its committed CSVs, without its runs:

    .venv/bin/python experiments/plots.py

Each picture is drawn by ``spt.tools.compare`` (every run a dot, each cell's mean ± std a
marker, majority-class baselines as dashed lines). The majority-class rates are those of the
dev sets in ../shared/data, counted from the files: SST-2 444/872 positive, RTE 146/277
entailment, CB 28/56 contradiction.
"""

from __future__ import annotations

import sys
from pathlib import Path

from spt.tools.compare import curves, plot, read_rows

HERE = Path(__file__).resolve().parent
MAJORITY = {"sst2": 444 / 872, "rte": 146 / 277, "cb": 28 / 56}


def majority(data: str, note: str = "") -> dict[str, float]:
    return {f"{data.upper()} majority class{note}": MAJORITY[data]}


def main() -> int:
    written = []

    def out(path: str) -> Path:
        written.append(HERE / path)
        return HERE / path

    rows = read_rows(HERE / "lester_init/runs.csv")
    plot(rows, "method.init", "val/acc", hue="model", out=out("lester_init/acc_vs_init.png"),
         baselines=majority("sst2", " (full dev)"))  # fmt: skip

    rows = read_rows(HERE / "lester_prompt_length/runs.csv")
    plot(rows, "method.length", "val/acc", hue="model",
         out=out("lester_prompt_length/acc_vs_length.png"),
         baselines=majority("sst2", " (full dev)"))  # fmt: skip

    rows = read_rows(HERE / "ptuning_v2_superglue/runs.csv")
    plot(rows, "method", "val/acc", hue="data", out=out("ptuning_v2_superglue/acc_by_method.png"),
         baselines=majority("cb"))  # fmt: skip

    # the runs the scripts make now: not the lr probes nor the rows kept from before a fix;
    # Residual PT is method=prompt with an MLP (its run folders say prompt_residual)
    rows = [
        r
        for r in read_rows(HERE / "text_methods/results.csv")
        if "lr" not in r["run"] and "2026-11-22" not in r["run"]
    ]
    for r in rows:
        if "prompt_residual" in Path(r["run"]).name:
            r["method"] = "prompt_residual"
    for data in ("sst2", "rte"):
        plot([r for r in rows if r["data"] == data], "method", "val/acc", hue="model",
             out=out(f"text_methods/acc_by_method_{data}.png"), baselines=majority(data))  # fmt: skip
    plot([r for r in rows if r["data"] == "e2e"], "method", "val/bleu",
         out=out("text_methods/bleu_by_method_e2e.png"))  # fmt: skip

    rows = [r for r in read_rows(HERE / "mpt_transfer/results.csv") if r["data"] == "rte"]
    arms = {
        "baseline_rte": "Prompt Tuning",
        "target_rte": "MPT (distilled source)",
        "target_rte_nodistill": "MPT (source, no distillation)",
    }
    for r in rows:
        r["arm"] = arms[Path(r["run"]).parent.name]
    plot(rows, "arm", "val/acc", out=out("mpt_transfer/rte_by_arm.png"),
         baselines=majority("rte"))  # fmt: skip

    curves([HERE / "foundation_sst2/minilm_run"], "val/acc",
           out=out("foundation_sst2/curves_minilm.png"))  # fmt: skip
    for path in written:
        print(path.relative_to(HERE.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
