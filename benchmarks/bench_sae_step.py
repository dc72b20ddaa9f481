"""Benchmark: one full TopK SAE training step, fast (sparse) path vs the dense reference.

    python3 benchmarks/bench_sae_step.py                 # both shapes, speed + memory
    python3 benchmarks/bench_sae_step.py --quick         # small shape only, fewer repeats
    python3 benchmarks/bench_sae_step.py --dead-frac 0.05 --no-memory

A step is what training does per batch: forward, loss (FVU + AuxK when dead latents exist),
backward, projection of the decoder gradient, Adam step, zero_grad, decoder normalisation and
dead-latent bookkeeping. The batch is a fixed in-memory tensor (no data loading is timed).

Speed. `TopKSAE(fast=True)` and `TopKSAE(fast=False)` start from identical parameters. Repeats are
interleaved (fast, dense, GEMM, fast, dense, GEMM, ...) so load from other processes hits all
variants alike; each figure is the median over repeats of the mean step time within a repeat.
`GEMM` is the encoder forward alone, `torch.mm(x_c, W_enc, out=...)` into a preallocated output:
work any TopK step must do (top-k needs every pre-activation), so B / its time is an upper bound
on the tokens/s of any implementation of the step here.

Dead latents. `--dead-frac f` pins a fixed random f * d_sae latents as dead before every step (a
steady state with AuxK active); the default 0 is the start of training (AuxK skipped: no dead
latents yet).

Memory. Each (shape, path) runs in a fresh subprocess. Once parameters, optimiser and batch exist
the kernel's peak-RSS counter is reset (writing 5 to /proc/self/clear_refs) and three steps run;
`step peak` is VmHWM after them minus VmRSS before them: the extra resident memory training
needs on top of parameters and batch. It includes Adam's two moment buffers and the gradients,
which are the same for both paths (the Adam column gives the moments' size), plus each path's
transient working set. RSS includes allocator slack, so it is an upper bound. torch has no CPU allocator statistics and tracemalloc does not see torch's
allocations, which is why RSS is used. If clear_refs is not writable the column reads n/a.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from labcore.fit import native_bf16_matmul  # noqa: E402
from sae_lab.sae import TopKSAE, build_sae  # noqa: E402
from proc_status import reset_peak, status_kib  # noqa: E402  (benchmarks/ is on sys.path: the script's directory)

SHAPES = {  # name: (d_in, d_sae, k, batch)
    "512/4096": (512, 4096, 32, 4096),
    "768/24576": (768, 24576, 32, 4096),
}
MIB = 2 ** 20


def make_batch(d_in: int, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d_in, generator=g)
    return torch.randn(batch, d_in, generator=g) * 0.5 + mean  # off-centre, so b_dec matters


def make_trainer(d_in: int, d_sae: int, k: int, x: torch.Tensor, fast: bool, dead_frac: float,
                 fused_adam: bool, arch: str = "topk", bf16: bool = False):
    """(sae, step) where step() runs one training step on x; bf16: under CPU/CUDA bf16 autocast, as
    `trainer.precision=bf16-mixed` runs it (fp32 parameters, Adam and decoder normalisation)."""
    torch.manual_seed(0)  # same init for both paths
    # Matryoshka's nested prefixes: its config's default (fractions of d_sae)
    sae = build_sae(arch, d_in, d_sae, k=k, fast=fast, prefixes=[0.0625, 0.25, 1.0])
    sae.init_b_dec(x)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=fused_adam)
    n_dead = int(dead_frac * d_sae)
    dead = torch.randperm(d_sae, generator=torch.Generator().manual_seed(1))[:n_dead]
    if n_dead == 0:
        sae.dead_after_tokens = 2 ** 62  # nothing may become dead while we time

    def step():
        if n_dead:
            sae.tokens_since_fired[dead] = sae.dead_after_tokens
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = sae(x)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.normalize_decoder()
        sae.update_dead_tracking(out.fired, x.shape[0])

    return sae, step


def make_gemm(sae: TopKSAE, x: torch.Tensor, dtype: torch.dtype = torch.float32):
    x_c = (x - sae.b_dec).detach().to(dtype)
    W = sae.W_enc.detach().to(dtype)  # the parameter's stored layout (.to keeps the strides)
    out = torch.empty(x.shape[0], W.shape[1], dtype=dtype)
    return lambda: torch.mm(x_c, W, out=out)


def interleaved(variants: dict, repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each variant in each repeat, the variants taking turns (fast, dense, ...,
    fast, dense, ...) so load from other processes hits all alike; after two warm-up steps each
    (Adam state, allocator, MKL/oneDNN kernels)."""
    for fn in variants.values():
        fn(), fn()
    per_step = {v: [] for v in variants}
    for _ in range(repeats):
        for v, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            per_step[v].append((time.perf_counter() - t0) / steps)
    return per_step


