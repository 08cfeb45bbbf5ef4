"""Soft-prompt artifacts: round trip, base-model check, corrupt files, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import spt.core.artifact as artifact
from spt.core.artifact import check_base, load_artifact, save_artifact
from spt.errors import SptError
from tests.artifacts import edit_meta

IDENTITY_A = {
    "name": "base-a",
    "arch": "decoder",
    "model_type": "llama",
    "hidden_size": 8,
    "fingerprint": "aaaaaaaaaaaaaaaa",
}
IDENTITY_B = {
    "name": "base-b",
    "arch": "decoder",
    "model_type": "llama",
    "hidden_size": 8,
    "fingerprint": "bbbbbbbbbbbbbbbb",
}


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt": torch.randn(2, 3, 8, generator=g),
        "head.1.weight": torch.randn(2, 8, generator=g),
        "head.1.bias": torch.randn(2, generator=g),
    }


def _meta() -> dict:
    return {
        "method": "prompt",
        "length": 3,
        "n_tasks": 2,
        "task_names": ["t1", "t2"],
        "init": "uniform",
        "base": IDENTITY_A,
    }


def _header(path) -> str | None:
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("spt")


@pytest.fixture
def saved(tmp_path):
    tensors = _tensors()
    path = save_artifact(tmp_path / "p.safetensors", tensors, _meta())
    return path, tensors


# -- round trip ----------------------------------------------------------------------------
def test_round_trip_tensors_and_metadata(saved):
    path, tensors = saved
    loaded, meta = load_artifact(path)
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)
    for k, v in _meta().items():
        assert meta[k] == v
    assert meta["format_version"] == artifact.FORMAT_VERSION
    assert meta["tensors"] == {k: list(v.shape) for k, v in tensors.items()}


def test_json_sibling_equals_header(saved):
    path, _ = saved
    side = path.with_suffix(".json")
    assert side.is_file()
    header = _header(path)
    assert header is not None
    assert json.loads(side.read_text()) == json.loads(header)


def test_header_fallback_without_json(saved):
    path, tensors = saved
    _, with_side = load_artifact(path)
    path.with_suffix(".json").unlink()
    loaded, meta = load_artifact(path)
    assert meta == with_side
    assert torch.equal(loaded["prompt"], tensors["prompt"])


def test_suffix_is_added_and_json_path_accepted(tmp_path):
    path = save_artifact(tmp_path / "noext", _tensors(), _meta())
    assert path == tmp_path / "noext.safetensors"
    assert path.is_file() and (tmp_path / "noext.json").is_file()
    loaded, _ = load_artifact(tmp_path / "noext.json")  # the .json path finds its tensors
    assert torch.equal(loaded["prompt"], _tensors()["prompt"])


@pytest.mark.reliability
def test_missing_file_names_path(tmp_path):
    with pytest.raises(SptError, match="nope.safetensors"):
        load_artifact(tmp_path / "nope.safetensors")


# -- base-model identity -------------------------------------------------------------------
@pytest.mark.reliability
def test_check_base_names_both_identities(tmp_path):
    check_base({"base": IDENTITY_A}, dict(IDENTITY_A), tmp_path / "p.safetensors")  # same: ok
    with pytest.raises(SptError) as err:
        check_base({"base": IDENTITY_A}, IDENTITY_B, tmp_path / "p.safetensors")
    msg = str(err.value)
    for part in ("base-a", "base-b", "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"):
        assert part in msg


@pytest.mark.reliability
def test_check_base_without_base_metadata_refuses(tmp_path):
    with pytest.raises(SptError, match="base-b"):
        check_base({}, IDENTITY_B, tmp_path / "p.safetensors")


# -- corrupt files -------------------------------------------------------------------------
@pytest.mark.reliability
def test_truncated_file(saved):
    path, _ = saved
    data = path.read_bytes()
    for cut in (0, 4, 8, 20, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(SptError):
            load_artifact(path)


@pytest.mark.reliability
def test_random_bytes_file(saved):
    path, _ = saved
    path.write_bytes(os.urandom(300))
    with pytest.raises(SptError):
        load_artifact(path)


@pytest.mark.reliability
def test_empty_file(saved):
    path, _ = saved
    path.write_bytes(b"")
    with pytest.raises(SptError):
        load_artifact(path)


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"a string"', "42", "null", "{not json", ""])
@pytest.mark.reliability
def test_json_sibling_not_an_object(saved, text):
    path, _ = saved
    path.with_suffix(".json").write_text(text)
    with pytest.raises(SptError):
        load_artifact(path)


@pytest.mark.reliability
def test_no_metadata_anywhere(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({"prompt": torch.zeros(1, 2, 3)}, str(path))
    with pytest.raises(SptError, match="no metadata"):
        load_artifact(path)


@pytest.mark.reliability
def test_shape_metadata_mismatch(saved):
    path, _ = saved
    edit_meta(path, lambda meta: meta["tensors"].update(prompt=[2, 4, 8]))
    with pytest.raises(SptError) as err:
        load_artifact(path)
    assert "prompt" in str(err.value) and "[2, 3, 8]" in str(err.value)


@pytest.mark.reliability
def test_shape_metadata_mismatch_in_header(tmp_path):
    # The header copy is checked too when the .json sibling is gone.
    from safetensors.torch import save_file

    meta = {**_meta(), "tensors": {"prompt": [9, 9]}}
    path = tmp_path / "h.safetensors"
    save_file({"prompt": torch.zeros(1, 2, 3)}, str(path), metadata={"spt": json.dumps(meta)})
    with pytest.raises(SptError, match="prompt"):
        load_artifact(path)


@pytest.mark.reliability
def test_json_sibling_not_utf8(saved):
    path, _ = saved
    path.with_suffix(".json").write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(SptError):
        load_artifact(path)


@pytest.mark.parametrize("tensors", [None, "prompt", ["prompt"], {"prompt": 5}])
@pytest.mark.reliability
def test_metadata_tensors_field_of_wrong_type(saved, tensors):
    path, _ = saved
    edit_meta(path, lambda meta: meta.update(tensors=tensors))
    with pytest.raises(SptError):
        load_artifact(path)


@pytest.mark.reliability
def test_a_stale_json_copy_never_mixes_with_new_tensors(saved, caplog):
    """A crash between the two writes leaves an older prompt.json beside the new file: the
    header (written with the tensors, in one rename) wins and the copy is named as ignored;
    a copy that is not JSON at all, or far too large, is refused unread."""
    path, _ = saved
    side = path.with_suffix(".json")
    good = json.loads(side.read_text())
    side.write_text(json.dumps({**good, "method": "prefix", "length": 99}))
    with caplog.at_level("WARNING"):
        _, meta = load_artifact(path)
    assert meta["method"] == good["method"] and meta["length"] == good["length"]
    assert "using the header" in caplog.text
    side.write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json, not a traceback
    with pytest.raises(SptError, match="not valid JSON"):
        load_artifact(path)
    with open(side, "wb") as f:
        f.truncate(17 * 2**20)  # sparse: 17 MB of zeros, refused by its size
    with pytest.raises(SptError, match="past the 16,777,216"):
        load_artifact(path)


_GOOD: dict[str, bytes] = {}


def _good_bytes(tmp_path_factory) -> tuple[bytes, str]:
    if not _GOOD:
        d = tmp_path_factory.mktemp("good")
        p = save_artifact(d / "g.safetensors", _tensors(), _meta())
        _GOOD["st"] = p.read_bytes()
        _GOOD["json"] = p.with_suffix(".json").read_bytes()
    return _GOOD["st"], _GOOD["json"].decode()


_mutation = st.one_of(
    st.tuples(st.just("random"), st.binary(max_size=400)),
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=10_000)),
    st.tuples(
        st.just("flip"),
        st.lists(
            st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=7)),
            min_size=1,
            max_size=4,
        ),
    ),
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutation=_mutation, keep_json=st.booleans())
@pytest.mark.reliability
def test_fuzzed_file_gives_sptError_or_success(tmp_path_factory, mutation, keep_json):
    good, side_text = _good_bytes(tmp_path_factory)
    kind, arg = mutation
    if kind == "random":
        data = arg
    elif kind == "truncate":
        data = good[: arg % (len(good) + 1)]
    else:
        buf = bytearray(good)
        for pos, bit in arg:
            buf[pos % len(buf)] ^= 1 << bit
        data = bytes(buf)
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "f.safetensors"
    path.write_bytes(data)
    if keep_json:
        path.with_suffix(".json").write_text(side_text)
    try:
        tensors, meta = load_artifact(path)
    except SptError:
        return
    assert isinstance(meta, dict) and isinstance(tensors, dict)


# -- atomic writes -------------------------------------------------------------------------
@pytest.mark.reliability
def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = save_artifact(tmp_path / "a.safetensors", _tensors(0), _meta())
    before_st = path.read_bytes()
    before_json = path.with_suffix(".json").read_bytes()
    real_save_file = artifact.save_file

    def crash_mid_write(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a half-written file, then the crash
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(artifact, "save_file", crash_mid_write)
    with pytest.raises(SptError, match=r"cannot write .*a.safetensors: disk full \(simulated\)"):
        save_artifact(path, _tensors(1), {**_meta(), "init": "text"})
    assert path.read_bytes() == before_st
    assert path.with_suffix(".json").read_bytes() == before_json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors"]
    loaded, meta = load_artifact(path)
    assert torch.equal(loaded["prompt"], _tensors(0)["prompt"]) and meta["init"] == "uniform"


@pytest.mark.reliability
def test_a_killed_writers_temp_file_is_cleaned_up(tmp_path):
    """SIGKILL mid-write leaves .a.safetensors.<random>.tmp: the next save of that artifact
    removes it (once older than a minute: a live writer's is left alone)."""
    path = save_artifact(tmp_path / "a.safetensors", _tensors(0), _meta())
    stale, fresh = tmp_path / ".a.safetensors.x1.tmp", tmp_path / ".a.safetensors.x2.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"half")
    os.utime(stale, (1, 1))
    save_artifact(path, _tensors(1), _meta())
    assert not stale.exists() and fresh.exists()
