#!/bin/bash
# Side-by-side load tests: spt's server (port 18731) and LitServe (18732), alternating.
# The server not under test is SIGSTOPped (LitServe idles at ~15% of a core) and resumed after.
cd "$(dirname "$0")" && source lib.sh && mkdir -p results && rm -f results/*
start spt 18731 $PY -m spt.serve http $RUNS --port 18731
start lit 18732 $PY lit_app.py --port 18732 $RUNS
sleep 3
for s in spt lit; do $PY tree.py $(cat logs/$s.pid) 5 > results/$s.start_mem.json; done
port() { [ $1 = spt ] && echo 18731 || echo 18732; }
other() { [ $1 = spt ] && echo lit || echo spt; }
lt() {  # lt SERVER TAG load-test-args...
  local s=$1 tag=$2; shift 2
  kill -STOP -- -$(cat logs/$(other $s).pid)
  $PY -m spt.serve load-test --url http://127.0.0.1:$(port $s) --input rows.jsonl "$@" \
     > results/$s.$tag.json 2> results/$s.$tag.err
  $PY tree.py $(cat logs/$s.pid) > results/$s.$tag.mem.json
  kill -CONT -- -$(cat logs/$(other $s).pid)
  echo "$s $tag rc=$? $(head -c 200 results/$s.$tag.json)"
}
H="--concurrency 8 --requests 200 --hostile 0.25"
lt spt h25a $H; lt lit h25a $H; lt spt h25b $H; lt lit h25b $H
D="--concurrency 8 --duration 10 --hostile 0"
lt spt d10 $D; lt lit d10 $D
curl -s http://127.0.0.1:18731/stats > results/spt.final_stats.json
curl -s http://127.0.0.1:18732/stats > results/lit.final_stats.json
stop spt; stop lit
# LitServe with --isolate (bad requests answered per request, not by raising): one hostile run
start lit_iso 18733 $PY lit_app.py --isolate --port 18733 $RUNS
sleep 2
$PY -m spt.serve load-test --url http://127.0.0.1:18733 --input rows.jsonl $H > results/lit_iso.h25.json 2> results/lit_iso.h25.err
$PY tree.py $(cat logs/lit_iso.pid) > results/lit_iso.h25.mem.json
echo "lit_iso h25 $(head -c 200 results/lit_iso.h25.json)"
stop lit_iso
ps -eo pid,cmd | grep -E "lit_app|spt.serve http" | grep -v grep || echo "no servers left"
