"""Selection rules of the studies: pure functions of aggregate rows (dicts as
`sae_lab.aggregate.aggregate` returns them).

* A group is ranked by (trained PWMCC CI low - random PWMCC CI high, then PWMCC delta, then mean
  EV), larger first; the first element is the margin by which the trained PWMCC's 95% CI clears the
  random band (both CIs bootstrap over seeds, `labcore.stats.pairwise_bootstrap_ci`). A later key
  only decides when the earlier ones are exactly equal.
* adaptive_l0: only k with mean EV >= 0.20 compete; remaining exact ties go to the smaller k.
* consistency_reg: only lambda whose mean EV is at most 0.05 below lambda 0's compete (lambda 0
  itself always does, so "no regularisation" can win); then mean alignment to the reference breaks
  ties, then the smaller lambda.

Each returns {"rule", "candidates" (every row with `margin`, `eligible`, `excluded_because`,
`rank`; the winner first), "winner" (None when no row passes), "reason", ...}.
"""

from __future__ import annotations

import math
from typing import Callable

EV_FLOOR = 0.20      # adaptive_l0: a k must explain at least this much variance to compete
MAX_EV_DROP = 0.05   # consistency_reg: a lambda may cost at most this much EV vs lambda 0
NAN = float("nan")


def number(row: dict, key: str) -> float:
    """A row value as a float; missing or None (aggregate leaves PWMCC out below 2 seeds, JSON
    turns nan into null) is nan."""
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else NAN


def margin(row: dict) -> float:
    """Trained PWMCC CI low - random PWMCC CI high: > 0 when the two 95% CIs do not overlap."""
    return number(row, "pwmcc_trained_ci_low") - number(row, "pwmcc_random_ci_high")


def ranking_key(row: dict) -> tuple[float, float, float]:
    """(margin, delta, EV), compared in order, larger is better."""
    return margin(row), number(row, "pwmcc_delta"), number(row, "explained_variance_mean")


def _tiebreak(value: float) -> float:
    """Tie-break values sort last when undefined (nan would compare as neither larger nor smaller)."""
    return value if math.isfinite(value) else -math.inf


def _rank(rows: list[dict], why_not: Callable[[dict], str], key: Callable[[dict], tuple]) -> list[dict]:
    """Candidate table: each row with `margin`, `eligible`, `excluded_because` and `rank` (1 = winner).

    Rows whose ranking key is not finite (too few seeds for PWMCC) are excluded: nan never compares,
    so it would silently land anywhere in a sort.
    """
    table = []
    for row in rows:
        reason = why_not(row)
        if not reason and not all(math.isfinite(v) for v in ranking_key(row)):
            reason = "no PWMCC CI (fewer than 3 finished seeds: the bootstrap over seeds needs 3)"
        table.append({**row, "margin": margin(row), "eligible": not reason, "excluded_because": reason, "rank": None})
    ranked = sorted((c for c in table if c["eligible"]), key=key, reverse=True)
    for i, c in enumerate(ranked, 1):
        c["rank"] = i
    return sorted(table, key=lambda c: (c["rank"] is None, c["rank"] or 0))


def select_adaptive_l0(rows: list[dict], ev_floor: float = EV_FLOOR) -> dict:
    """Among k with mean EV >= ev_floor, the best (margin, delta, EV); exact ties go to the smaller k."""
    def why_not(row):
        ev = number(row, "explained_variance_mean")
        return "" if ev >= ev_floor else f"mean EV {ev:.4g} < floor {ev_floor:g}"

    # -k last: among exact ties the sparser (cheaper, more interpretable) dictionary wins
    table = _rank(rows, why_not, key=lambda r: (*ranking_key(r), _tiebreak(-number(r, "k"))))
    winner = next((c for c in table if c["rank"] == 1), None)
    rule = (f"among k with mean explained variance >= {ev_floor:g}, rank by (pwmcc_trained_ci_low - "
            f"pwmcc_random_ci_high, then pwmcc_delta, then explained_variance_mean), larger first; "
            f"exact ties: smaller k")
    reason = (f"k={winner['k']} ranks first" if winner else
              f"no k passes the rule: none has mean explained variance >= {ev_floor:g} and a PWMCC CI")
    return {"rule": rule, "ev_floor": ev_floor, "candidates": table, "winner": winner, "reason": reason}


def select_consistency(rows: list[dict], max_ev_drop: float = MAX_EV_DROP) -> dict:
    """Among lambda whose mean EV is <= max_ev_drop below lambda 0's, the best (margin, delta, EV,
    alignment to the reference); exact ties go to the smaller lambda. Rows need `consistency_lambda`
    and `reference_alignment_mean` besides the aggregate keys."""
    baseline = next((r for r in rows if number(r, "consistency_lambda") == 0), None)
    if baseline is None:
        raise ValueError("no lambda = 0 group: the EV drop and the gain are measured against it")
    ev0 = number(baseline, "explained_variance_mean")

    def why_not(row):
        drop = ev0 - number(row, "explained_variance_mean")
        # the tolerance keeps a drop of exactly the budget inside it (0.80 - 0.75 = 0.05000000000000004)
        return "" if drop <= max_ev_drop + 1e-12 else f"EV drop {drop:.4g} vs lambda 0 > {max_ev_drop:g}"

    table = _rank(rows, why_not, key=lambda r: (*ranking_key(r), _tiebreak(number(r, "reference_alignment_mean")),
                                                  -number(r, "consistency_lambda")))
    for c in table:
        c["ev_drop"] = ev0 - number(c, "explained_variance_mean")
        c["margin_gain"] = c["margin"] - margin(baseline)
    winner = next((c for c in table if c["rank"] == 1), None)
    rule = (f"among lambda with mean explained variance at most {max_ev_drop:g} below lambda 0's, rank by "
            f"(pwmcc_trained_ci_low - pwmcc_random_ci_high, then pwmcc_delta, then explained_variance_mean, "
            f"then reference_alignment_mean), larger first; exact ties: smaller lambda")
    reason = (f"lambda={winner['consistency_lambda']:g} ranks first" if winner else
              "no lambda passes the rule (lambda 0 itself has no PWMCC CI)")
    return {"rule": rule, "max_ev_drop": max_ev_drop, "baseline_explained_variance": ev0,
            "candidates": table, "winner": winner, "reason": reason}
