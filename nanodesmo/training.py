"""Training the self-state GPT: nanoGPT's recipe (AdamW, linear warm-up then cosine decay, gradient
clipping) with manual optimisation, so each step can read its gradient norm before clipping, feed it
to the next step's self-state update, and apply the perturbation regimes.

Every step logs the reaction record (`reaction_log.jsonl`, through labcore's step log, so a resumed
run's log is cut back to its checkpoint and continued): step, loss, lr, grad_norm, step_frac, the
statistics the state update saw (stats_*), self_norm, self_delta = ||s_t - s_{t-1}||, self_drift =
1 - cos(s, ema), self_update_* (the update's parts), state_effect every `state_effect_every` steps
(mean |logits(probe, s) - logits(probe, 0)| at the last position), and regime_<name> = 1 while a
regime is active.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from nanodesmo.model import STAT_NAMES, SelfStateGPT
from nanodesmo.regimes import Schedule


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """nanoGPT: linear warm-up to lr, cosine decay to min_lr at decay_iters, min_lr after."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step > decay_iters:
        return min_lr
    ratio = (step - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


class SelfStateLM(L.LightningModule):
    def __init__(self, model: SelfStateGPT, schedule: Schedule, train, probe: torch.Tensor):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.schedule, self.train_cfg = model, schedule, train
        self.register_buffer("probe", probe, persistent=False)     # a fixed batch for state_effect

    @property
    def self_state(self):
        return self.model.self_state

    def training_step(self, batch, _):
        x, y = batch
        step, cfg = self.global_step, self.train_cfg
        x, y = self.schedule.inputs(x, step), self.schedule.targets(y, step)
        record: dict[str, float] = {}
        state, info = None, {}
        ss = self.self_state
        if ss is not None:
            stats = self.schedule.stats(ss.last_stats, step)
            record.update({f"stats_{n}": float(v) for n, v in zip(STAT_NAMES, stats.tolist())})
            previous = ss.state.detach().clone()
            state, info = ss.propose(stats)
            state = self.schedule.state(state, step)
        logits = self.model(x, state=state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())

        opt = self.optimizers()
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters) * self.schedule.lr_mult(step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf"))
        opt.step()

        with torch.no_grad():
            last = torch.softmax(logits[:, -1].float(), dim=-1)
            entropy = -torch.special.xlogy(last, last).sum(-1).mean()
            top1 = last.max(-1).values.mean()
        record.update({"loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm),
                       "step_frac": (step + 1) / cfg.max_iters, "entropy": float(entropy), "top1_conf": float(top1)})
        if ss is not None:
            ss.last_stats.copy_(torch.stack([loss.detach(), grad_norm.detach().to(loss.dtype),
                                             torch.tensor((step + 1) / cfg.max_iters, device=loss.device),
                                             entropy, top1]).float())
            if ss.learned:
                ss.commit(state, step)
            s = ss.state
            record["self_state"] = [round(v, 6) for v in s.tolist()]    # the trajectory (desmotic metrics)
            record.update({"self_norm": float(s.norm()), "self_delta": float((s - previous).norm()),
                           "self_drift": float(1 - F.cosine_similarity(s, ss.ema, dim=0, eps=1e-12))})
            record.update({f"self_update_{k}": float(v) for k, v in info.items()})
            if cfg.state_effect_every and step % cfg.state_effect_every == 0:
                record["state_effect"] = self.state_effect()
        for r in self.schedule.regimes:
            record[f"regime_{r.name}"] = float(r.active(step))
        # straight to the step log, one record per step with exactly this step's fields (Lightning's
        # logging would repeat a field logged at an earlier step, such as state_effect)
        self._step_log().log_metrics(record, step)
        self.log("train/loss", loss, prog_bar=True, logger=False)

    def _step_log(self):
        from labcore.fit import StepLogger
        return next(lg for lg in self.trainer.loggers if isinstance(lg, StepLogger))

    @torch.no_grad()
    def state_effect(self) -> float:
        """Mean |logits(probe, s) - logits(probe, 0)| at the last position, in eval mode."""
        was = self.model.training
        self.model.eval()
        with_state = self.model(self.probe)[:, -1]
        without = self.model(self.probe, state=torch.zeros_like(self.self_state.state))[:, -1]
        self.model.train(was)
        return float((with_state - without).abs().mean())

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.model(x)
        self.log("val/loss", F.cross_entropy(logits.flatten(0, 1), y.flatten()), prog_bar=True)

    def configure_optimizers(self):
        cfg = self.train_cfg
        # nanoGPT: weight decay on matrices (2-D parameters), none on biases and norms
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas))



class SaveAtStep(L.Callback):
    """Save a resumable checkpoint once `step` training steps are done (the swap experiment's
    half-way point), to `<output_dir>/checkpoints/step_<step>.ckpt`."""

    def __init__(self, step: int, dirpath: str):
        self.step, self.dirpath = step, dirpath

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(f"{self.dirpath}/step_{self.step}.ckpt")
