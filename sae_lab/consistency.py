"""Seed-consistency of SAE dictionaries: PWMCC, its random baseline, and Hungarian matching.

Decoder convention (SAELens): W_dec has shape [d_sae, d_in], one row per latent. A latent's
direction is its unit-normalised row. Callers that store [d_in, d_sae] must say so with
`layout="columns"`; the layout is never guessed from the shape (guessing "transpose when
d_sae < d_in" silently compares the wrong axes for small dictionaries, e.g. d_sae=64, d_in=128).

Metrics, for dictionaries A [F_a, d] and B [F_b, d] with unit rows a_i, b_j:

    C_ij  = |cos(a_i, b_j)|
    PWMCC = 1/2 [ mean_i max_j C_ij  +  mean_j max_i C_ij ]

Absolute cosine, because a latent and its negation span the same direction. Random unit
dictionaries already score about sqrt(2 ln(2 F) / d) (the expected max of F half-normal cosines
with variance 1/d), so PWMCC is only meaningful next to its matched random baseline
(`random_dictionary` with the same d_sae and d_in).

`mean_max_abs_cos` is the differentiable mean_i max_j C_ij that consistency regularisation
pulls up (alignment of a decoder to a frozen reference).

`matched_fraction` is the stricter one-to-one variant (Paulo & Belrose 2025 style): match latents
by the Hungarian algorithm on -C and report the fraction of matched pairs with C > threshold.
"""

from __future__ import annotations

import itertools
import math
from typing import Hashable, Literal, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

Layout = Literal["rows", "columns"]
LayoutArg = Union[Layout, Sequence[Layout]]
TensorLike = Union[torch.Tensor, np.ndarray]

DEFAULT_CHUNK_SIZE = 1024
# Hungarian matching is O(n^3) time and needs a dense [F_a, F_b] float64 matrix; above this many
# latents (in either dictionary) `matched_fraction` refuses unless the caller raises the limit.
DEFAULT_MAX_MATCH_SIZE = 4096


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------

def _split_layout(layout: LayoutArg) -> tuple[Layout, Layout]:
    """`layout` applies to both dictionaries, or is a pair (layout_a, layout_b)."""
    pair = (layout, layout) if isinstance(layout, str) else tuple(layout)
    if len(pair) != 2 or any(lay not in ("rows", "columns") for lay in pair):
        raise ValueError(f"layout must be 'rows', 'columns' or a pair of those, got {layout!r}")
    return pair  # type: ignore[return-value]


def _as_latent_rows(w: TensorLike, layout: Layout, name: str) -> torch.Tensor:
    """View `w` as [n_latents, d_in] according to the declared layout (no shape heuristics)."""
    if layout not in ("rows", "columns"):
        raise ValueError(f"layout must be 'rows' or 'columns', got {layout!r}")
    w = torch.as_tensor(w).detach()
    if w.ndim != 2:
        raise ValueError(f"{name} must be a 2-D decoder matrix, got shape {tuple(w.shape)}")
    return w if layout == "rows" else w.T


