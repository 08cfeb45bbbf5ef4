"""Multi-prompt serving (spt.serve): prompts of several runs on one tiny backbone score a mixed
batch exactly as each run scores its rows alone; bad runs and rows are refused by name; the
HTTP server answers, merges concurrent requests into one forward and survives a load test."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from spt.api import PromptModel
from spt.build import build
from spt.errors import SptError
from spt.serve import PromptServer, create_app, load_test, main
from tests.artifacts import edit_meta
from tests.test_run import _compose, run_dirs, spt_run

pytestmark = pytest.mark.usefixtures("one_thread")

N_ROWS = 3  # dev rows per task in the mixed batch


def _fake_run(root: Path, name: str, *overrides: str, seed: int = 0) -> Path:
    """A run directory as spt.run writes it (config.yaml with model/data/method, and the
    self-describing artifact), from an untrained method whose trainable weights are randomised so that every
    task's prompt visibly matters; seconds instead of a training run."""
    cfg = _compose(*overrides, f"seed={seed}", "data.dev_limit=8", "data.train_limit=16")
    _, dm, method = build(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in method.trainable_named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    run = root / name
    PromptModel(method, dm.formats, data=cfg.data.name).save(run / "prompt.safetensors")
    resolved = {
        k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "method")
    }
    (run / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    return run


def _alone(run: Path, n: int) -> list[tuple[dict, list[float]]]:
    """The run's own method (its config, ``method.init=file``) scoring each of its first
    ``n`` dev rows in a batch of one: (the row as served, its scores)."""
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.method.init = "file"
    cfg.method.init_file = str(run / "prompt.safetensors")
    _, dm, method = build(cfg)
    method.eval()
    raw, encoded = dm._rows("dev"), dm._dataset("dev")
    out = []
    with torch.no_grad():
        for i in range(n):
            scores = method(dm._collator()([encoded[i]]))[0].tolist()
            row = {"text": {f: raw.texts[f][i] for f in dm.text_fields}}
            out.append((row, scores))
    return out


@pytest.fixture(scope="module")
def bert_runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """tiny-bert: a real spt.run (prompt, sst2) plus in-process runs of other tasks and
    methods: prompt on trec (6 classes, same table as sst2), ptuning on sst2 (another prompt
    length: a second table), prefix on rte and ptuning_v2 (CLS pooling) on cb."""
    root = tmp_path_factory.mktemp("bert")
    r = spt_run(
        "model=tiny-bert",
        "data=sst2",
        "debug=fast",
        "logger=csv",
        out=root / "real",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (real,) = run_dirs(root / "real")
    return {
        "sst2": real,
        "trec": _fake_run(root, "trec", "model=tiny-bert", "data=trec", seed=1),
        "sst2_pt": _fake_run(
            root, "sst2_pt", "model=tiny-bert", "data=sst2", "method=ptuning", seed=2
        ),
        "rte": _fake_run(root, "rte", "model=tiny-bert", "data=rte", "method=prefix", seed=3),
        "cb": _fake_run(root, "cb", "model=tiny-bert", "data=cb", "method=ptuning_v2", seed=4),
    }


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """tiny-llama: prompt on sst2 and rte (two-token label word), prefix on sst2, DePT on
    sst2 and rte (one stacked table of prompts and embedding updates), adaption prompts on sst2
    and Prefix-Tuning+ on rte (hooks on the shared backbone's attention, each inactive for the
    other groups)."""
    root = tmp_path_factory.mktemp("llama")
    return {
        "sst2": _fake_run(root, "sst2", "model=tiny-llama", "data=sst2", seed=5),
        "rte": _fake_run(root, "rte", "model=tiny-llama", "data=rte", seed=6),
        "sst2_prefix": _fake_run(
            root, "sst2_prefix", "model=tiny-llama", "data=sst2", "method=prefix", seed=7
        ),
        "sst2_dept": _fake_run(
            root, "sst2_dept", "model=tiny-llama", "data=sst2", "method=dept", seed=11
        ),
        "rte_dept": _fake_run(
            root, "rte_dept", "model=tiny-llama", "data=rte", "method=dept", seed=12
        ),
        "sst2_adapt": _fake_run(
            root, "sst2_adapt", "model=tiny-llama", "data=sst2", "method=adaption_prompt", seed=13
        ),
        "rte_pplus": _fake_run(
            root, "rte_pplus", "model=tiny-llama", "data=rte", "method=prefix_plus", seed=14
        ),
    }


@pytest.fixture(scope="module")
def t5_runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """tiny-t5: prompt on sst2 and trec, prefix (with cross-attention prefixes) on rte."""
    root = tmp_path_factory.mktemp("t5")
    return {
        "sst2": _fake_run(root, "sst2", "model=tiny-t5", "data=sst2", seed=8),
        "trec": _fake_run(root, "trec", "model=tiny-t5", "data=trec", seed=9),
        "rte": _fake_run(
            root,
            "rte",
            "model=tiny-t5",
            "data=rte",
            "method=prefix",
            "method.cross_attention=true",
            seed=10,
        ),
    }


@pytest.fixture(scope="module")
def bert_server(bert_runs) -> PromptServer:
    return PromptServer.from_runs(bert_runs)


def _mixed_rows(runs: dict[str, Path]) -> tuple[list[dict], list[list[float]]]:
    """Rows of every task, interleaved, with each row's scores from its own run alone."""
    per_task = {name: _alone(run, N_ROWS) for name, run in runs.items()}
    rows, expected = [], []
    for i in range(N_ROWS):
        for name, alone in per_task.items():
            row, scores = alone[i]
            rows.append({"task": name, **row})
            expected.append(scores)
    return rows, expected


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_mixed_batch_equals_each_run_alone(family, request):
    runs = request.getfixturevalue(f"{family}_runs")
    server = (
        request.getfixturevalue("bert_server") if family == "bert" else PromptServer.from_runs(runs)
    )
    rows, expected = _mixed_rows(runs)
    forwards = []
    for group in server._groups:
        group.module.register_forward_hook(lambda m, a, o: forwards.append(len(o)))
    preds = server.predict(rows)
    # one forward per prompt table, each serving all of its tasks' rows
    assert sorted(forwards) == sorted(N_ROWS * len(g.tasks) for g in server._groups)
    assert len(server._groups) == {"bert": 4, "llama": 5, "t5": 2}[family]
    for row, pred, want in zip(rows, preds, expected, strict=True):
        labels = server.tasks[row["task"]]["labels"]
        assert pred["task"] == row["task"] and list(pred["scores"]) == labels
        got = torch.tensor(list(pred["scores"].values()))
        torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)
        assert pred["label"] == labels[int(torch.tensor(want).argmax())]
    assert {p["task"] for p in preds} == set(runs)


def test_task_names_default_to_the_data(bert_runs):
    server = PromptServer.from_runs([bert_runs["sst2"], bert_runs["rte"]])
    assert set(server.tasks) == {"sst2", "rte"}
    assert server.tasks["rte"]["fields"] == ["premise", "hypothesis"]
    assert server.describe()["backbone"] == "tiny-bert"


@pytest.mark.reliability
def test_refusals(bert_runs, llama_runs, bert_server, tmp_path):
    with pytest.raises(SptError, match=r"tiny-llama.*tiny-bert|tiny-bert.*tiny-llama"):
        PromptServer.from_runs([bert_runs["sst2"], llama_runs["rte"]])
    with pytest.raises(SptError, match=r"task name\(s\) \['sst2'\].*name each run"):
        PromptServer.from_runs([bert_runs["sst2"], bert_runs["sst2_pt"]])
    with pytest.raises(SptError, match="unknown task 'nope'.*'rte', 'sst2'"):
        bert_server.predict([{"task": "nope", "text": {"sentence": "x"}}])
    with pytest.raises(
        SptError,
        match=r"row 1: task 'rte' needs text field\(s\) "
        r"\['hypothesis'\].*Premise: \{premise\}",
    ):
        bert_server.predict(
            [
                {"task": "sst2", "text": {"sentence": "fine"}},
                {"task": "rte", "text": {"premise": "p"}},
            ]
        )
    with pytest.raises(SptError, match="must be strings"):
        bert_server.predict([{"task": "sst2", "text": {"sentence": 3}}])
    with pytest.raises(SptError, match="has no prompt.safetensors"):
        PromptServer.from_runs([tmp_path])
    # a method the server does not serve, and a text-to-text run (their metadata edited)
    for edit, message in (
        (
            {"method": "cpt"},
            "method=cpt.*serves method=adaption_prompt, dept, mpt, prefix, prefix_plus, prompt",
        ),
        ({"task_kind": "text-to-text"}, "text-to-text run"),
    ):
        run = tmp_path / next(iter(edit.values()))
        shutil.copytree(bert_runs["trec"], run)
        edit_meta(run / "prompt.safetensors", lambda meta, edit=edit: meta.update(edit))
        with pytest.raises(SptError, match=message):
            PromptServer.from_runs({"x": run})


@pytest.mark.reliability
def test_a_run_directory_runs_no_code_it_names(bert_runs, tmp_path):
    """Issue 21: a downloaded run directory is as safe as a downloaded artifact. A config.yaml
    whose model is ``{_target_: builtins.exec, ...}`` (or torch.load of a pickle) is never
    instantiated: the server reads the artifact's plain values only; an artifact that names
    a loader outside spt's table is refused by name."""
    run = tmp_path / "evil"
    shutil.copytree(bert_runs["trec"], run)
    marker = tmp_path / "pwned"
    (run / "config.yaml").write_text(
        "model:\n  _target_: builtins.exec\n"
        f"  _args_: [\"open({str(marker)!r}, 'w').write('x')\"]\n"
        "data: {_target_: builtins.exec, _args_: ['1']}\nmethod: {_target_: builtins.exec}\n"
    )
    server = PromptServer.from_runs({"trec": run})
    assert (
        not marker.exists()
        and server.predict([{"task": "trec", "text": {"question": "who?"}}])[0]["label"]
    )
    edit_meta(run / "prompt.safetensors", lambda m: m.update(backbone={"loader": "builtins.exec"}))
    with pytest.raises(SptError, match="not one of spt's loaders"):
        PromptServer.from_runs({"trec": run})
    assert not marker.exists()


@pytest.mark.reliability
def test_refuses_another_fingerprint_of_the_same_name(bert_runs, tmp_path, data_dir):
    other = _fake_run(tmp_path, "seed1", "model=tiny-bert", "model.seed=1", "data=rte")
    with pytest.raises(
        SptError,
        match=r"'tiny-bert' \(fingerprint \w+\) but .* 'tiny-bert' "
        r"\(fingerprint \w+\)",
    ):
        PromptServer.from_runs({"sst2": bert_runs["sst2"], "rte": other})


def test_cli_predict(bert_runs, tmp_path, capsys):
    rows = [
        {"task": "sst2", "text": {"sentence": "a gem"}},
        {"task": "rte", "text": {"premise": "a cat sat", "hypothesis": "an animal sat"}},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(
        [
            "predict",
            "--run",
            f"sst2={bert_runs['sst2']}",
            "--run",
            str(bert_runs["rte"]),
            "--input",
            str(path),
            "--batch-size",
            "1",
        ]
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [p["task"] for p in out] == ["sst2", "rte"]
    path.write_text(json.dumps({"task": "sst2", "text": {}}) + "\n")
    assert main(["predict", "--run", str(bert_runs["sst2"]), "--input", str(path)]) == 2
    assert "needs text field(s) ['sentence']" in capsys.readouterr().err


def test_the_readmes_curl_command_works(bert_server, repo):
    """The README's ``curl`` example, as written (its headers and body), answers 200; without
    its JSON content type FastAPI refuses the body (the README once lacked it)."""
    import shlex

    from fastapi.testclient import TestClient

    text = (repo / "README.md").read_text()
    start = text.index("curl -s localhost:8000/predict")
    args = shlex.split(text[start : text.index("```", start)])
    headers = dict(args[i + 1].split(": ", 1) for i, a in enumerate(args) if a == "-H")
    body = args[args.index("-d") + 1]
    with TestClient(create_app(bert_server, max_batch=8, max_wait_ms=1)) as client:
        r = client.post("/predict", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert [p["task"] for p in r.json()["predictions"]] == ["sst2", "rte"]
        form = {"Content-Type": "application/x-www-form-urlencoded"}  # curl -d's default
        assert client.post("/predict", content=body, headers=form).status_code == 422


def test_http_endpoints(bert_server):
    from fastapi.testclient import TestClient

    with TestClient(create_app(bert_server, max_batch=8, max_wait_ms=1)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["backbone"] == "tiny-bert"
        assert set(health["tasks"]) == {"sst2", "trec", "sst2_pt", "rte", "cb"}
        rows = [
            {"task": "sst2", "text": {"sentence": "a gem"}},
            {"task": "trec", "text": {"question": "Who wrote it?"}},
        ]
        r = client.post("/predict", json={"rows": rows})
        assert r.status_code == 200
        assert r.json()["predictions"] == bert_server.predict(rows)
        assert client.get("/stats").json()["rows"] == 2
        bad = [
            ({"rows": [{"task": "nope", "text": {"sentence": "x"}}]}, 400, "unknown task"),
            ({"rows": [{"task": "rte", "text": {"premise": "x"}}]}, 400, "hypothesis"),
            ({"rows": [{"task": "sst2"}]}, 422, "text"),
            ({"rows": [{"task": "sst2", "text": {"sentence": 1}}]}, 422, "string"),
            ({"items": []}, 422, "rows"),
        ]
        for body, status, needle in bad:
            r = client.post("/predict", json=body)
            assert r.status_code == status and needle in json.dumps(r.json()), r.text
        r = client.post(
            "/predict", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and "JSON" in r.text
        assert client.post("/predict", json={"rows": []}).json() == {"predictions": []}


@pytest.fixture
def live_server(bert_server):
    """uvicorn on a free local port in a background thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(bert_server, max_batch=32, max_wait_ms=20)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_dynamic_batching_and_load_test(live_server):
    rows = [
        {"task": "sst2", "text": {"sentence": "a gem of a film"}},
        {"task": "rte", "text": {"premise": "A cat sat.", "hypothesis": "An animal sat."}},
        {"task": "trec", "text": {"question": "Where is Rome?"}},
        {"task": "cb", "text": {"premise": "It rained.", "hypothesis": "It was dry."}},
    ]
    result = load_test(live_server, rows, concurrency=8, duration_s=2.0)
    print("load test:", json.dumps(result))
    assert result["errors"] == 0 and result["requests"] > 8
    assert result["rows_per_batch_mean"] > 1, "concurrent requests were not merged"
    assert result["p50_ms"] <= result["p99_ms"]


@pytest.mark.reliability
def test_hostile_requests_mixed_into_the_load_cost_no_good_request(live_server):
    """Issue 21: 8 clients, a quarter of their requests hostile (every kind: a lone
    surrogate, bad and 100,000-deep JSON, the wrong shape, an unknown task, a missing field,
    one row past --max-rows, a field past --max-chars, a declared and a chunked body past
    --max-body-bytes). Every good request is answered, with the answer its row gets alone;
    every hostile one gets its own 4xx; the server reports its memory."""
    from spt.serve.loadtest import HOSTILE_KINDS

    rows = [
        {"task": "sst2", "text": {"sentence": "a gem of a film"}},
        {"task": "rte", "text": {"premise": "A cat sat.", "hypothesis": "An animal sat."}},
        {"task": "trec", "text": {"question": "Where is Rome?"}},
    ]
    result = load_test(live_server, rows, concurrency=8, requests_per_client=40, hostile=0.25)
    print("hostile load test:", json.dumps(result))
    assert result["good_requests"] == 240 and result["errors"] == 0, result["failed_by"]
    assert result["max_score_diff"] <= 1e-5
    assert set(result["hostile_by_kind"]) == set(HOSTILE_KINDS)
    assert result["hostile_misanswered"] == {} and result["hostile_cut_off"] == {}
    assert result["peak_rss_mb"] > 0 and result["rss_mb_after"] > 0


@pytest.mark.reliability
def test_batcher_merges_caps_and_isolates_failures():
    """Requests queued together share one predict call up to max_batch rows (the overflow
    opens the next batch), and a failing request does not fail the others merged with it."""
    import asyncio

    from spt.serve import Batcher

    calls = []

    def predict(rows):
        calls.append(len(rows))
        if "bad" in rows:
            raise ValueError("bad row")
        return [r.upper() for r in rows]

    async def scenario():
        batcher = Batcher(predict, max_batch=4, max_wait_ms=50)
        await batcher.start()
        try:
            ok = await asyncio.gather(
                *(batcher.submit(r) for r in (["a", "b"], ["c"], ["d"], ["e", "f"]))
            )
            mixed = await asyncio.gather(
                batcher.submit(["g"]), batcher.submit(["bad"]), return_exceptions=True
            )
        finally:
            await batcher.stop()
        return ok, mixed, batcher.stats()

    ok, mixed, stats = asyncio.run(scenario())
    assert ok == [["A", "B"], ["C"], ["D"], ["E", "F"]]
    assert calls[:2] == [4, 2]  # 2 + 1 + 1 rows, then the carried request of 2
    assert mixed[0] == ["G"] and isinstance(mixed[1], ValueError)
    assert stats["batches"] == 3 and stats["rows"] == 7 and stats["max_rows"] == 4

    async def deadline():  # a request past its deadline while queued is never run
        import time

        batcher = Batcher(lambda rows: time.sleep(0.3) or predict(rows), max_wait_ms=0)
        await batcher.start()
        try:
            slow = asyncio.ensure_future(batcher.submit(["slow"]))
            await asyncio.sleep(0.05)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(batcher.submit(["late"]), timeout=0.05)
            await slow
            await asyncio.sleep(0.05)
        finally:
            await batcher.stop()

    calls.clear()
    asyncio.run(deadline())
    assert calls == [1], calls  # "slow" alone
    with pytest.raises(SptError, match="max_batch"):
        Batcher(predict, max_batch=0)


LIMITS = {"max_body_bytes": 2_000, "max_rows": 3, "max_chars": 50, "timeout_s": 5}
NEEDLES = {  # what each answer must name, beside its status (spt.serve.loadtest.EXPECTED)
    "surrogate": "lone surrogate",
    "not-json": "JSON decode error",
    "deep-json": "",  # 400 past the recursion limit, 422 (not an object) within it
    "wrong-shape": "valid list",
    "unknown-task": "no-such-task",
    "missing-field": "sentence",
    "too-many-rows": "--max-rows",
    "long-field": "--max-chars",
    "big-body": "--max-body-bytes",
    "chunked-body": "--max-body-bytes",
}


@pytest.fixture(scope="module")
def limited_client(bert_server):
    from fastapi.testclient import TestClient

    from spt.serve.http import Limits

    app = create_app(bert_server, max_batch=8, max_wait_ms=1, limits=Limits(**LIMITS))
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("kind", sorted(NEEDLES))
@pytest.mark.reliability
def test_each_hostile_request_gets_its_4xx_and_the_next_good_one_its_answer(limited_client, kind):
    """The server's bad-input table (issue 21): each kind the load test mixes in, sized from
    the server's limits, gets the status spt.serve.loadtest.EXPECTED names and a message
    naming the problem (no 500), and a good request after it is answered."""
    from spt.serve.loadtest import EXPECTED, HOSTILE_KINDS, hostile_body

    assert set(NEEDLES) == set(HOSTILE_KINDS)
    good = {"task": "sst2", "text": {"sentence": "a gem"}}
    body = hostile_body(kind, good, LIMITS)
    headers = {"content-type": "application/json"}
    if kind == "chunked-body":
        r = limited_client.post("/predict", content=iter([body]), headers=headers)
    else:
        r = limited_client.post("/predict", content=body, headers=headers)
    assert r.status_code in EXPECTED[kind] and NEEDLES[kind] in r.text, (r.status_code, r.text)
    assert limited_client.post("/predict", json={"rows": [good]}).status_code == 200


@pytest.mark.reliability
def test_health_hides_paths_and_a_slow_request_is_504(bert_server, limited_client):
    """/health names tasks without run paths unless ?detail=1; a request past --timeout-s
    is 504."""
    from fastapi.testclient import TestClient

    from spt.serve.http import Limits

    good = {"rows": [{"task": "sst2", "text": {"sentence": "a gem"}}]}
    health = limited_client.get("/health").json()
    assert "run" not in health["tasks"]["sst2"] and "labels" in health["tasks"]["sst2"]
    assert "run" in limited_client.get("/health", params={"detail": 1}).json()["tasks"]["sst2"]

    def slow(rows):
        import time

        time.sleep(1.0)
        return bert_server.predict(rows)

    quick = Limits(timeout_s=0.2)
    app = create_app(bert_server, max_batch=8, max_wait_ms=1, limits=quick)
    app.state.batcher.predict = slow
    with TestClient(app) as c:
        r = c.post("/predict", json=good)
        assert r.status_code == 504 and "--timeout-s" in r.text


@pytest.mark.reliability
def test_a_5mb_text_is_cut_before_tokenising(bert_server):
    """The library server cuts each field to 64 x max_length characters before the tokenizer
    sees it: the same prediction as the text's head, in milliseconds."""
    import time

    head = "a gripping, funny film " * 100
    rows = [{"task": "sst2", "text": {"sentence": head + "x" * 5_000_000}}]
    start = time.perf_counter()
    got = bert_server.predict(rows)
    assert time.perf_counter() - start < 5
    assert got == bert_server.predict([{"task": "sst2", "text": {"sentence": head}}])


@pytest.mark.reliability
def test_a_bad_request_never_costs_the_connection(live_server):
    """On one keep-alive connection: a lone surrogate (422), then a good request, which is
    answered on the same connection. A chunked body (no Content-Length) is served within
    --max-body-bytes and refused with a 413, not a reset, past it."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(live_server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    good = json.dumps({"rows": [{"task": "sst2", "text": {"sentence": "a gem"}}]})
    bad = '{"rows": [{"task": "sst2", "text": {"sentence": "a\\ud800b"}}]}'
    conn.request("POST", "/predict", body=bad, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 422 and b"lone surrogate" in r.read()
    conn.request("POST", "/predict", body=good, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and b"predictions" in r.read()
    conn.close()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(f"{len(good):x}\r\n{good}\r\n0\r\n\r\n".encode())
    r = conn.getresponse()
    assert r.status == 200 and b"predictions" in r.read()  # chunked, within the limit
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(3):  # 1.5 MB, past the 1 MB default
        conn.send(f"{500_000:x}\r\n".encode() + b" " * 500_000 + b"\r\n")
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    assert r.status == 413 and b"--max-body-bytes" in r.read()
    conn.close()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=3)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**9))  # declared, never sent: answered at once
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and b"1000000000 bytes" in r.read()
    conn.close()
