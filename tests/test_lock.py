"""The lock (requirements-lock.txt, written by `make lock`) agrees with pyproject.toml, and the
venv the suite runs in holds exactly the locked versions.

A disagreement is how "a fresh clone installs something else than what was tested" starts:
a dependency added to pyproject.toml but not locked installs at whatever version is newest
that day (issue 17: transformers 5.24 broke T5 prefixes on fresh clones).
"""

from __future__ import annotations

import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as the lock is

REPO = Path(__file__).resolve().parents[1]
PROJECT_MARK = "(pyproject.toml)"


def parse_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """``{name: (version, parents)}`` from uv's annotated output; a parent is a locked package's
    name, ``"<project>"`` for pyproject.toml, or ``-c FILE`` for a constraints file."""
    out: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            current = canonicalize_name(m[1])
            out[current] = (m[2], set())
            continue
        m = re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)
        if current and m and m[1] != "via":
            parent = m[1].strip()
            out[current][1].add(
                "<project>"
                if parent.endswith(PROJECT_MARK)
                else parent
                if parent.startswith("-c ")
                else canonicalize_name(parent)
            )
    return out


def project_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def lock_problems(pyproject: dict, lock: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Every way the two disagree, one line each (empty when they agree)."""
    problems = []
    wanted: dict[str, list[Requirement]] = {}
    for req in project_requirements(pyproject):
        wanted.setdefault(canonicalize_name(req.name), []).append(req)
    for name, reqs in sorted(wanted.items()):
        if name not in lock:
            problems.append(f"{name}: in pyproject.toml, not in the lock")
            continue
        locked = lock[name][0]
        for req in reqs:
            if not req.specifier.contains(Version(locked), prereleases=True):
                problems.append(f"{name}: locked {locked} is outside pyproject's {req}")
    for name, (_, parents) in sorted(lock.items()):
        if "<project>" in parents and name not in wanted:
            problems.append(f"{name}: the lock says pyproject.toml asks for it; it does not")
        if not parents:
            problems.append(f"{name}: locked with no reason (no `# via`)")
        for parent in parents - {"<project>"}:
            if not parent.startswith("-c ") and parent not in lock:
                problems.append(f"{name}: needed by {parent}, which is not locked")
    return problems


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _lock() -> dict:
    return parse_lock((REPO / "requirements-lock.txt").read_text())


def test_lock_agrees_with_pyproject():
    assert lock_problems(_pyproject(), _lock()) == []


def test_the_check_finds_each_kind_of_disagreement():
    pyproject = _pyproject()
    lock = _lock()
    assert lock_problems(pyproject, lock) == []
    pyproject["project"]["dependencies"].append("einops>=0.8")  # added, not locked
    pyproject["project"]["dependencies"].append("transformers<5.24")  # range excludes the pin
    lock["gguf"] = (lock["gguf"][0], {"<project>"})
    pyproject["project"]["dependencies"] = [
        d for d in pyproject["project"]["dependencies"] if not d.startswith("gguf")
    ]  # dropped, still locked
    problems = lock_problems(pyproject, lock)
    assert any(p.startswith("einops: in pyproject.toml, not in the lock") for p in problems)
    assert any(p.startswith("transformers: locked 5.24") and "outside" in p for p in problems)
    assert any(p.startswith("gguf: the lock says pyproject.toml asks") for p in problems)


def test_lock_pins_the_torch_that_setup_installs_first():
    """setup.sh installs the CPU build before the lock; the lock must name the same version,
    or pip would replace it (with a CUDA build of several GB)."""
    setup = (REPO / "scripts" / "setup.sh").read_text()
    wanted = re.search(r'TORCH="\$\{TORCH:-torch==([^}]+)\}"', setup)[1]
    locked = _lock()["torch"][0]
    assert Version(locked).public == wanted and Version(locked).local == "cpu"


def _backbones() -> dict[str, str]:
    lines = (REPO / "requirements-backbones.txt").read_text().splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==\S+", p) for p in pins), pins
    return dict(p.split("==") for p in pins)


def test_the_venv_holds_exactly_the_locked_versions():
    """A venv made before the lock last changed fails here (rerun `make setup`). Under `make
    test-latest` the venv differs from the lock on purpose: the differences are the skip's
    reason instead."""
    stale = []
    expected = {name: v for name, (v, _) in _lock().items()} | _backbones()
    for name, want in sorted(expected.items()):
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "missing"
        if have != want:
            stale.append(f"{name}: installed {have}, locked {want}")
    if os.environ.get("SPT_TEST_LATEST") == "1":
        pytest.skip("make test-latest; not in the lock: " + ("; ".join(stale) or "nothing"))
    assert stale == [], "the venv differs from requirements-lock.txt: run make setup"
