"""``python -m spt.generate RUN_OR_ARTIFACT --text ... | --input rows.jsonl``: generate text
with a trained prompt from the command line (:func:`spt.load` + ``generate``).

Writes one JSON object per input, ``{"task", "input", "output"}``, to stdout or ``--out``
(written whole at the end, atomically). An input line of ``--input`` is a JSON string, or an
object of the template's fields (``{"table": "name : The Eagle | food : French"}``), or
``{"input": <either>}``; E2E meaning representations (``name[The Eagle], food[French]``) are
linearised as in training.
"""

from __future__ import annotations

import argparse
import json
import sys

from spt.errors import SptError, cli_error


def _read_inputs(path: str) -> list:
    from spt.data.readers import read_jsonl  # spt.data imports torch: not for --help

    rows = []
    for n, row in read_jsonl(path, "write one string or object per line"):
        if isinstance(row, dict) and set(row) == {"input"}:
            row = row["input"]
        if not isinstance(row, (str, dict)):
            raise SptError(
                f"{path} line {n} is a JSON {type(row).__name__}: write a string, or an "
                "object of the template's fields"
            )
        rows.append(row)
    if not rows:
        raise SptError(f"{path} holds no inputs")
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spt.generate",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    p.add_argument("path", help="a run directory, or its prompt.safetensors")
    src = p.add_argument_group("inputs (one of)")
    src.add_argument("--text", action="append", default=[], help="an input text (repeatable)")
    src.add_argument("--input", help="a JSONL file of inputs ('-' reads stdin)")
    p.add_argument("--task", help="which task of a multi-task prompt (a name or a row index)")
    p.add_argument("--out", help="write the JSONL here instead of stdout")
    dec = p.add_argument_group("decoding")
    dec.add_argument("--max-new-tokens", type=int, help="default: the task's, else 32")
    dec.add_argument("--num-beams", type=int, help="beam search width (default: the task's)")
    dec.add_argument("--do-sample", action="store_true", help="sample instead of searching")
    dec.add_argument("--temperature", type=float, default=1.0)
    dec.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    dec.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
    dec.add_argument("--seed", type=int, help="makes sampling repeatable")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if bool(args.text) == bool(args.input):
            raise SptError("give the inputs with --text TEXT (repeatable) or --input FILE.jsonl")
        if args.batch_size < 1:
            raise SptError(f"--batch-size={args.batch_size} must be >= 1")
        inputs = list(args.text) if args.text else _read_inputs(args.input)
        import spt
        from spt.core.artifact import atomic_write_text, output_path

        out = output_path(args.out, "--out") if args.out else None

        task = int(args.task) if args.task and args.task.isdigit() else args.task  # a row index
        model = spt.load(args.path, device=args.device)
        outputs = model.generate(
            inputs,
            task=task,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        name = model.tasks[model._task(task)] if task is not None else model.tasks[0]
        lines = "".join(
            json.dumps({"task": name, "input": x, "output": y}, ensure_ascii=False) + "\n"
            for x, y in zip(inputs, outputs, strict=True)
        )
        if out is not None:
            atomic_write_text(out, lines)  # an OSError is an SptError naming the file
        else:
            sys.stdout.write(lines)
    except Exception as exc:
        return cli_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
