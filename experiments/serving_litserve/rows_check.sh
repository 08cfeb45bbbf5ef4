# rows per forward with 64-row requests (8 clients x 5 requests), spt vs LitServe
cd "$(dirname "$0")" && source lib.sh
for s in spt lit; do
  if [ $s = spt ]; then start spt 18731 $PY -m spt.serve http $RUNS --port 18731; P=18731
  else start lit 18732 $PY lit_app.py --port 18732 $RUNS; P=18732; fi
  $PY -m spt.serve load-test --url http://127.0.0.1:$P --input rows.jsonl --concurrency 8 --requests 5 --rows-per-request 64 > results/$s.rows64.json 2>/dev/null
  curl -s http://127.0.0.1:$P/stats | $PY -c "import json,sys; d=json.load(sys.stdin); print('$s', {k: d.get(k) for k in ('batches','rows','requests','max_rows','max_requests','batch_sizes')})"
  $PY -c "import json; r=json.load(open('results/$s.rows64.json')); print('$s', {k: r[k] for k in ('requests_per_s','rows_per_s','p50_ms','p99_ms','errors','max_score_diff')})"
  stop $s
done
