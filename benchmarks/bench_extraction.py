"""Benchmark: activation extraction, `model.run_with_cache(x, names=[...])` vs a bare `model(x)`.

    python3 benchmarks/bench_extraction.py              # 6 layers, d_model 384, block 256, batch 32
    python3 benchmarks/bench_extraction.py --quick      # 3 repeats

The model is a randomly initialised labcore GPT in eval mode under torch.no_grad(), as SAE
activation extraction runs it. Variants are interleaved (bare, one hook, every resid_post, bare,
...) so load from other processes hits them alike; each figure is the median over repeats.
Caching stores references (no copy), so the target is >= 90% of the bare forward's tokens/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from labcore.models.gpt import GPT, GPTConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--layer", type=int, default=3, help="the single hooked block's resid_post")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="3 repeats")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.block, n_layer=args.n_layer, n_head=args.n_head,
                    d_model=args.d_model, d_mlp=4 * args.d_model)
    model = GPT(cfg).eval()
    x = torch.randint(0, args.vocab, (args.batch, args.block))
    one = [f"blocks.{args.layer}.hook_resid_post"]
    every = [f"blocks.{i}.hook_resid_post" for i in range(args.n_layer)]
    variants = {
        "bare model(x)": lambda: model(x),
        f"run_with_cache({one[0]})": lambda: model.run_with_cache(x, names=one),
        f"run_with_cache(all {args.n_layer} resid_post)": lambda: model.run_with_cache(x, names=every),
    }
    times = {v: [] for v in variants}
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names=one)
        assert cache[one[0]].shape == (args.batch, args.block, args.d_model)
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(repeats):
            for v, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[v].append(time.perf_counter() - t0)

    tokens = args.batch * args.block
    bare = statistics.median(times["bare model(x)"])
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, GPT {args.n_layer}L d_model {args.d_model} "
          f"block {args.block} batch {args.batch} vocab {args.vocab}, eval + no_grad, {repeats} interleaved repeats, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'variant':>40} | {'ms':>8} {'tokens/s':>9} | {'vs bare':>7}  (min-max ms)")
    for v, ts in times.items():
        t = statistics.median(ts)
        print(f"{v:>40} | {1e3 * t:8.1f} {tokens / t:9.0f} | {bare / t:6.1%}  ({1e3 * min(ts):.1f}-{1e3 * max(ts):.1f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
