"""Benchmark: nanodesmo training iterations/s through the labcore runner vs a bare PyTorch loop, and
the self-state's cost over the vanilla model.

    python3 benchmarks/bench_nanodesmo.py             # 300 timed steps after 20 warm-up, 3 interleaved repeats
    python3 benchmarks/bench_nanodesmo.py --steps 100 --repeats 1

The model is nanoGPT's CPU Shakespeare-char GPT (4 layers, 4 heads, 128 wide, block 64, batch 12,
dropout 0), fp32. Variants:
  bare loop, vanilla       a plain loop: random windows, forward, cross-entropy, backward, clip_grad_norm_,
                           AdamW step with nanoGPT's lr schedule (what the runner's step does, nothing else)
  runner, vanilla          `labcore.run` of `nanodesmo.train self_state=vanilla`: Lightning manual
                           optimisation, reaction-log record per step, resume checkpoints every 100
                           steps (atomic), one validation at the end
  runner, self-state       the same with the 32-d self-state (its update MLP, injection, state_effect
                           every 50 steps)
Iterations/s count the steps after the warm-up (a Lightning callback stamps the time at the first timed
step and at the end of training), so start-up (imports, Trainer construction, data) is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

CORPUS_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
TIMES: dict[str, float] = {}


class StepTimer(Callback):
    def __init__(self, warmup: int):
        self.warmup = warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            TIMES["start"] = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        TIMES["end"] = time.perf_counter()


def runner(args, self_state: str) -> float:
    from labcore import run
    from labcore.paths import compose
    with tempfile.TemporaryDirectory() as out:
        cfg = compose("nanodesmo", [f"paths.data_dir={args.data_dir}", f"paths.output_dir={out}",
                                    f"paths.cache_dir={out}/cache", f"self_state={self_state}",
                                    f"train.max_iters={args.warmup + args.steps}",
                                    f"train.eval_interval={args.warmup + args.steps}", "train.warmup_iters=10",
                                    "trainer.enable_progress_bar=false", "logger=none",
                                    "+callbacks.timer._target_=bench_nanodesmo.StepTimer",
                                    f"+callbacks.timer.warmup={args.warmup}"])
        run(cfg)
    import bench_nanodesmo   # the module Hydra imported StepTimer from (this script runs as __main__)
    times = bench_nanodesmo.TIMES
    return args.steps / (times["end"] - times["start"])


def bare_loop(args) -> float:
    import torch.nn.functional as F

    from labcore.datasets.text import CharText
    from labcore.models.gpt import GPTConfig
    from nanodesmo.model import SelfStateConfig, SelfStateGPT
    from nanodesmo.training import lr_at
    data = CharText(os.path.join(args.data_dir, "tinyshakespeare", "input.txt"), block_size=64)
    torch.manual_seed(0)
    model = SelfStateGPT(GPTConfig(vocab_size=data.vocab_size, block_size=64, n_layer=4, n_head=4, d_model=128,
                                   d_mlp=512, act="gelu", dropout=0.0, bias=False), SelfStateConfig(dim=0)).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    total = args.warmup + args.steps
    for step in range(total):
        if step == args.warmup:
            t0 = time.perf_counter()
        x, y = data.batch("train", 12, torch.Generator().manual_seed(step))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, 1e-3, 1e-4, 10, total)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return args.steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=CORPUS_DIR)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # StepTimer by its module name
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, GPT 4L x 128, block 64, batch 12; "
          f"{args.steps} timed steps after {args.warmup}; {args.repeats} interleaved repeats; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    variants = {"bare loop, vanilla": lambda: bare_loop(args), "runner, vanilla": lambda: runner(args, "vanilla"),
                "runner, self-state": lambda: runner(args, "learned")}
    rates = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v, fn in variants.items():
            rates[v].append(fn())
    bare = statistics.median(rates["bare loop, vanilla"])
    vanilla = statistics.median(rates["runner, vanilla"])
    print(f"\n{'variant':>20} | {'it/s':>6} | {'vs bare':>7} | {'vs runner vanilla':>17}  (min-max it/s)")
    for v, rs in rates.items():
        r = statistics.median(rs)
        print(f"{v:>20} | {r:6.1f} | {r / bare:6.1%} | {r / vanilla:16.1%}  ({min(rs):.1f}-{max(rs):.1f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
