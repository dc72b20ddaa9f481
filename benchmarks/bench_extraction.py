"""Benchmark: streaming extraction of many hooks into memory-mapped .npy files vs a bare forward.

    python3 benchmarks/bench_extraction.py              # 6 layers, d_model 384, block 256, batch 32
    python3 benchmarks/bench_extraction.py --quick      # 3 repeats; memory at 64 and 640 sequences
    python3 benchmarks/bench_extraction.py --memory-seqs    # speed only

Speed. A randomly initialised labcore GPT (vocab 4096, d_mlp 4*d_model) in eval mode under
torch.no_grad(), over `--seqs` sequences in batches of `--batch`:
  bare             `model(x)` for every batch, nothing kept
  stream           `extract_to_dir(model, tokens, <every blocks.{l}.hook_resid_post>, tmp)`: one forward
                   per batch writing all positions of every hook, float32, into .npy memmaps; the
                   forward stops after the last block's hook (ln_f and the unembedding are skipped)
  stream, full fwd the same with early_exit=False, so the forward does all the bare one does
Each variant writes into a fresh temporary directory (deleted untimed). Variants are interleaved
(bare, stream, full, bare, ...) so load from other processes hits them alike; figures are medians.

Memory. `stream` runs in a fresh subprocess per dataset size (`--memory-seqs`, default 256 and
2560). Once model and tokens exist, the kernel's peak-RSS counter is reset (5 > /proc/self/clear_refs)
and the extraction runs; `peak - before` is VmHWM after it minus VmRSS before it: what extraction
adds to the process, which must not grow with the dataset. The workers run with glibc's
MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB: by default glibc raises that threshold as large blocks are
freed and then keeps up to ~200 MiB of freed batch tensors in its heap, by chance of timing, which
made repeated runs of one size differ by more than the sizes did.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from labcore.activations import extract_to_dir  # noqa: E402
from labcore.models.gpt import GPT, GPTConfig  # noqa: E402
from proc_status import reset_peak, status_kib  # noqa: E402  (benchmarks/ is on sys.path: the script's directory)

MIB = 2 ** 20


def make_model(args) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.block, n_layer=args.n_layer, n_head=args.n_head,
                    d_model=args.d_model, d_mlp=4 * args.d_model)
    return GPT(cfg).eval()


def make_tokens(args, n: int) -> torch.Tensor:
    return torch.randint(0, args.vocab, (n, args.block), generator=torch.Generator().manual_seed(1))


def every_resid_post(args) -> list[str]:
    return [f"blocks.{i}.hook_resid_post" for i in range(args.n_layer)]


def stream(model, tokens, args, early_exit: bool = True) -> dict:
    out = tempfile.mkdtemp(prefix="bench_extraction.", dir=args.tmp)
    try:
        t0 = time.perf_counter()
        meta = extract_to_dir(model, tokens, every_resid_post(args), out, batch_size=args.batch,
                              early_exit=early_exit, progress=False)
        elapsed = time.perf_counter() - t0
        written = sum(os.path.getsize(os.path.join(out, h["file"])) for h in meta["hooks"].values())
        return {"s": elapsed, "written": written}
    finally:
        shutil.rmtree(out)


# ---- speed -------------------------------------------------------------------------------------
def measure_speed(args, repeats: int) -> dict:
    model, tokens = make_model(args), make_tokens(args, args.seqs)

    @torch.no_grad()
    def bare() -> dict:
        t0 = time.perf_counter()
        for start in range(0, len(tokens), args.batch):
            model(tokens[start:start + args.batch])
        return {"s": time.perf_counter() - t0, "written": 0}

    variants = {"bare model(x)": bare,
                f"stream {args.n_layer} hooks": lambda: stream(model, tokens, args),
                f"stream {args.n_layer} hooks, full fwd": lambda: stream(model, tokens, args, early_exit=False)}
    for fn in variants.values():  # warm-up
        fn()
    runs = {v: [] for v in variants}
    for _ in range(repeats):
        for v, fn in variants.items():
            runs[v].append(fn())
    return runs


# ---- memory: one subprocess per dataset size ------------------------------------------------------


def memory_worker(args, n: int) -> dict:
    model, tokens = make_model(args), make_tokens(args, n)
    with torch.no_grad():  # first-touch allocations of a forward, so they are not counted below
        model(tokens[:args.batch])
    before = status_kib("VmRSS")
    resettable = reset_peak()
    run = stream(model, tokens, args)
    peak = status_kib("VmHWM")
    return {"seqs": n, "s": run["s"], "written_mib": run["written"] / MIB, "before_mib": before / 1024,
            "peak_mib": peak / 1024, "extra_mib": (peak - before) / 1024 if resettable else None}


def measure_memory(args, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", str(n), "--threads", str(args.threads),
           "--n-layer", str(args.n_layer), "--d-model", str(args.d_model), "--n-head", str(args.n_head),
           "--block", str(args.block), "--batch", str(args.batch), "--vocab", str(args.vocab)]
    if args.tmp:
        cmd += ["--tmp", args.tmp]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seqs", type=int, default=64, help="sequences per timed run")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--memory-seqs", type=int, nargs="*", default=[256, 2560],
                   help="dataset sizes for the peak-RSS runs (none: skip)")
    p.add_argument("--quick", action="store_true", help="3 repeats; memory at a quarter of the sizes")
    p.add_argument("--tmp", default=None, help="where the .npy files go (default: the system temp dir)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args, args.memory_worker)))
        return
    repeats = 3 if args.quick else args.repeats
    memory_seqs = [n // 4 for n in args.memory_seqs] if args.quick else args.memory_seqs

    print(f"torch {torch.__version__}, {args.threads} threads, fp32, GPT {args.n_layer}L d_model {args.d_model} "
          f"block {args.block} batch {args.batch} vocab {args.vocab}, eval + no_grad; "
          f"{args.seqs} sequences per run, {repeats} interleaved repeats; load average before: {os.getloadavg()[0]:.2f}")
    runs = measure_speed(args, repeats)
    tokens = args.seqs * args.block
    bare = statistics.median(r["s"] for r in runs["bare model(x)"])
    print(f"{'variant':>28} | {'s/run':>7} {'tokens/s':>9} {'written MiB':>11} | {'vs bare':>7}  (min-max s)")
    for v, rs in runs.items():
        ts = [r["s"] for r in rs]
        t = statistics.median(ts)
        print(f"{v:>28} | {t:7.2f} {tokens / t:9.0f} {rs[0]['written'] / MIB:11.0f} | {bare / t:6.1%}  "
              f"({min(ts):.2f}-{max(ts):.2f})")
    print(f"load average after speed: {os.getloadavg()[0]:.2f}")

    if memory_seqs:
        print(f"\nPeak RSS of `stream` ({args.n_layer} hooks, all positions, float32), one subprocess per size:")
        print(f"{'sequences':>9} | {'written MiB':>11} {'s':>7} | {'RSS before MiB':>14} {'VmHWM MiB':>9} "
              f"{'peak - before MiB':>17}")
        rows = [measure_memory(args, n) for n in memory_seqs]
        for r in rows:
            extra = "n/a" if r["extra_mib"] is None else f"{r['extra_mib']:17.0f}"
            print(f"{r['seqs']:>9} | {r['written_mib']:11.0f} {r['s']:7.1f} | {r['before_mib']:14.0f} "
                  f"{r['peak_mib']:9.0f} {extra:>17}")
        if len(rows) > 1 and all(r["extra_mib"] for r in rows):
            print(f"peak - before, {rows[-1]['seqs']} vs {rows[0]['seqs']} sequences "
                  f"({rows[-1]['written_mib'] / rows[0]['written_mib']:.0f}x the data): "
                  f"{rows[-1]['extra_mib'] / rows[0]['extra_mib']:.2f}x")
        print(f"load average after memory: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
