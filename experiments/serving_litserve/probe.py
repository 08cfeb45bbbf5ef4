"""Single-connection probes of a server: each case's status and whether the SAME keep-alive
connection still serves a good request afterwards.

    python probe.py URL [--debug]   (--debug: the server has the __raise__/__sleep__ hooks)
"""

import http.client
import json
import socket
import sys
import threading
import time
from urllib.parse import urlparse

from spt.serve.loadtest import HOSTILE_KINDS, hostile_body

url = urlparse(sys.argv[1])
debug = "--debug" in sys.argv
HOST, PORT = url.hostname, url.port
GOOD = {"rows": [{"task": "sst2", "text": {"sentence": "a gem"}}]}
H = {"content-type": "application/json"}


def conn():
    c = http.client.HTTPConnection(HOST, PORT, timeout=15)
    c.connect()
    c.auto_open = 0  # never reconnect silently: a closed connection shows as an error
    return c


def post(c, body, chunked=False, headers=None):
    t0 = time.perf_counter()
    hdr = {**H, **(headers or {})}
    try:
        if chunked:
            c.request("POST", "/predict", body=iter([body]), headers=hdr, encode_chunked=True)
        else:
            c.request("POST", "/predict", body=body, headers=hdr)
        r = c.getresponse()
        data = r.read()
        return r.status, r.getheader("connection"), data[:160], time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, None, b"", time.perf_counter() - t0


def case(name, body, **kw):
    c = conn()
    status, connhdr, data, dt = post(c, body, **kw)
    after = post(c, json.dumps(GOOD).encode())[0]
    c.close()
    print(json.dumps({"case": name, "status": status, "connection_header": connhdr,
                      "next_good_on_same_conn": after, "s": round(dt, 3),
                      "body": data.decode("utf-8", "replace")}))


c = conn()
c.request("GET", "/stats")
limits = json.loads(c.getresponse().read())["limits"]
c.close()
row = GOOD["rows"][0]
case("good", json.dumps(GOOD).encode())
for kind in HOSTILE_KINDS:
    case(kind, hostile_body(kind, row, limits), chunked=(kind == "chunked-body"))
case("invalid-utf8-bytes", b'{"rows": [{"task": "sst2", "text": {"sentence": "a\xff\xfeb"}}]}')
case("empty-rows", b'{"rows": []}')
case("huge-json-number", b'{"rows": [{"task": "sst2", "text": {"sentence": 1' + b"0" * 5000 + b"}}]}")

# a Content-Length far past the limit, headers sent but no body: is it refused up front?
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: 1000000000\r\n\r\n")
t0 = time.perf_counter()
try:
    got = s.recv(200).split(b"\r\n")[0].decode()
except Exception as e:  # noqa: BLE001
    got = type(e).__name__
print(json.dumps({"case": "declared-1GB-no-body", "first_line": got, "s": round(time.perf_counter() - t0, 2)}))
s.close()

if debug:
    case("predict-raises", json.dumps({"rows": [{"task": "sst2", "text": {"sentence": "__raise__"}}]}).encode())
    # a predict raising while other good requests share its forward
    res = {}

    def send(i, text):
        c = conn()
        res[i] = post(c, json.dumps({"rows": [{"task": "sst2", "text": {"sentence": text}}]}).encode())[0]
        c.close()

    for rnd in range(3):
        ts = [threading.Thread(target=send, args=(i, "__raise__" if i == 0 else f"fine {i}")) for i in range(6)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(json.dumps({"case": f"raise-with-5-good-concurrent (round {rnd})", "statuses": [res[i] for i in range(6)]}))
    # slow predict (server started with timeout 2 s, sleep 5 s) and one good request behind it
    res.clear()
    t_start = time.perf_counter()
    times = {}

    def send_t(i, text, delay):
        time.sleep(delay)
        t0 = time.perf_counter()
        c = conn()
        res[i] = post(c, json.dumps({"rows": [{"task": "sst2", "text": {"sentence": text}}]}).encode())[0]
        times[i] = round(time.perf_counter() - t0, 2)
        c.close()

    ts = [threading.Thread(target=send_t, args=(0, "__sleep__", 0)),
          threading.Thread(target=send_t, args=(1, "queued behind", 0.3))]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(json.dumps({"case": "slow-predict 5s, timeout 2s", "slow": [res[0], times[0]], "queued_good": [res[1], times[1]]}))
