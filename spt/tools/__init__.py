"""Tools that read runs or measure spt, apart from the library: benchmarks (bench), run tables and
plots (compare, analysis), W&B run reading (wandb_runs). `python -m spt.bench` (and the other
old module names) still run them."""