def time_shape(name: str, repeats: int, steps: int, dead_frac: float, fused_adam: bool) -> dict:
    d_in, d_sae, k, batch = SHAPES[name]
    x = make_batch(d_in, batch)
    fast_sae, fast_step = make_trainer(d_in, d_sae, k, x, True, dead_frac, fused_adam)
    _, dense_step = make_trainer(d_in, d_sae, k, x, False, dead_frac, fused_adam)
    variants = {"fast": fast_step, "dense": dense_step, "gemm": make_gemm(fast_sae, x)}
    per_step = interleaved(variants, repeats, steps)
    med = {v: statistics.median(ts) for v, ts in per_step.items()}
    return {"batch": batch, "ms": {v: 1e3 * t for v, t in med.items()},
            "tok_s": {v: batch / t for v, t in med.items()},
            "spread": {v: (1e3 * min(ts), 1e3 * max(ts)) for v, ts in per_step.items()},
            "dead": int(dead_frac * d_sae)}


def time_architectures(name: str, repeats: int, steps: int, dead_frac: float, fused_adam: bool,
                       bf16: bool = True) -> dict:
    """fp32 vs bf16 autocast of the TopK fast path, BatchTopK / Matryoshka fast vs dense, and the
    encoder GEMM alone in fp32 and bf16 (what bf16 can speed up on this CPU), interleaved.
    bf16=False leaves the bf16 variants out."""
    d_in, d_sae, k, batch = SHAPES[name]
    x = make_batch(d_in, batch)
    sae, fp32_step = make_trainer(d_in, d_sae, k, x, True, dead_frac, fused_adam)

    def trainer(arch: str, fast: bool = True, autocast_bf16: bool = False):
        return make_trainer(d_in, d_sae, k, x, fast, dead_frac, fused_adam, arch=arch, bf16=autocast_bf16)[1]

    variants = {
        "topk fast fp32": fp32_step,
        "batchtopk fast": trainer("batchtopk"),
        "batchtopk dense": trainer("batchtopk", fast=False),
        "matryoshka fast": trainer("matryoshka"),
        "matryoshka dense": trainer("matryoshka", fast=False),
        "GEMM fp32": make_gemm(sae, x),
    }
    if bf16:
        variants.update({"topk fast bf16": trainer("topk", autocast_bf16=True),
                         "batchtopk fast bf16": trainer("batchtopk", autocast_bf16=True),
                         "GEMM bf16": make_gemm(sae, x, torch.bfloat16)})
    return {v: 1e3 * statistics.median(ts) for v, ts in interleaved(variants, repeats, steps).items()}


# ---- memory: one subprocess per (shape, path) -------------------------------------------------


def memory_worker(name: str, fast: bool, dead_frac: float, fused_adam: bool, steps: int) -> dict:
    d_in, d_sae, k, batch = SHAPES[name]
    x = make_batch(d_in, batch)
    sae, step = make_trainer(d_in, d_sae, k, x, fast, dead_frac, fused_adam)
    before = status_kib("VmRSS")  # parameters and batch exist; no step has run yet
    resettable = reset_peak()
    for _ in range(steps):
        step()
    peak = status_kib("VmHWM")
    return {"before_mib": before / 1024 if before else None,
            "step_peak_mib": (peak - before) / 1024 if resettable and peak and before else None,
            "adam_state_mib": 2 * sum(p.numel() * p.element_size() for p in sae.parameters()) / MIB}


