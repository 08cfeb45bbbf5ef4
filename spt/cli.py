"""The ``spt`` console command: one entry point for the tools, as ``git`` or ``litgpt`` have.

``spt run method=prefix model=tiny-t5`` is ``python -m spt.run method=prefix model=tiny-t5``
(Hydra overrides, ``-m`` sweeps); ``spt generate|serve|compare|analysis|bench|peft ARGS`` run the other
tools with their own flags. A tool's module is imported only when its command is chosen, so
``spt --help`` answers without importing torch.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line summary)
COMMANDS = {
    "run": ("spt.run", "train and evaluate one job, or sweep with -m (Hydra overrides)"),
    "eval": ("spt.eval", "score a trained prompt on a dev or test split (a run or artifact)"),
    "generate": ("spt.generate", "generate text with a trained prompt (a run or artifact)"),
    "serve": ("spt.serve.cli", "score many trained prompts on one backbone (library, HTTP server)"),
    "compare": ("spt.tools.compare", "compare finished runs: a table of metrics and settings"),
    "analysis": ("spt.tools.analysis", "plots and tables of a study's runs"),
    "bench": ("spt.tools.bench", "speed and memory benchmarks, measured side by side"),
    "peft": ("spt.interop.peft", "export a trained prompt to Hugging Face PEFT, or import one"),
}


def usage() -> str:
    lines = ["usage: spt COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`spt COMMAND --help` shows a command's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"spt: error: unknown command {name!r}: choose one of {', '.join(COMMANDS)} "
            "(spt --help)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "run":  # a Hydra app reads its overrides from sys.argv
        sys.argv = [f"{sys.argv[0]} run", *rest]
        module.cli()
        return 0
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
