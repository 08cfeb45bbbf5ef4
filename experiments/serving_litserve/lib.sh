# helpers: start a server in its own session (process group), wait for it, stop it
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 SPT_DATA_DIR=${SPT_DATA_DIR:-../shared/data}
PY=${PY:-/tmp/lsvenv/bin/python}  # a copy of .venv with litserve==0.2.19 (not a dependency of spt)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); mkdir -p "$HERE/logs"
RUNS=${RUNS:?"set RUNS to --run sst2=DIR --run rte=DIR --run trec=DIR (three tiny-bert runs)"}
start() {  # start NAME PORT cmd... ; writes NAME.pid (the session leader = group id)
  local name=$1 port=$2; shift 2
  setsid "$@" > $HERE/logs/$name.log 2>&1 &
  echo $! > $HERE/logs/$name.pid
  local t0=$(date +%s.%N)
  for i in $(seq 400); do
    curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:$port/health 2>/dev/null | grep -q 200 && break
    sleep 0.1
  done
  echo "$name ready in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"
}
stop() { local pg=$(cat $HERE/logs/$1.pid); kill -TERM -- -$pg 2>/dev/null; sleep 3; kill -KILL -- -$pg 2>/dev/null; true; }
