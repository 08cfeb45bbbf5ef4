"""The Low-Norm Effect of a trained soft prompt (Fu, Wang, Huang & Zhang 2024, "Nemesis:
Normalizing the Soft-prompt Vectors of Vision-Language Models", ICLR 2024, arXiv:2408.13979):
``python -m spt.analysis RUN_DIR [--mode replace|rescale] [--sigma 1.0] [--weight 0.5] [--seed 0]
[--dev-limit N] [--out DIR]``.

The paper corrupts one learned prompt position at a time and finds that accuracy sometimes
*rises*, mostly when the corruption lowers that vector's norm. This module measures it for a
run of a method whose prompt is input vectors (``method=prompt | ptuning | mpt``, and CLIP CoOp):
the dev accuracy with the uncorrupted prompt and with each position ``i`` in ``0..N-1``

- ``replace``d by a noise vector drawn from ``N(0, sigma^2)`` (``sigma`` is the standard
  deviation; one vector per position, drawn once from a generator seeded with ``seed`` and used
  for every dev row, so the result does not depend on batching), or
- ``rescale``d by a factor ``w`` (the corruption Nemesis's PAN term probes with),

plus the per-position L2 norms of the prompt. The run is re-composed from its ``config.yaml``
with the saved ``prompt.safetensors`` loaded (``method.init=file``), then written out as
``low_norm_<mode>.csv`` (position, norm, accuracy, delta vs uncorrupted) and
``low_norm_<mode>.png``; the Markdown table and the positions whose corruption raised accuracy
are printed. In a task mixture the accuracy is the mean of the per-task accuracies (as
``val/acc``), and the norms are averaged over the prompt-table rows the dev split uses.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from spt.errors import SptError, cli_error
from spt.regularizers.nemesis import corrupted_prompts, eval_mode, position_norms, stack_batch

MODES = ("replace", "rescale")
REQUIRES = ("soft_prompts", "scores_with_prompts")  # what a method must provide


# -- corrupting prompts --------------------------------------------------------------------
def replaced_prompts(
    prompts: torch.Tensor, positions: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``prompts [B, ..., N, d]`` -> ``[(K + 1) * B, ..., N, d]``: the prompts unchanged, then
    one copy per position in ``positions [K]`` with that position's vector replaced by
    ``noise [N, d]`` at the same position (variant-major, the layout of
    :func:`~spt.regularizers.nemesis.corrupted_prompts`)."""
    k, n = len(positions), prompts.shape[-2]
    mask = torch.zeros(k + 1, n, dtype=torch.bool, device=prompts.device)
    mask[torch.arange(1, k + 1, device=prompts.device), positions.to(prompts.device)] = True
    mask = mask.reshape(k + 1, *([1] * (prompts.dim() - 2)), n, 1)
    noise = noise.to(prompts.device, prompts.dtype)
    return torch.where(mask, noise, prompts.unsqueeze(0)).flatten(0, 1)


