"""``python -m spt.eval RUN_OR_ARTIFACT [--split dev|test] [--ckpt FILE]``: score a trained
prompt on a dataset's dev or test split, without training (lightning-hydra-template's
``eval.py``).

The prompt comes from its artifact (:func:`spt.load`); ``--ckpt`` loads a checkpoint of the
same run over it (a best or mid-training state). The data is spt's own config group
(``--data``, default the one the prompt was trained on) with the artifact's input format
(template, label words, limits) applied, then, for a run directory, the plain data values of
its ``config.yaml`` (so ``data.dev_limit`` and friends match the run); ``--set data.KEY=VALUE``
overrides last. Nothing a run's files name is instantiated: targets come from spt's configs.
Prints one summary line and writes the metrics as JSON to ``--out`` (and, for text-to-text,
each input with its prediction and references to ``--predictions``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spt.errors import SptError, cli_error


def evaluate(
    path: str | Path,
    split: str = "dev",
    data: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
    ckpt: str | None = None,
    device: str | None = None,
) -> tuple[dict, list[dict]]:
    """Metrics of the prompt at ``path`` on ``split``, and (text-to-text) its predictions."""
    import lightning as L
    import torch

    import spt
    from spt.build import build_data, data_config
    from spt.console import quiet_third_parties

    if split not in ("dev", "test"):
        raise SptError(f"--split {split!r}: dev or test")
    quiet_third_parties()
    path = Path(path).expanduser()
    run_dir = path if path.is_dir() else None
    model = spt.load(path, device=device)
    method = model.method
    if ckpt is not None:
        import pickle

        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
            method.load_state_dict(state)
        except (OSError, KeyError, RuntimeError, TypeError, pickle.UnpicklingError) as err:
            raise SptError(
                f"--ckpt {ckpt}: not a Lightning checkpoint of this run "
                f"({' '.join(str(err).split())[:200]})"
            ) from None
    cfg = data_config(data or model.data, model.formats, run_dir, list(sets))
    dm = build_data(cfg, model.backbone)
    for ours, theirs in zip(model.formats, dm.formats, strict=False):
        if ours.label_names != theirs.label_names:
            raise SptError(
                f"the prompt's classes {list(ours.label_names)} are not data={cfg.name}'s "
                f"{list(theirs.label_names)} in that order: its scores would be read as the "
                "wrong classes; evaluate it on the data it was trained for"
            )
    dm.n_soft = method.n_soft_tokens
    if split == "test" and getattr(dm, "test_split", "dev") == "dev":
        raise SptError(
            f"data={cfg.name} has no labelled test split (its test labels are not public): "
            "use --split dev"
        )
    dev = model.device
    trainer = L.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=[dev.index or 0] if dev.type == "cuda" else 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if split == "dev":
        trainer.validate(method, datamodule=dm, verbose=False)
        metrics = dict(method.last_val)
    else:
        trainer.test(method, datamodule=dm, verbose=False)
        metrics = dict(method.last_test)
    metrics = {k: v for k, v in metrics.items() if not k.endswith("_best")}
    predictions = list(getattr(method.objective, "last_predictions", []) or [])
    rows = dm.num_rows(split if split == "dev" else dm.test_split)
    return {**metrics, "split": split, "rows": rows, "data": cfg.name}, predictions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m spt.eval", description=__doc__.split("\n\n")[0].replace("``", "")
    )
    p.add_argument("path", help="a run directory, or a prompt.safetensors artifact")
    p.add_argument("--split", default="dev", help="dev (default) or test")
    p.add_argument("--data", help="a data config name (default: the prompt's own)")
    p.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE")
    p.add_argument("--ckpt", help="a Lightning checkpoint of the same run to evaluate instead")
    p.add_argument("--out", help="write the metrics here as JSON")
    p.add_argument("--predictions", help="text-to-text: write each prediction here (JSONL)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1")
    args = p.parse_args(argv)
    try:
        from spt.core.artifact import atomic_write_text, output_path

        out = output_path(args.out, "--out") if args.out else None
        keep = output_path(args.predictions, "--predictions") if args.predictions else None
        metrics, predictions = evaluate(
            args.path, args.split, args.data, args.set, args.ckpt, args.device
        )
        if out is not None:  # an OSError is an SptError naming the file
            atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
        if keep is not None:
            atomic_write_text(
                keep, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions)
            )
    except Exception as exc:
        return cli_error(exc)
    shown = " | ".join(
        f"{k.split('/', 1)[1]} {v:.4f}"
        for k, v in metrics.items()
        if "/" in k and isinstance(v, float)
    )
    print(f"spt: {metrics['data']} {args.split} ({metrics['rows']} rows): {shown} | {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
