"""The frozen-weight causal test: with every weight frozen, does the self-state alone steer how
certain the model is?

1. Discovery (on `discovery_batches` held-out batches): set one state dimension to `probe_value`
   (0.3), the rest 0, and measure the change of the mean next-token entropy against s = 0. The
   `n_dims` dimensions lowering it most are "confident", the `n_dims` raising it most "uncertain".
2. Evaluation (on `eval_batches` other held-out batches): the mean entropy under s = 0, the
   checkpoint's own state, the confident state (probe_value on the confident dimensions), the
   uncertain state, a random state of the same norm, and `n_random` random states of that norm.
3. Effect size = |H(confident) - H(uncertain)| (the original's pass bar: > 0.3; it measured 0.35
   on Shakespeare, 0.33 on OpenWebText), with a bootstrap 95% CI over evaluation sequences; sign
   consistency = share of evaluation batches where H(confident) < H(uncertain); the random control
   = |H(r1) - H(r2)| over pairs of random states, which the effect should exceed.
"""

from __future__ import annotations

import numpy as np
import torch

from labcore.stats import bootstrap_ci


@torch.no_grad()
def sequence_entropy(model, batches, state: torch.Tensor) -> np.ndarray:
    """Mean next-token entropy per sequence, [n_sequences], over every position."""
    out = []
    for x, _ in batches:
        p = torch.softmax(model(x, state=state).float(), dim=-1)
        out.append((-torch.special.xlogy(p, p).sum(-1)).mean(-1))
    return torch.cat(out).numpy()


def frozen_test(model, data, *, probe_value: float = 0.3, n_dims: int = 5, discovery_batches: int = 5,
                eval_batches: int = 5, batch_size: int = 32, n_random: int = 50, seed: int = 0,
                pass_bar: float = 0.3) -> dict:
    """The test's numbers (see the module docstring) for a SelfStateGPT `model` and its CharText `data`."""
    ss = model.self_state
    if ss is None:
        raise ValueError("the frozen-weight test needs a model with a self-state (self_state.dim > 0)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dim = ss.cfg.dim
    n_dims = min(n_dims, dim // 2) or 1
    g = torch.Generator().manual_seed(seed)
    discovery = [data.batch("val", batch_size, g) for _ in range(discovery_batches)]
    evaluation = [data.batch("val", batch_size, g) for _ in range(eval_batches)]

    zero = torch.zeros(dim)
    base = sequence_entropy(model, discovery, zero).mean()
    changes = np.empty(dim)
    for d in range(dim):
        s = zero.clone()
        s[d] = probe_value
        changes[d] = sequence_entropy(model, discovery, s).mean() - base
    order = np.argsort(changes)
    confident_dims, uncertain_dims = order[:n_dims].tolist(), order[::-1][:n_dims].tolist()

    def on(dims):
        s = zero.clone()
        s[dims] = probe_value
        return s

    confident, uncertain = on(confident_dims), on(uncertain_dims)
    norm = float(confident.norm())
    randoms = [r / r.norm() * norm for r in torch.randn(n_random + 1, dim, generator=g)]
    per_seq = {name: sequence_entropy(model, evaluation, s) for name, s in
               (("zero", zero), ("checkpoint", ss.state.detach().clone()), ("confident", confident),
                ("uncertain", uncertain), ("random", randoms[0]))}
    random_means = np.array([sequence_entropy(model, evaluation, r).mean() for r in randoms[1:]])
    diff = per_seq["uncertain"] - per_seq["confident"]
    low, high = bootstrap_ci(diff, seed=seed)     # of the signed mean difference
    # of its absolute value: 0 is inside when the signed interval straddles it
    ci_abs = (min(abs(low), abs(high)) if low * high > 0 else 0.0, max(abs(low), abs(high)))
    batch_diff = diff.reshape(eval_batches, -1).mean(1)
    pairs = np.abs(random_means[:, None] - random_means[None, :])[np.triu_indices(len(random_means), 1)]
    effect = float(abs(diff.mean()))
    return {
        "effect_size": effect, "effect_ci_low": float(ci_abs[0]), "effect_ci_high": float(ci_abs[1]),
        "passes": bool(effect > pass_bar), "pass_bar": pass_bar,
        "sign_consistency": float((batch_diff > 0).mean()),
        "entropy": {name: float(v.mean()) for name, v in per_seq.items()},
        "random_entropy_mean": float(random_means.mean()), "random_entropy_std": float(random_means.std(ddof=1)),
        "random_pair_diff_mean": float(pairs.mean()), "random_pair_diff_p95": float(np.percentile(pairs, 95)),
        "effect_over_random_p95": bool(effect > float(np.percentile(pairs, 95))),
        "confident_dims": confident_dims, "uncertain_dims": uncertain_dims,
        "discovery_entropy_change": changes.tolist(), "probe_value": probe_value, "state_norm": norm,
        "n_eval_sequences": int(len(diff)),
    }


def figure(result: dict, path) -> None:
    from labcore.plotting import save_figure, subplots
    names = ["zero", "checkpoint", "confident", "uncertain", "random"]
    fig, (ax, bx) = subplots(1, 2, figsize=(10, 3.6))
    ax.bar(names, [result["entropy"][n] for n in names], color=["grey", "grey", "tab:blue", "tab:red", "tab:olive"])
    low = min(result["entropy"].values())
    ax.set_ylim(low - 0.2, max(result["entropy"].values()) + 0.1)
    ax.set_ylabel("mean next-token entropy (nats)")
    ax.set_title(f"frozen weights: |H(conf) - H(unc)| = {result['effect_size']:.3f} "
                 f"[{result['effect_ci_low']:.3f}, {result['effect_ci_high']:.3f}]")
    changes = np.array(result["discovery_entropy_change"])
    colors = ["tab:blue" if d in result["confident_dims"] else "tab:red" if d in result["uncertain_dims"] else "grey"
              for d in range(len(changes))]
    bx.bar(range(len(changes)), changes, color=colors)
    bx.axhline(0, color="black", linewidth=0.8)
    bx.set_xlabel("state dimension set to %.2g" % result["probe_value"])
    bx.set_ylabel("entropy change vs s = 0")
    save_figure(fig, path)
