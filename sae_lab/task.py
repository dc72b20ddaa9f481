"""The SAE training job: base model (cached) -> activations (cached) -> SAE fit -> evaluation.

`python -m sae_lab.train` runs this task through `labcore.run`. The base model and the activation
store are content-addressed under `paths.cache_dir`, so a sweep over SAE settings and seeds trains
the base model once and extracts activations once.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from labcore.task import TrainingTask
from labcore.validate import (ConfigError, adam_betas, checkpoint_file, existing_path, fraction, get,
                              instantiate_or_explain, number_in, optional, positive_int, positive_number, require,
                              seed_value)
from sae_lab.architectures import validate_sae_config


class SAETrainTask(TrainingTask):
    # ---- validation: cheap, before any compute ------------------------------------------------
    def validate(self) -> None:
        cfg = self.cfg
        validate_sae_config(cfg)  # the architecture's own keys (sae_lab.architectures)
        positive_number(cfg, "train.lr")
        adam_betas(cfg, "train.betas")
        positive_int(cfg, "train.batch_size")
        positive_int(cfg, "train.eval_batch_size")
        positive_int(cfg, "trainer.max_epochs")
        number_in(cfg, "eval.dense_threshold", 0, 1)
        positive_int(cfg, "activations.batch_size")
        positive_int(cfg, "dataset.p")
        fraction(cfg, "dataset.train_frac")
        seed_value(cfg, "dataset.split_seed")
        seed_value(cfg, "base_model.seed")
        positive_number(cfg, "base_model.lr")
        adam_betas(cfg, "base_model.betas")
        positive_int(cfg, "base_model.max_epochs")
        positive_int(cfg, "base_model.batch_size")
        optional(lambda c, k: number_in(c, k, 0, 1), cfg, "base_model.target_val_acc")
        optional(positive_number, cfg, "base_model.target_val_loss")
        for key in ("model.n_layer", "model.n_head", "model.d_model", "model.d_mlp"):
            positive_int(cfg, key)
        checkpoint_file(cfg, "ckpt_path")
        existing_path(cfg, "base_model.checkpoint")
        self._check_consistency(cfg)
        self.data = self._dataset()
        if any(len(part) == 0 for part in self.data.split()):
            sizes = "/".join(str(len(part)) for part in self.data.split())
            raise ConfigError("dataset.p", f"p={self.data.p} gives {self.data.p ** 2} examples, too few for non-empty "
                                           f"train/validation/test splits ({sizes} at train_frac {self.data.train_frac})")
        hook_names = self._model_hook_names()
        self.position = self._position()
        name = get(cfg, "activations.hook_name")
        if name not in hook_names:
            from labcore.hooks import UnknownHookError
            raise ConfigError("activations.hook_name", str(UnknownHookError(name, hook_names)))

    @staticmethod
    def _check_consistency(cfg) -> None:
        """Consistency regularisation needs a saved reference SAE of the same d_in (cfg.json only)."""
        lam = require(cfg, "train.consistency_lambda",
                      lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "must be >= 0")
        ref = existing_path(cfg, "train.consistency_reference")
        if ref is None:
            if lam > 0:
                raise ConfigError("train.consistency_reference",
                                  f"train.consistency_lambda={lam} needs a reference SAE directory (SAELens format), got null")
            return
        cfg_json = Path(ref) / "cfg.json"
        if not cfg_json.exists() or not (Path(ref) / "sae_weights.safetensors").exists():
            raise ConfigError("train.consistency_reference",
                              f"not an SAE directory (needs cfg.json and sae_weights.safetensors): {ref}")
        d_in = json.loads(cfg_json.read_text()).get("d_in")
        if d_in != get(cfg, "sae.d_in"):
            raise ConfigError("train.consistency_reference",
                              f"reference d_in={d_in} does not match sae.d_in={get(cfg, 'sae.d_in')}: {ref}")

    def _dataset(self):
        return instantiate_or_explain(self.cfg, "dataset")

    def build_model(self):
        """The base model of `cfg.model`, shaped for the dataset (untrained)."""
        return instantiate_or_explain(self.cfg, "model", vocab_size=self.data.vocab_size, block_size=self.data.seq_len)

    def _model_hook_names(self) -> list[str]:
        import torch
        with torch.device("meta"):  # no memory, no init cost: only the shape of the model matters
            model = self.build_model()
        self.model_cfg = model.cfg
        return model.hook_names()

    def _position(self) -> int:
        pos = get(self.cfg, "activations.position")
        if pos == "answer":
            return self.data.answer_pos
        if not isinstance(pos, int) or not -self.data.seq_len <= pos < self.data.seq_len:
            raise ConfigError("activations.position",
                              f"must be 'answer' or an int in [-{self.data.seq_len}, {self.data.seq_len}) (got {pos!r})")
        return pos

    # ---- cached inputs ------------------------------------------------------------------------
    def prepare(self) -> None:
        from labcore.activations import extract_to_dir, load_activations, raise_if_non_finite, read_metadata
        from labcore.artifacts import sha256_file
        from labcore.store import cached, recorded_sha256
        from labcore.models.gpt import load_gpt
        from sae_lab.base_model import train_base_model

        cfg = self.cfg
        cache_dir = Path(get(cfg, "paths.cache_dir"))
        if cfg.base_model.checkpoint:
            base_dir = Path(cfg.base_model.checkpoint)
        else:
            base_key = {"model": self.model_cfg.to_dict(), "dataset": OmegaConf.to_container(cfg.dataset),
                        "train": {k: v for k, v in OmegaConf.to_container(cfg.base_model).items() if k != "checkpoint"}}
            base_dir = cached(cache_dir, "base_models", base_key,
                              lambda tmp: train_base_model(self.build_model, self.data, cfg.base_model, cfg.trainer, tmp))
        self.base_model, self.base_info = load_gpt(base_dir)
        # a cache entry recorded its files' hashes when it was built: no need to re-read them
        base_sha = (sha256_file(base_dir / "model.safetensors") if cfg.base_model.checkpoint
                    else recorded_sha256(base_dir, "model.safetensors"))
        self.manifest.add_input("base_model", base_sha)
        self.model_name = f"gpt_modular_p{self.data.p}-{base_sha[:10]}"

        hook = cfg.activations.hook_name
        tokens, labels = self.data.examples()
        # the batch size changes the stored bytes (float sums in another order), so it is part of the key
        acts_key = {"base_model": base_sha, "dataset": OmegaConf.to_container(cfg.dataset),
                    "hook_name": hook, "position": self.position, "batch_size": cfg.activations.batch_size}

        def build(tmp: Path) -> None:  # streamed into the cache entry, batch by batch
            extract_to_dir(self.base_model, tokens, [hook], tmp, position=self.position,
                           batch_size=cfg.activations.batch_size, desc=f"extract {hook}")

        acts_dir = cached(cache_dir, "activations", acts_key, build)
        raise_if_non_finite(read_metadata(acts_dir), where=f"{acts_dir}: position {self.position} of ")
        self.manifest.add_input("activations", recorded_sha256(acts_dir, f"{hook}.npy"))
        acts = load_activations(acts_dir, hook)  # memory-mapped
        self.train_idx, self.val_idx, self.test_idx = (i.numpy() for i in self.data.split())
        # the SAE trains on the base model's training examples, follows its curve on the validation
        # split and is evaluated on the test split, like the base model itself
        self.train_acts, self.val_acts, self.test_acts = acts[self.train_idx], acts[self.val_idx], acts[self.test_idx]
        self.tokens, self.labels = tokens, labels

    # ---- the fit ------------------------------------------------------------------------------
    def build(self):
        import torch
        from hydra.utils import instantiate

        from labcore.data import ArrayDataModule
        from sae_lab.training import SAETraining

        cfg = self.cfg
        sae = instantiate(cfg.sae)
        sae.init_b_dec(torch.as_tensor(self.train_acts[: cfg.train.batch_size]))
        module = SAETraining(sae, lr=cfg.train.lr, betas=cfg.train.betas, warmup_steps=cfg.train.warmup_steps,
                             dense_threshold=cfg.eval.dense_threshold,
                             consistency_lambda=cfg.train.consistency_lambda, reference=self._reference_decoder())
        datamodule = ArrayDataModule(self.train_acts, self.val_acts, cfg.train.batch_size,
                                     cfg.train.eval_batch_size, seed=cfg.seed)
        return module, datamodule

    def _reference_decoder(self):
        """The frozen reference decoder W_dec [d_ref, d_in] of consistency regularisation, or None."""
        path = self.cfg.train.consistency_reference
        if path is None:
            return None
        from labcore.artifacts import sha256_file
        from sae_lab.saelens_io import load_sae
        self.manifest.add_input("consistency_reference", sha256_file(Path(path) / "sae_weights.safetensors"))
        return load_sae(path)[0].W_dec.detach()

    # ---- evaluation and artifacts -------------------------------------------------------------
    def analyse(self) -> dict[str, float]:
        import torch

        from sae_lab import figures
        from sae_lab.evaluate import reconstruction_metrics, spliced_metrics
        from sae_lab.training import reference_alignment
        from sae_lab.saelens_io import save_sae

        from labcore.steplog import read_step_log

        cfg, trainer, module = self.cfg, self.trainer, self.module
        sae = module.sae.eval()
        device = sae.W_enc.device
        model = self.base_model.to(device)
        test = torch.as_tensor(self.test_acts)
        recon, freq = reconstruction_metrics(sae, test.split(cfg.train.eval_batch_size), cfg.eval.dense_threshold)
        test_idx = torch.as_tensor(self.test_idx)
        spliced = spliced_metrics(model, sae, self.tokens[test_idx].to(device), self.labels[test_idx].to(device),
                                  hook_name=cfg.activations.hook_name, position=self.position,
                                  logits_fn=lambda out: out[:, self.data.answer_pos, : self.data.p],
                                  batch_size=cfg.train.eval_batch_size)
        sae_dir = save_sae(sae, self.output_dir / "sae", hook_name=cfg.activations.hook_name,
                           model_name=self.model_name, extra_metadata={"seed": cfg.seed})
        self.manifest.add_output("sae", sae_dir)
        k = getattr(sae, "k", None)
        title = f"{sae.architecture} d_sae={sae.d_sae}" + (f" k={k}" if k else "") + f" seed={cfg.seed}"
        figures.training_curves(read_step_log(self.step_log_path), self.figures_dir / "training_curves.png", title)
        figures.latent_density(freq.numpy(), self.figures_dir / "latent_density.png", title)
        torch.save(freq, self.output_dir / "latent_frequency.pt")
        consistency = {}
        if module.reference is not None:
            with torch.no_grad():
                alignment = reference_alignment(sae.W_dec, module.reference)
            consistency = {"reference_alignment": float(alignment),
                           "consistency_lambda": float(module.consistency_lambda)}
        return {**recon, **spliced, **consistency,
                # SAELens' convention: no firing in the last dead_after_tokens training tokens
                "dead_fraction_train": float(sae.dead_mask.float().mean()),
                "train_steps": float(trainer.global_step),
                "n_train": float(len(self.train_acts)), "n_eval": float(len(self.test_acts))}

    def summary(self, metrics):
        cfg = self.cfg
        rows = [("sae", f"{cfg.sae.architecture} d_in={cfg.sae.d_in} d_sae={cfg.sae.d_sae} k={cfg.sae.get('k')}"),
                ("seed", cfg.seed)]
        keys = ["explained_variance", "fvu", "mse", "l0", "dead_fraction_eval", "dead_fraction_train",
                "dense_fraction", "acc_clean", "acc_with_sae", "acc_zero_ablation", "ce_clean", "ce_with_sae",
                "loss_recovered", "delta_loss", "reference_alignment", "consistency_lambda", "train_steps",
                "wall_time_s"]
        return rows + [(k, metrics[k]) for k in keys if k in metrics]
