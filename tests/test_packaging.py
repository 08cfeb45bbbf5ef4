"""spt works as an installed wheel, not only as an editable checkout: the Hydra configs ship
inside the package, and the `spt` console command is installed (issue 17)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from spt import CONF_DIR
from spt.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        cmd,
        cwd=cwd,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from a copy of the checkout, installed into a new venv whose other
    packages come from this venv (a .pth line), so no download is needed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "spt", src / "spt", ignore=shutil.ignore_patterns("__pycache__"))
    r = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        cwd=tmp,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("*.whl")
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    r = _run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp
    )
    assert r.returncode == 0, r.stderr[-3000:]
    site = _run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp
    ).stdout.strip()
    (Path(site) / "_spt_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, venv, tmp


def test_the_wheel_ships_every_config(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"spt/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert len(configs) > 50 and configs <= names, sorted(configs - names)[:5]
    assert wheel.name.startswith("spt_softprompt-")  # the distribution name; `import spt` stays


def test_installed_spt_composes_its_config_outside_the_checkout(installed):
    _, venv, tmp = installed
    r = _run([str(venv / "bin" / "python"), "-c", "import spt; print(spt.__file__)"], cwd=tmp)
    assert r.stdout.strip().startswith(str(venv)), r.stdout  # the installed copy, not REPO
    for cmd in (
        [str(venv / "bin" / "python"), "-m", "spt.run"],
        [str(venv / "bin" / "spt"), "run"],
    ):
        r = _run([*cmd, "--cfg", "job", "method=prefix", "model=tiny-t5"], cwd=tmp)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "_target_: spt.methods.prefix.PrefixTuning" in r.stdout
        assert "family: t5" in r.stdout


def test_console_command_lists_the_tools(installed):
    _, venv, tmp = installed
    r = _run([str(venv / "bin" / "spt"), "--help"], cwd=tmp)
    assert r.returncode == 0 and all(name in r.stdout for name in COMMANDS)


def test_console_command_refuses_an_unknown_tool(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spt: error: unknown command 'trian'")
    assert main([]) == 2 and "usage: spt COMMAND" in capsys.readouterr().out


def test_console_command_runs_a_tool(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out


def test_the_local_override_is_never_committed(repo):
    """spt/conf/local/default.yaml (a machine's own overrides) is ignored by git; the folder's
    .gitignore once held a pattern that matched nothing."""
    if not (repo / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    for name in ("default.yaml", "cluster.yaml"):
        r = subprocess.run(["git", "check-ignore", "-q", f"spt/conf/local/{name}"], cwd=repo)
        assert r.returncode == 0, f"spt/conf/local/{name} is not ignored"
    r = subprocess.run(["git", "check-ignore", "-q", "spt/conf/local/.gitignore"], cwd=repo)
    assert r.returncode == 1, "the .gitignore itself must stay tracked"