def measure_memory(name: str, fast: bool, dead_frac: float, fused_adam: bool, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", name, "--threads", str(threads),
           "--dead-frac", str(dead_frac), "--path", "fast" if fast else "dense"]
    if not fused_adam:
        cmd.append("--plain-adam")
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt_mib(v) -> str:
    return "n/a" if v is None else f"{v:8.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="steps per repeat")
    p.add_argument("--quick", action="store_true", help="512/4096 only, 3 repeats of 2 steps")
    p.add_argument("--dead-frac", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--plain-adam", action="store_true", help="torch.optim.Adam default (not fused)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--architectures", action="store_true",
                   help="also time bf16 autocast and the BatchTopK / Matryoshka fast paths (first shape)")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    p.add_argument("--path", choices=["fast", "dense"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fused = not args.plain_adam

    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.path == "fast", args.dead_frac, fused, 3)))
        return
    if args.quick:
        args.shapes, args.repeats, args.steps = ["512/4096"], 3, 2

    print(f"torch {torch.__version__}, {args.threads} threads, fp32, Adam fused={fused}, "
          f"dead-frac {args.dead_frac}, {args.repeats} interleaved repeats x {args.steps} steps, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'d_in/d_sae':>10} {'k':>3} {'batch':>5} {'dead':>5} | {'fast ms':>8} {'dense ms':>8} {'GEMM ms':>8}"
          f" | {'fast tok/s':>10} {'dense tok/s':>11} {'GEMM bound':>10} | {'fast/dense':>10} {'fast/bound':>10}")
    for name in args.shapes:
        r = time_shape(name, args.repeats, args.steps, args.dead_frac, fused)
        d_in, d_sae, k, batch = SHAPES[name]
        ms, ts = r["ms"], r["tok_s"]
        print(f"{name:>10} {k:>3} {batch:>5} {r['dead']:>5} | {ms['fast']:8.1f} {ms['dense']:8.1f} {ms['gemm']:8.1f}"
              f" | {ts['fast']:10.0f} {ts['dense']:11.0f} {ts['gemm']:10.0f}"
              f" | {ts['fast'] / ts['dense']:9.2f}x {ts['fast'] / ts['gemm']:9.0%}", flush=True)
        spread = ", ".join(f"{v} {lo:.1f}-{hi:.1f}" for v, (lo, hi) in r["spread"].items())
        print(f"{'':>10}     (per-step ms over repeats, min-max: {spread})", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    if args.architectures:
        name = args.shapes[0]
        bf16 = native_bf16_matmul("cpu")
        if not bf16:  # a scalar fallback: timing it would take hours and measure nothing of ours
            print(f"\nbf16 variants left out: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 matrix"
                  " kernels in torch (oneDNN needs AVX-512 or Arm bf16); bf16 products run ~1 GFLOP/s here")
        ms = time_architectures(name, args.repeats, args.steps, args.dead_frac, fused, bf16)
        batch = SHAPES[name][3]
        print(f"\n{name}, k {SHAPES[name][2]}, batch {batch}: ms per step (tok/s)")
        for v, t in ms.items():
            print(f"  {v:>20} {t:8.1f} ms ({batch / t * 1e3:8.0f} tok/s)")
        print(f"  BatchTopK fast / dense: {ms['batchtopk dense'] / ms['batchtopk fast']:.2f}x;"
              f" Matryoshka fast / dense: {ms['matryoshka dense'] / ms['matryoshka fast']:.2f}x;"
              f" TopK fast / GEMM bound: {ms['GEMM fp32'] / ms['topk fast fp32']:.0%}")
        if bf16:
            print(f"  bf16 / fp32 (TopK fast): {ms['topk fast fp32'] / ms['topk fast bf16']:.2f}x;"
                  f" BatchTopK bf16 / fp32: {ms['batchtopk fast'] / ms['batchtopk fast bf16']:.2f}x")
            rest = ms["topk fast fp32"] - ms["GEMM fp32"]  # all but the encoder GEMM, at fp32
            print(f"  the encoder GEMM alone, bf16 / fp32: {ms['GEMM fp32'] / ms['GEMM bf16']:.2f}x (what bf16 can"
                  f" speed up); the rest of the fp32 step: {rest:.1f} ms; bf16 / fp32 if only the GEMM changed:"
                  f" {ms['topk fast fp32'] / (ms['GEMM bf16'] + rest):.2f}x")
        print(f"load average after: {os.getloadavg()[0]:.2f}")

    if args.no_memory:
        return
    print(f"\n{'d_in/d_sae':>10} {'path':>5} | {'RSS before MiB':>14} {'step peak MiB':>13} {'of which Adam':>13}")
    for name in args.shapes:
        for fast in (True, False):
            m = measure_memory(name, fast, args.dead_frac, fused, args.threads)
            print(f"{name:>10} {'fast' if fast else 'dense':>5} | {_fmt_mib(m['before_mib']):>14} "
                  f"{_fmt_mib(m['step_peak_mib']):>13} {_fmt_mib(m['adam_state_mib']):>13}", flush=True)


if __name__ == "__main__":
    main()
