"""The pictures people look at: every image a README embeds exists, and the committed study
plots redraw from the committed CSVs (``experiments/plots.py``)."""

from __future__ import annotations

import re
import subprocess
import sys


def test_every_embedded_image_exists(repo):
    readmes = [repo / "README.md", *sorted((repo / "experiments").glob("*/README.md"))]
    embedded = 0
    for readme in readmes:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme.read_text()):
            assert (readme.parent / target).is_file(), f"{readme}: {target} is missing"
            embedded += 1
    assert embedded >= 10


def test_the_study_plots_redraw_from_their_csvs(repo, tmp_path):
    script = (repo / "experiments" / "plots.py").read_text()
    # redraw into a copy so the committed files are left alone
    copy = tmp_path / "experiments"
    for csv in (repo / "experiments").rglob("*.csv"):
        target = copy / csv.relative_to(repo / "experiments")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(csv.read_bytes())
    for cfg in (repo / "experiments").rglob("config.yaml"):
        target = copy / cfg.relative_to(repo / "experiments")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(cfg.read_bytes())
    (copy / "plots.py").write_text(script)
    r = subprocess.run([sys.executable, str(copy / "plots.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    written = r.stdout.split()
    assert len(written) == 8
    for name in written:
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (repo / name).is_file()
