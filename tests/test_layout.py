"""The code's shape (issue 19): what differs between architectures lives in spt/backbones/, and
nothing outside it branches on the architecture's name or probes model classes instead. (The
import contracts are pyproject.toml's [tool.importlinter], checked by `make lint`.)"""

from __future__ import annotations

import re

from spt import CONF_DIR

SPT = CONF_DIR.parent
ARCH_CHECK = re.compile(r"arch *(==|!=|in)")  # the grep: arch == / != / in
PROBE = re.compile(
    r"isinstance\([^)]*(PreTrainedModel|Model|ForCausalLM|ForConditionalGeneration"
    r"|T5|Bert|Llama|CLIP)\b|hasattr\((self\.)?(backbone|model|base)\b"
)
MAX_ARCH_CHECKS = 5  # the target; 41 before the redesign


def _lines(pattern: re.Pattern) -> list[str]:
    hits = []
    for path in sorted(SPT.rglob("*")):
        if path.suffix not in (".py", ".yaml") or "backbones" in path.relative_to(SPT).parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(SPT.parent)}:{i}: {line.strip()}")
    return hits


def test_architecture_checks_stay_in_backbones():
    hits = _lines(ARCH_CHECK)
    assert len(hits) <= MAX_ARCH_CHECKS, "\n".join(hits)


def test_no_model_class_probes_outside_backbones():
    assert _lines(PROBE) == []