def variant_prompts(
    prompts: torch.Tensor,
    positions: torch.Tensor,
    mode: str,
    *,
    weight: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """The uncorrupted prompts followed by one corrupted copy per position, ``[(K + 1) * B, ...]``
    (``mode``: ``rescale`` by ``weight`` or ``replace`` by ``noise``)."""
    if mode == "rescale":
        return corrupted_prompts(prompts, positions, weight)
    return replaced_prompts(prompts, positions, noise)


# -- the measurement -----------------------------------------------------------------------
@dataclass
class LowNormResult:
    """Dev accuracy with the uncorrupted prompt (``baseline``) and with each position corrupted
    (``accuracy[i]``), and the prompt's L2 norm per position (``norms[i]``)."""

    mode: str
    setting: float  # sigma (replace) or w (rescale)
    baseline: float
    accuracy: list[float]
    norms: list[float]
    rows: int

    @property
    def helped(self) -> list[int]:
        """The positions whose corruption raised the accuracy."""
        return [i for i, a in enumerate(self.accuracy) if a > self.baseline]

    def table(self) -> list[dict]:
        return [
            {"position": i, "norm": norm, "accuracy": acc, "delta": acc - self.baseline}
            for i, (norm, acc) in enumerate(zip(self.norms, self.accuracy, strict=True))
        ]


def low_norm_effect(
    method,
    batches: Iterable[dict],
    *,
    mode: str = "rescale",
    sigma: float = 1.0,
    weight: float = 0.5,
    seed: int = 0,
    chunk_rows: int = 256,
) -> LowNormResult:
    """Accuracy of ``method`` on ``batches`` with its own prompt and with each prompt position
    corrupted in turn (see the module docstring), no-grad and in eval mode.

    ``method`` provides ``soft_prompts(task_ids [B]) -> [B, ..., N, d]`` and
    ``scores_with_prompts(batch, prompts) -> [B, C]`` (see
    ``scores_with_prompts``); each batch holds ``labels`` (which give its
    size), ``task_ids`` (all 0 when absent) and whatever the method's scoring reads. The
    ``N + 1`` prompt variants of a batch are scored stacked along the batch axis, at most
    ``max(chunk_rows, B)`` rows per forward."""
    if mode not in MODES:
        raise SptError(f"mode={mode!r}: choose {' or '.join(MODES)}")
    if mode == "replace" and not 0 <= sigma < math.inf:
        raise SptError(f"sigma={sigma!r}: the noise's standard deviation must be finite, >= 0")
    if mode == "rescale" and not -math.inf < weight < math.inf:
        raise SptError(f"weight={weight!r}: the rescaling factor must be a finite number")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise SptError(f"chunk_rows={chunk_rows!r} must be an integer >= 1")
    device = next(iter(method.parameters()), torch.empty(0)).device
    generator = torch.Generator().manual_seed(int(seed))
    noise = None
    correct: dict[int, torch.Tensor] = {}  # task -> correct rows per variant [N + 1]
    count: dict[int, int] = {}  # task -> rows
    with torch.no_grad(), eval_mode(method):
        for batch in batches:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            labels = batch["labels"]
            b = len(labels)
            task_ids = batch.get("task_ids")
            if task_ids is None:
                task_ids = torch.zeros(b, dtype=torch.long, device=device)
            prompts = method.soft_prompts(task_ids)
            n = prompts.shape[-2]
            if noise is None:  # one vector per position for the whole dev split
                noise = sigma * torch.randn(n, prompts.shape[-1], generator=generator)
            hits = torch.empty(n + 1, b, dtype=torch.bool, device=device)
            per = max(1, chunk_rows // b)  # variants per forward: 0 = uncorrupted, 1 + i = i
            for start in range(0, n + 1, per):
                stop = min(n + 1, start + per)
                positions = torch.arange(max(start, 1) - 1, stop - 1)
                stacked = variant_prompts(prompts, positions, mode, weight=weight, noise=noise)
                if start > 0:  # the uncorrupted copy was scored in the first chunk
                    stacked = stacked[b:]
                copies = stop - start
                scores = method.scores_with_prompts(stack_batch(batch, copies), stacked)
                hits[start:stop] = scores.reshape(copies, b, -1).argmax(-1) == labels
            for t in task_ids.unique().tolist():
                rows = task_ids == t
                correct[t] = correct.get(t, 0) + hits[:, rows].sum(1).cpu()
                count[t] = count.get(t, 0) + int(rows.sum())
        if not count:
            raise SptError("no dev rows to score: check data.dev_limit and the dev split")
        used = torch.tensor(sorted(count), device=device)
        norms = position_norms(method.soft_prompts(used), 2.0)
    acc = torch.stack([correct[t].double() / count[t] for t in sorted(count)]).mean(0)
    return LowNormResult(
        mode=mode,
        setting=float(sigma if mode == "replace" else weight),
        baseline=acc[0].item(),
        accuracy=acc[1:].tolist(),
        norms=norms.tolist(),
        rows=sum(count.values()),
    )


# -- a finished run ------------------------------------------------------------------------
def load_run(run_dir: Path, dev_limit: int | None = None):
    """``(data name, datamodule, method)`` of a finished ``spt.run`` run: the method from its
    self-describing ``prompt.safetensors`` (:func:`spt.load`), the dev split from spt's own
    ``data=`` config with the run's plain data values (:func:`spt.build.data_config`). Nothing
    the run directory names is instantiated."""
    import spt
    from spt.build import build_data, data_config
    from spt.regularizers import methods_providing

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SptError(
            f"run directory {run_dir} does not exist: give a directory that "
            "python -m spt.run wrote (outputs/runs/<data>/<model>/<method>/<time>; "
            "python -m spt.compare lists them)"
        )
    artifact = run_dir / "prompt.safetensors"
    if not artifact.is_file():
        raise SptError(
            f"{run_dir} holds no prompt.safetensors (a zero_shot run, or one that "
            "stopped before saving, or the parent of runs): analyse a run that trained and "
            "finished (python -m spt.compare lists them)"
        )
    model = spt.load(artifact)
    method = model.method
    cls = type(method)
    missing = [r for r in REQUIRES if not callable(getattr(cls, r, None))]
    if missing:
        works = methods_providing(REQUIRES)
        raise SptError(
            f"method={model.name} has no soft-prompt vectors to corrupt (no "
            f"{', '.join(missing)}): the Low-Norm analysis needs a run of "
            f"method={' | '.join(works)}"
        )
    if method.objective.generative:
        raise SptError(
            f"data={model.data} is a generation task and the Low-Norm analysis "
            "compares class predictions: analyse a run on a classification dataset"
        )
    sets = []
    if dev_limit is not None:
        if dev_limit < 1:
            raise SptError(
                f"--dev-limit {dev_limit}: give at least 1 dev row (or omit it to "
                "score the run's own dev rows)"
            )
        sets.append(f"data.dev_limit={dev_limit}")
    data = data_config(model.data, model.formats, run_dir, sets)
    if str(data.get("_target_", "")).endswith("TextClassificationDataModule"):
        # dev rows longest-first: the N + 1 variants of every batch pad to similar lengths
        # (SST-2 at 32 rows: 1.7x fewer padded tokens); no row's prediction depends on order
        data.group_by_length = True
    datamodule = build_data(data, model.backbone)
    datamodule.n_soft = method.n_soft_tokens
    datamodule.setup("validate")
    return data.name, datamodule, method


def write_csv(result: LowNormResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["position", "norm", "accuracy", "delta"])
        writer.writeheader()
        writer.writerows(result.table())


def plot(result: LowNormResult, path: Path, title: str) -> None:
    """Accuracy per corrupted position (a line at the uncorrupted accuracy) over the prompt's
    norm per position, two panels sharing the position axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.accuracy)
    x = list(range(n))
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(max(6.0, 0.3 * n + 2), 6), gridspec_kw={"height_ratios": [2, 1]}
    )
    colours = [
        "tab:green" if a > result.baseline else "tab:orange" if a < result.baseline else "tab:gray"
        for a in result.accuracy
    ]
    top.bar(x, result.accuracy, color=colours)
    top.axhline(
        result.baseline, color="tab:red", linestyle="--", label=f"uncorrupted {result.baseline:.4f}"
    )
    low = min(result.accuracy + [result.baseline])
    high = max(result.accuracy + [result.baseline])
    pad = max(0.02, 0.1 * (high - low))
    top.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    top.set_ylabel("dev accuracy")
    what = (
        f"N(0, {result.setting:g}) replacement"
        if result.mode == "replace"
        else f"rescaled by {result.setting:g}"
    )
    top.set_title(f"{title}\nposition {what} (green: raised accuracy, orange: lowered)")
    top.legend(loc="lower right")
    bottom.bar(x, result.norms, color="tab:blue")
    bottom.set_ylabel("L2 norm")
    bottom.set_xlabel("prompt position")
    bottom.set_xticks(x if n <= 40 else x[:: max(1, n // 20)])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyse(args: argparse.Namespace) -> LowNormResult:
    from spt.api import parse_device
    from spt.console import quiet_third_parties
    from spt.tools.compare import markdown

    quiet_third_parties()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(device)  # refused by name before the model loads
    for name, value in (("--weight", args.weight), ("--sigma", args.sigma)):
        if not math.isfinite(value):
            raise SptError(f"{name} {value}: give a finite number")
    _, datamodule, method = load_run(args.run_dir, args.dev_limit)
    method.to(device)
    result = low_norm_effect(
        method,
        datamodule.val_dataloader(),
        mode=args.mode,
        sigma=args.sigma,
        weight=args.weight,
        seed=args.seed,
        chunk_rows=args.chunk_rows,
    )
    out = args.out or args.run_dir
    csv_path, png_path = out / f"low_norm_{args.mode}.csv", out / f"low_norm_{args.mode}.png"
    metrics_path = Path(args.run_dir) / "metrics.json"
    try:
        meta = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        meta = {}  # only the plot's title comes from it
    meta = meta if isinstance(meta, dict) else {}
    title = " / ".join(str(meta[k]) for k in ("data", "model", "method") if k in meta)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(result, csv_path)
        plot(result, png_path, title or str(args.run_dir))
    except OSError as exc:
        raise SptError(f"cannot write the results to {out}: {exc.strerror or exc}") from None
    print(markdown(result.table(), ["position", "norm", "accuracy", "delta"]))
    helped = result.helped
    print(
        f"\nuncorrupted dev accuracy {result.baseline:.4f} on {result.rows} rows; corrupting "
        f"{len(helped)} of {len(result.accuracy)} positions ({args.mode}) raised it"
        + (f": {', '.join(map(str, helped))}" if helped else "")
    )
    print(f"wrote {csv_path} and {png_path}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spt.analysis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="a directory written by python -m spt.run")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="rescale",
        help="corrupt a position by replacing it with noise or rescaling it (default: rescale)",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        default=1.0,
        help="replace: the noise's standard deviation (default: 1.0)",
    )
    parser.add_argument(
        "--weight", type=float, default=0.5, help="rescale: the factor w (default: 0.5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise (default: 0)")
    parser.add_argument(
        "--dev-limit",
        type=int,
        default=None,
        help="score a seeded subset of this many dev rows (default: the run's own data.dev_limit)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the CSV and PNG (default: RUN_DIR)"
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=256,
        help="rows per forward when stacking prompt variants (default: 256)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:1, ... (default: auto = cuda when available)",
    )
    args = parser.parse_args(argv)
    try:
        analyse(args)
    except Exception as exc:  # Hydra's instantiate wraps the SptErrors it meets
        return cli_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
