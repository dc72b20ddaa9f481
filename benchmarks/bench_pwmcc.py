"""Benchmark: chunked PWMCC between two random 32768 x 768 SAE decoders, time and peak memory.

    python3 benchmarks/bench_pwmcc.py                      # chunk sizes 256, 1024, 4096
    python3 benchmarks/bench_pwmcc.py --dense              # also run the naive dense path (~8.5 GiB)
    python3 benchmarks/bench_pwmcc.py --d-sae 65536 --chunk-sizes 1024

How memory is measured. Every configuration runs in a fresh Python subprocess so one run's
allocations cannot hide in another's high-water mark. Inside the worker:

* `process peak` is getrusage(RUSAGE_SELF).ru_maxrss: the peak resident set size of the whole
  process over its lifetime (torch import, the two input dictionaries and the PWMCC call). This is
  the number the acceptance criterion (< 4 GiB) is about.
* `call peak - before` isolates the PWMCC call: after the inputs are built we reset the kernel's
  peak-RSS counter (write "5" to /proc/self/clear_refs, Linux >= 4.0), then read VmHWM after the
  call. The difference from VmRSS just before the call is the extra memory the call needed
  (normalised float32 copies of both dictionaries + the [chunk, F_b] block + reductions).
  If clear_refs is not writable the column reads "n/a" rather than a guessed value.
* `largest block` is the analytic size of the biggest buffer the algorithm allocates:
  chunk * F_b * 4 bytes for the chunked path, F_a * F_b * 4 bytes (C itself) for the dense path.

RSS is what the OS actually gave the process, so it includes allocator slack; it is an honest
upper bound on what the algorithm needs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from proc_status import reset_peak, status_kib  # noqa: E402  (benchmarks/ is on sys.path: the script's directory)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
MIB = 2**20






def worker(mode: str, d_sae: int, d_in: int, chunk_size: int, threads: int) -> dict:
    """Run one measurement in this (fresh) process and return its numbers."""
    sys.path.insert(0, REPO_ROOT)
    import torch

    from sae_lab.consistency import expected_random_max_cos, pwmcc, random_dictionary, unit_directions

    if threads > 0:
        torch.set_num_threads(threads)
    a = random_dictionary(d_sae, d_in, seed=0)
    b = random_dictionary(d_sae, d_in, seed=1)

    can_reset = reset_peak()
    rss_before = status_kib("VmRSS")
    t0 = time.perf_counter()
    if mode == "chunked":
        value = pwmcc(a, b, chunk_size=chunk_size)
        block_bytes = min(chunk_size, d_sae) * d_sae * 4
    else:  # the naive path: materialise the full C = |A B^T|
        with torch.no_grad():
            au, bu = unit_directions(a), unit_directions(b)
            c = (au @ bu.T).abs_()
            value = 0.5 * (c.amax(1).double().mean().item() + c.amax(0).double().mean().item())
            del c
        block_bytes = d_sae * d_sae * 4
    wall = time.perf_counter() - t0
    call_hwm = status_kib("VmHWM") if can_reset else None

    return dict(
        mode=mode,
        chunk_size=chunk_size if mode == "chunked" else d_sae,
        wall_s=wall,
        pwmcc=value,
        analytic=expected_random_max_cos(d_sae, d_in),
        process_peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        call_extra_bytes=(call_hwm - rss_before) * 1024 if call_hwm is not None and rss_before else None,
        block_bytes=block_bytes,
        threads=torch.get_num_threads(),
    )


def run_in_subprocess(mode: str, args: argparse.Namespace, chunk_size: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--d-sae", str(args.d_sae),
           "--d-in", str(args.d_in), "--chunk-size", str(chunk_size), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-sae", type=int, default=32768)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--dense", action="store_true", help="also run the naive dense path (needs ~2x C)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (0 = torch default)")
    p.add_argument("--limit-gib", type=float, default=4.0, help="acceptance bound on process peak")
    p.add_argument("--worker", choices=["chunked", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.d_sae, args.d_in, args.chunk_size, args.threads)))
        return

    f, d = args.d_sae, args.d_in
    print(f"PWMCC of two random dictionaries, d_sae={f}, d_in={d} (float32 inputs: "
          f"{fmt_bytes(f * d * 4)} each), fresh subprocess per row\n")
    rows = [run_in_subprocess("chunked", args, cs) for cs in args.chunk_sizes]
    if args.dense:
        rows.append(run_in_subprocess("dense", args, f))

    header = f"{'path':<8} {'chunk':>6} {'wall_s':>7} {'pwmcc':>8} {'largest block':>14} " \
             f"{'call peak - before':>19} {'process peak':>13} {'< limit':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ok = r["process_peak_bytes"] < args.limit_gib * GIB
        print(f"{r['mode']:<8} {r['chunk_size']:>6} {r['wall_s']:>7.2f} {r['pwmcc']:>8.5f} "
              f"{fmt_bytes(r['block_bytes']):>14} {fmt_bytes(r['call_extra_bytes']):>19} "
              f"{fmt_bytes(r['process_peak_bytes']):>13} {'yes' if ok else 'NO':>8}")
    if not args.dense:
        # C alone is a lower bound on the dense path's need: it can fail the limit, not pass it.
        dense_verdict = "NO" if f * f * 4 >= args.limit_gib * GIB else "?"
        print(f"{'dense':<8} {f:>6} {'-':>7} {'-':>8} {fmt_bytes(f * f * 4):>14} "
              f"{'>= ' + fmt_bytes(f * f * 4):>19} {'-':>13} {dense_verdict:>8}   (estimate: C alone; --dense runs it)")
    print(f"\nanalytic random max|cos| order sqrt(2 ln(2F)/d) = {rows[0]['analytic']:.5f}; "
          f"torch threads = {rows[0]['threads']}; limit = {args.limit_gib} GiB")
    failed = [r for r in rows if r["mode"] == "chunked" and r["process_peak_bytes"] >= args.limit_gib * GIB]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