def unit_directions(
    w_dec: TensorLike,
    layout: Layout = "rows",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Unit-normalised latent directions [d_sae, d_in] in float32.

    `layout="rows"`: w_dec is [d_sae, d_in] (SAELens W_dec). `layout="columns"`: [d_in, d_sae].
    All-zero rows stay zero (cosine 0 with everything) instead of producing NaN.
    """
    rows = _as_latent_rows(w_dec, layout, "w_dec")
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        raise ValueError(f"decoder has no latents or zero d_in: latent-rows shape {tuple(rows.shape)}")
    rows = rows.to(device=device if device is not None else rows.device, dtype=torch.float32)
    if not torch.isfinite(rows).all():
        raise ValueError("decoder contains non-finite values")
    return F.normalize(rows, dim=1, eps=1e-12)


def _check_same_d_in(a_raw: torch.Tensor, b_raw: torch.Tensor, a_rows: torch.Tensor,
                     b_rows: torch.Tensor, layouts: tuple[Layout, Layout]) -> None:
    if a_rows.shape[1] != b_rows.shape[1]:
        raise ValueError(
            f"d_in mismatch: A has shape {tuple(a_raw.shape)} (layout={layouts[0]!r} -> "
            f"d_in={a_rows.shape[1]}), B has shape {tuple(b_raw.shape)} (layout={layouts[1]!r} -> "
            f"d_in={b_rows.shape[1]}). Decoders are expected as [d_sae, d_in], one row per latent; "
            f"pass layout='columns' (or a per-dictionary pair) for [d_in, d_sae] storage."
        )


def _prepare_pair(a: TensorLike, b: TensorLike, layout: LayoutArg,
                  device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and normalise both dictionaries onto one device (A's, unless `device` is given)."""
    la, lb = _split_layout(layout)
    a_t, b_t = torch.as_tensor(a), torch.as_tensor(b)
    a_rows, b_rows = _as_latent_rows(a_t, la, "A"), _as_latent_rows(b_t, lb, "B")
    _check_same_d_in(a_t, b_t, a_rows, b_rows, (la, lb))
    device = device if device is not None else a_rows.device
    return unit_directions(a_rows, "rows", device), unit_directions(b_rows, "rows", device)


# ----------------------------------------------------------------------------------------------
# PWMCC
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def _scan_abs_cos(
    a_unit: torch.Tensor, b_unit: torch.Tensor, chunk_size: int, col_max: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row maxima, their argmax, and (if asked) column maxima of C = |A B^T|, in row chunks.

    Peak extra memory is one [chunk_size, F_b] block (plus its reductions), e.g.
    1024 x 32768 x 4 B = 128 MiB, instead of F_a x F_b x 4 B (4 GiB for 32768^2).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_a, n_b = a_unit.shape[0], b_unit.shape[0]
    row_max = torch.empty(n_a, dtype=a_unit.dtype, device=a_unit.device)
    row_arg = torch.empty(n_a, dtype=torch.long, device=a_unit.device)
    cols = torch.zeros(n_b, dtype=a_unit.dtype, device=a_unit.device) if col_max else None  # |cos| >= 0
    b_t = b_unit.T
    for start in range(0, n_a, chunk_size):
        block = a_unit[start:start + chunk_size] @ b_t   # fresh [chunk, F_b] buffer
        block.abs_()                                     # in place: no second buffer
        stop = start + block.shape[0]
        row_max[start:stop], row_arg[start:stop] = block.max(dim=1)
        if cols is not None:
            torch.maximum(cols, block.amax(dim=0), out=cols)
        del block  # free before the next matmul allocates, so only one block is ever alive
    return row_max, row_arg, cols


def max_abs_cos(
    a_unit: torch.Tensor, b_unit: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column maxima of C = |A B^T| without materialising C (no gradient).

    Inputs must already be unit rows on the same device (see `unit_directions`). Returns
    (row_max [F_a], col_max [F_b]): row_max_i = max_j C_ij, col_max_j = max_i C_ij.
    Memory: one [chunk_size, F_b] float32 block at a time.
    """
    row_max, _, col_max = _scan_abs_cos(a_unit, b_unit, chunk_size)
    # float32 rounding can give 1.0000001 for identical directions; |cos| <= 1 by definition.
    return row_max.clamp_(max=1.0), col_max.clamp_(max=1.0)


def mean_max_abs_cos(a: torch.Tensor, b: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """mean_i max_j |cos(a_i, b_j)| over the rows of A [F_a, d] and B [F_b, d], differentiable.

    The consistency-regularisation alignment of an SAE decoder A to a frozen reference decoder B
    (and one half of PWMCC). The best match j*(i) is searched without autograd in row chunks, then
    only the matched cosines are recomputed with gradients: the gradient of a max is the gradient
    at its argmax, so this equals differentiating the full [F_a, F_b] cosine matrix while keeping
    O(F_a * d) memory.
    """
    a_unit, b_unit = F.normalize(a, dim=1), F.normalize(b, dim=1)
    _, best, _ = _scan_abs_cos(a_unit.detach(), b_unit.detach(), chunk_size, col_max=False)
    return (a_unit * b_unit[best]).sum(dim=1).abs().mean()


def pwmcc(
    a: TensorLike,
    b: TensorLike,
    *,
    layout: LayoutArg = "rows",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """Pairwise mean max cosine similarity between two SAE decoders.

        C_ij  = |cos(a_i, b_j)|
        PWMCC = 1/2 [ mean_i max_j C_ij + mean_j max_i C_ij ]

    a: [F_a, d_in], b: [F_b, d_in] with `layout="rows"` (default, SAELens W_dec);
    `layout="columns"` for [d_in, F] storage, or a pair like ("rows", "columns") when the two are
    stored differently. F_a and F_b may differ; d_in must match (ValueError naming both shapes).

    Computed in float32 in row chunks of `chunk_size` (memory ~ chunk_size * F_b * 4 bytes) on
    `device` (default: a's device); the two means are accumulated in float64.
    """
    a_unit, b_unit = _prepare_pair(a, b, layout, device)
    return _pwmcc_unit(a_unit, b_unit, chunk_size)


def _pwmcc_unit(a_unit: torch.Tensor, b_unit: torch.Tensor, chunk_size: int) -> float:
    row_max, col_max = max_abs_cos(a_unit, b_unit, chunk_size)
    return 0.5 * (row_max.double().mean().item() + col_max.double().mean().item())


def pairwise_pwmcc(
    decoders: Mapping[Hashable, TensorLike],
    *,
    layout: Layout = "rows",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> list[tuple[Hashable, Hashable, float]]:
    """PWMCC for every unordered pair of decoders, e.g. {seed: W_dec}.

    Returns [(seed_a, seed_b, pwmcc), ...] in `itertools.combinations` order of the mapping's
    keys. All decoders share one `layout`; each is normalised once, not once per pair.
    """
    if len(decoders) < 2:
        raise ValueError(f"need at least two decoders to compare, got {len(decoders)}")
    keys = list(decoders)
    first = _as_latent_rows(decoders[keys[0]], layout, str(keys[0]))
    device = device if device is not None else first.device
    units: dict[Hashable, torch.Tensor] = {}
    for key in keys:
        rows = _as_latent_rows(decoders[key], layout, str(key))
        if rows.shape[1] != first.shape[1]:
            raise ValueError(
                f"d_in mismatch: decoder {keys[0]!r} has shape {tuple(torch.as_tensor(decoders[keys[0]]).shape)}, "
                f"decoder {key!r} has shape {tuple(torch.as_tensor(decoders[key]).shape)} "
                f"(layout={layout!r}, expected [d_sae, d_in] for 'rows', [d_in, d_sae] for 'columns')"
            )
        units[key] = unit_directions(rows, "rows", device)
    return [(ka, kb, _pwmcc_unit(units[ka], units[kb], chunk_size))
            for ka, kb in itertools.combinations(keys, 2)]


# ----------------------------------------------------------------------------------------------
# Random baseline
# ----------------------------------------------------------------------------------------------

def random_dictionary(
    d_sae: int,
    d_in: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random decoder [d_sae, d_in] with unit rows: Gaussian entries, then row-normalised.

    A normalised isotropic Gaussian is uniform on the sphere, the right null model for "directions
    unrelated to the data". Sampled on CPU with a seeded generator so the same seed gives the same
    dictionary on every device.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    w = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float32)
    return F.normalize(w, dim=1).to(device=device, dtype=dtype)


def expected_random_max_cos(d_sae: int, d_in: int) -> float:
    """Leading-order expected max |cos| of one direction against `d_sae` random unit directions.

    Each cosine is approximately N(0, 1/d_in), and the max of F half-normals with scale sigma is
    about sigma sqrt(2 ln(2F)), hence sqrt(2 ln(2 d_sae) / d_in). It is an asymptotic order of
    magnitude (it overestimates slightly at moderate F), not an exact value; compare PWMCC against
    `pwmcc(random_dictionary(..., seed=s1), random_dictionary(..., seed=s2))` for a real baseline.
    """
    return math.sqrt(2.0 * math.log(2.0 * d_sae) / d_in)


# ----------------------------------------------------------------------------------------------
# One-to-one matching (Paulo & Belrose 2025 style)
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def hungarian_match(
    a: TensorLike,
    b: TensorLike,
    *,
    layout: LayoutArg = "rows",
    max_size: int = DEFAULT_MAX_MATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of latents maximising total |cos| (scipy linear_sum_assignment on -C).

    Returns (idx_a, idx_b, cos) with min(F_a, F_b) matched pairs: latent idx_a[k] of A is matched
    to latent idx_b[k] of B with C = |cos| = cos[k]. Refuses (ValueError) when either dictionary
    has more than `max_size` latents: the dense C and the O(n^3) assignment grow quickly.
    """
    la, lb = _split_layout(layout)
    a_t, b_t = torch.as_tensor(a), torch.as_tensor(b)
    n_a = _as_latent_rows(a_t, la, "A").shape[0]
    n_b = _as_latent_rows(b_t, lb, "B").shape[0]
    if max(n_a, n_b) > max_size:
        raise ValueError(
            f"Hungarian matching of {n_a} x {n_b} latents exceeds max_size={max_size} "
            f"(O(n^3) time, dense {n_a}x{n_b} float64 matrix = {n_a * n_b * 8 / 2**30:.2f} GiB); "
            f"raise max_size explicitly if you really want this, or use pwmcc()"
        )
    from scipy.optimize import linear_sum_assignment

    a_unit, b_unit = _prepare_pair(a_t, b_t, layout, "cpu")
    c = (a_unit.double() @ b_unit.double().T).abs_().numpy()
    idx_a, idx_b = linear_sum_assignment(-c)   # rectangular C matches min(F_a, F_b) pairs
    return idx_a, idx_b, np.minimum(c[idx_a, idx_b], 1.0)


def matched_fraction(
    a: TensorLike,
    b: TensorLike,
    threshold: float = 0.7,
    *,
    layout: LayoutArg = "rows",
    max_size: int = DEFAULT_MAX_MATCH_SIZE,
) -> float:
    """Fraction of one-to-one (Hungarian) matched latent pairs with |cos| > `threshold`.

        (idx_a, idx_b) = argmax over one-to-one matchings of sum C[idx_a, idx_b]
        matched_fraction = #{k : C[idx_a[k], idx_b[k]] > threshold} / min(F_a, F_b)

    Unlike PWMCC, a latent of B can be credited to only one latent of A, so duplicated or
    absorbed features are not double-counted. For unequal sizes it is the fraction of the smaller
    dictionary. Refuses above `max_size` latents (see `hungarian_match`).
    """
    _, _, cos = hungarian_match(a, b, layout=layout, max_size=max_size)
    return float(np.mean(cos > threshold))
