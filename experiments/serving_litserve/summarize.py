import json, glob
print("| run | req/s (good 200s) | p50 ms | p99 ms | good failed | failed_by | hostile_misanswered | hostile_cut_off | max_score_diff | rows/batch mean | batches | /stats rss after | /stats peak | tree RSS after (PSS) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for tag in ["spt.h25a","lit.h25a","spt.h25b","lit.h25b","spt.d10","lit.d10","lit_iso.h25"]:
    r = json.load(open(f"results/{tag}.json")); m = json.load(open(f"results/{tag}.mem.json"))
    print(f"| {tag} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']}/{r['good_requests']} | {r['failed_by']} | {r['hostile_misanswered']} | {r['hostile_cut_off']} | {r['max_score_diff']:.2g} | {r['rows_per_batch_mean']:.2f} | {r['batches']} | {r['rss_mb_after']} | {r['peak_rss_mb']} | {m['rss_mb']} ({m['pss_mb']}) |")
for s in ["spt","lit"]:
    print(s, "start", open(f"results/{s}.start_mem.json").read().strip())
for s in ["spt","lit"]:
    st = json.load(open(f"results/{s}.final_stats.json")); st.pop("limits"); print(s, "final /stats", json.dumps(st)[:600])
