"""Step 2: one SAE per layer on the shared extraction, one job per layer (`layer=`), so one sweep
`'layer=range(N)'` fans the layers out over any launcher (a SLURM job array with submitit).

A share `train.val_frac` (10%) of the samples, drawn with `features.split_seed`, is held out: the
SAE follows its validation FVU there (early stopping, `callbacks.early_stopping`) and is evaluated
on it. The SAE is saved in SAELens' format in `<job dir>/sae`, where the analysis step reads it.
"""

from __future__ import annotations

import numpy as np

from labcore.task import TrainingTask
from labcore.validate import ConfigError, fraction, positive_int, positive_number, seed_value
from sae_lab.features import common
from sae_lab.architectures import validate_sae_config


def validation_samples(n_samples: int, val_frac: float, seed: int) -> np.ndarray:
    """The held-out sample ids (sorted), the same for every layer."""
    rng = np.random.default_rng(seed)
    n_val = max(1, round(n_samples * val_frac))
    return np.sort(rng.permutation(n_samples)[:n_val])


class LayerSAETask(TrainingTask):
    def validate(self) -> None:
        cfg = self.cfg
        self.spec = common.model_spec(cfg)
        self.layer = common.layer(cfg, self.spec.layout().n_layers)
        validate_sae_config(cfg)
        positive_number(cfg, "train.lr")
        positive_int(cfg, "train.batch_size")
        positive_int(cfg, "train.eval_batch_size")
        self.val_frac = fraction(cfg, "train.val_frac")
        self.split_seed = seed_value(cfg, "features.split_seed")
        self.extraction = common.extraction_dir(cfg)

    def prepare(self) -> None:
        from labcore.activations import NonFiniteActivationsError
        from labcore.layer_extraction import load_layer, load_rows, read_extraction
        meta = read_extraction(self.extraction)
        if self.layer not in meta["layers"]:
            raise ConfigError("layer", f"{self.extraction} has layers {meta['layers']}, not {self.layer}")
        bad = meta["non_finite"][str(self.layer)]
        if bad["values"]:
            raise NonFiniteActivationsError(
                f"{self.extraction}: layer {self.layer} has {bad['values']} non-finite values (NaN/Inf) in "
                f"{bad['rows']} of {meta['rows']} rows; refusing to train on them")
        self.meta = meta
        acts = load_layer(self.extraction, self.layer)
        val = np.isin(load_rows(self.extraction)["sample"], validation_samples(meta["samples"], self.val_frac,
                                                                              self.split_seed))
        self.train_acts = np.ascontiguousarray(acts[~val], dtype=np.float32)
        self.val_acts = np.ascontiguousarray(acts[val], dtype=np.float32)
        self.manifest.add_input("extraction", meta["key"]["data"])

    def build(self):
        import torch
        from hydra.utils import instantiate

        from labcore.data import ArrayDataModule
        from sae_lab.training import SAETraining
        cfg = self.cfg
        sae = instantiate(cfg.sae, d_in=self.meta["d_model"])
        sae.init_b_dec(torch.as_tensor(self.train_acts[: cfg.train.batch_size]))
        module = SAETraining(sae, lr=cfg.train.lr, betas=cfg.train.betas, warmup_steps=cfg.train.warmup_steps,
                             dense_threshold=cfg.eval.dense_threshold)
        return module, ArrayDataModule(self.train_acts, self.val_acts, cfg.train.batch_size,
                                       cfg.train.eval_batch_size, seed=cfg.seed)

    def analyse(self) -> dict[str, float]:
        import torch

        from labcore.layer_extraction import resid_hook
        from labcore.steplog import read_step_log
        from sae_lab import figures
        from sae_lab.evaluate import reconstruction_metrics
        from sae_lab.saelens_io import save_sae
        sae = self.module.sae.eval()
        recon, freq = reconstruction_metrics(sae, torch.as_tensor(self.val_acts).split(self.cfg.train.eval_batch_size),
                                             self.cfg.eval.dense_threshold)
        save_sae(sae, self.output_dir / "sae", hook_name=resid_hook(self.layer), model_name=self.meta["model"],
                 extra_metadata={"layer": self.layer, "seed": self.cfg.seed})
        self.manifest.add_output("sae", self.output_dir / "sae")
        title = f"layer {self.layer}: {sae.architecture} d_sae={sae.d_sae}"
        figures.training_curves(read_step_log(self.step_log_path), self.figures_dir / "training_curves.png", title)
        figures.latent_density(freq.numpy(), self.figures_dir / "latent_density.png", title)
        return {"layer": float(self.layer), **recon, "train_steps": float(self.trainer.global_step),
                "epochs": float(self.trainer.current_epoch), "n_train": float(len(self.train_acts)),
                "n_val": float(len(self.val_acts))}

    def summary(self, metrics):
        keys = ["layer", "explained_variance", "l0", "dead_fraction_eval", "dense_fraction", "train_steps",
                "epochs", "wall_time_s"]
        return [(k, metrics[k]) for k in keys if k in metrics]
