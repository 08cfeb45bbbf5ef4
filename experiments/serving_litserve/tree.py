"""tree.py PID [idle_s]: RSS/PSS/peak summed over PID's process tree, and CPU seconds used over idle_s."""
import json, sys, time
import psutil

def procs(pid):
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]

def mem(pid):
    rss = pss = hwm = 0; n = 0
    for p in procs(pid):
        try:
            mi = p.memory_full_info()
            with open(f"/proc/{p.pid}/status") as f:
                hwm += next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) * 1024
        except (psutil.Error, OSError):
            continue
        rss += mi.rss; pss += mi.pss; n += 1
    return {"procs": n, "rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1), "peak_rss_mb": round(hwm / 2**20, 1)}

def cpu(pid):
    t = 0.0
    for p in procs(pid):
        try:
            c = p.cpu_times(); t += c.user + c.system
        except psutil.Error:
            pass
    return t

pid = int(sys.argv[1]); out = mem(pid)
if len(sys.argv) > 2:
    s = float(sys.argv[2]); c0 = cpu(pid); time.sleep(s); out["idle_cpu_pct"] = round(100 * (cpu(pid) - c0) / s, 1)
print(json.dumps(out))
