"""The report a study leaves in its directory: `summary.md` (what ran, the candidate table, the
rule, the selection, the conclusion) and `selection.json` (rule, candidates reduced to the table's
columns, winner, and the sweeps run). Written also when a stage failed, so the reader sees how far
the study got and why."""

from __future__ import annotations

import shlex
from pathlib import Path

from labcore.orchestrate import StageRecord
from labcore.tables import format_value, markdown_table
from sae_lab.selection import margin, number

SEARCH_COLS = ["group", "k", "n_ok", "explained_variance_mean", "l0_mean", "pwmcc_trained_mean",
               "pwmcc_trained_ci_low", "pwmcc_random_ci_high", "margin", "pwmcc_delta", "p_value", "conclusion",
               "eligible", "excluded_because", "rank"]

LAMBDA_COLS = ["group", "consistency_lambda", "n_ok", "explained_variance_mean", "ev_drop", "pwmcc_trained_mean",
               "pwmcc_trained_ci_low", "pwmcc_random_ci_high", "margin", "margin_gain", "pwmcc_delta",
               "gain_vs_lambda0", "gain_ci_low", "gain_ci_high", "reference_alignment_mean", "p_value",
               "cohens_d", "conclusion", "eligible", "excluded_because", "rank"]


# ---- sentences ---------------------------------------------------------------------------------

def ci(row: dict, prefix: str) -> str:
    """`mean [low, high]` of an aggregate statistic, e.g. prefix "pwmcc_trained"."""
    mean, low, high = (format_value(number(row, f"{prefix}_{s}")) for s in ("mean", "ci_low", "ci_high"))
    return f"{mean} [{low}, {high}]"


def versus_random(row: dict) -> str:
    """One sentence: trained PWMCC vs its matched random baseline, with CIs, p, d and conclusion."""
    return (f"trained PWMCC {ci(row, 'pwmcc_trained')} vs random {ci(row, 'pwmcc_random')} "
            f"(95% bootstrap CIs over seeds; {format_value(row.get('n_ok'))} seeds), "
            f"delta {format_value(number(row, 'pwmcc_delta'))}, ratio {format_value(number(row, 'pwmcc_ratio'))}, "
            f"one-sided permutation test over seed labels p = {format_value(number(row, 'p_value'))} "
            f"(smallest attainable {format_value(number(row, 'p_min'))}), Cohen's d of per-seed means = "
            f"{format_value(number(row, 'cohens_d'))}: **{row.get('conclusion')}**")


def seed_overlap(search_row: dict, retrain_row: dict) -> str:
    """Whether the retrain is a fresh test: seeds that also selected k favour k by construction."""
    shared = set(str(search_row.get("seeds", "")).split()) & set(str(retrain_row.get("seeds", "")).split())
    return "disjoint from the search's" if not shared else f"{len(shared)} of them also used in the search"


def edge_note(name: str, value: float, grid: list[float]) -> str:
    """A winner at the end of the searched grid says the rule's optimum may lie outside the grid."""
    if len(grid) < 2 or min(grid) < value < max(grid):
        return ""
    end = "smallest" if value == min(grid) else "largest"
    return (f" {name} = {value:g} is the {end} value searched, so the rule's optimum may lie beyond the grid; "
            f"a wider grid would tell.")


def searched(selection: dict, key: str) -> list[float]:
    """Every value searched, eligible or not: a winner next to excluded values is bounded by the rule."""
    return [number(c, key) for c in selection["candidates"]]


def agreement(row: dict) -> str:
    """What the retrain's test says about agreement beyond random, in words."""
    verdict = row.get("conclusion")
    if verdict == "training_signal_present":
        return "agree more than random dictionaries of the same shape"
    if verdict == "insufficient_seeds":
        return (f"cannot be tested against random dictionaries: with this many seeds no outcome reaches p < 0.05 "
                f"(smallest attainable p {format_value(number(row, 'p_min'))}); more seeds would tell")
    return "do **not** agree significantly more than random dictionaries of the same shape"


def adaptive_l0_conclusion(k: int, winner: dict, row: dict) -> str:
    return (f"The search selects k = {k} (search: margin {format_value(number(winner, 'margin'))}, "
            f"delta {format_value(number(winner, 'pwmcc_delta'))}, "
            f"EV {format_value(number(winner, 'explained_variance_mean'))}). "
            f"Retrained on {format_value(row.get('n_ok'))} seeds ({seed_overlap(winner, row)}), its decoders "
            + agreement(row)
            + f" (margin {format_value(margin(row))}: the trained 95% CI "
            + ("clears" if margin(row) > 0 else "overlaps") + " the random band). "
            "The seed is the unit of the test and of the CIs (pairs share seeds, so they are not resampled).")


def consistency_conclusion(w: dict, baseline: dict) -> str:
    lam = w["consistency_lambda"]
    if lam == 0:
        return ("No lambda > 0 beats the unregularised baseline on the ranking key within the EV budget: "
                "lambda 0 is selected, i.e. consistency regularisation did not help here. "
                f"At lambda 0, {versus_random(w)}.")
    gain, low, high = (number(w, k) for k in ("gain_vs_lambda0", "gain_ci_low", "gain_ci_high"))
    excludes = low > 0 or high < 0
    # the gain in units of what training already achieves over random, to judge its size, not only its sign
    delta0 = number(baseline, "pwmcc_delta")
    relative = gain / delta0 if delta0 else float("nan")
    return (f"lambda = {lam:g} is selected: PWMCC gain over lambda 0 {format_value(gain)} "
            f"[{format_value(low)}, {format_value(high)}] (the CI " + ("excludes" if excludes else "includes")
            + f" 0; {relative:.1%} of lambda 0's PWMCC delta over random), margin gain "
            f"{format_value(number(w, 'margin_gain'))}, EV drop {format_value(number(w, 'ev_drop'))}, alignment to "
            f"the reference {format_value(number(w, 'reference_alignment_mean'))} "
            f"(lambda 0: {format_value(number(baseline, 'reference_alignment_mean'))}). At lambda = {lam:g}, "
            f"{versus_random(w)}. Every regularised seed is pulled towards the same reference, so part of any gain "
            "is agreement imposed by that shared target, not found by training alone.")


# ---- the two studies' reports --------------------------------------------------------------------

def json_table(selection: dict, cols: list[str]) -> dict:
    """The candidates and the winner of a selection reduced to the table's columns, for selection.json."""
    def pick(r):
        return None if r is None else {c: r.get(c) for c in cols}
    return {"candidates": [pick(r) for r in selection["candidates"]], "winner": pick(selection["winner"])}


def selection_section(selection: dict, cols: list[str]) -> list[str]:
    return [markdown_table(selection["candidates"], cols), "", f"Rule: {selection['rule']}.", "",
            f"Selection: {selection['reason']}.", ""]


def adaptive_l0_report(values: dict) -> tuple[list[str], dict | None]:
    """(summary.md body, selection.json content) from the values of the adaptive_l0 stages so far."""
    chosen = values.get("select")
    if chosen is None:
        return [], None
    selection = {"study": "adaptive_l0", **chosen, **json_table(chosen, SEARCH_COLS)}
    body = ["## Search", ""] + selection_section(selection, SEARCH_COLS)
    if chosen["winner"] is None:
        return body + ["**Stopped: no k passes the selection rule, so nothing was retrained.**"], selection
    row = values.get("aggregate_retrain")
    if row is None:
        return body, selection
    k = int(chosen["winner"]["k"])
    selection["retrain"] = dict(row)
    body += [f"## Retrain of k = {k}", "",
             f"Explained variance {ci(row, 'explained_variance')}, L0 {format_value(number(row, 'l0_mean'))}; "
             f"{versus_random(row)}.", "",
             "## Conclusion", "", adaptive_l0_conclusion(k, chosen["winner"], row)
             + edge_note("k", k, searched(chosen, "k"))]
    return body, selection


def consistency_reg_report(values: dict) -> tuple[list[str], dict | None]:
    """(summary.md body, selection.json content) from the values of the consistency_reg stages so far."""
    chosen, reference = values.get("select"), values.get("reference_sae")
    if chosen is None:
        return [], None
    selection = {"study": "consistency_reg", "reference": reference, **chosen, **json_table(chosen, LAMBDA_COLS)}
    body = [f"Reference SAE: `{reference}` (lambda 0).", "", "## Lambda sweep", "",
            markdown_table(selection["candidates"], LAMBDA_COLS), "",
            "gain_vs_lambda0: mean over the same seed pairs of PWMCC(lambda) - PWMCC(lambda 0), "
            "95% CI from a bootstrap that resamples seeds (pairs share seeds, so pairs are not the unit). "
            "reference_alignment: mean_i max_j |cos(d_i, r_j)| to the reference decoder.", "",
            f"Rule: {selection['rule']}.", "", f"Selection: {selection['reason']}.", ""]
    if chosen["winner"] is None:
        return body + ["**Stopped: no lambda passes the selection rule.**"], selection
    lam = chosen["winner"]["consistency_lambda"]
    baseline = next(c for c in chosen["candidates"] if c["consistency_lambda"] == 0)
    body += ["## Conclusion", "", consistency_conclusion(chosen["winner"], baseline)
             + (edge_note("lambda", lam, searched(chosen, "consistency_lambda")) if lam > 0 else "")]
    return body, selection


# ---- writing ---------------------------------------------------------------------------------------

def sweeps_run(records: list[StageRecord]) -> list[dict]:
    """The command stages of a run (the sweeps), for selection.json."""
    return [{"stage": r.stage, "command": r.command, "exit_status": r.exit_status, "wall_s": r.wall_s}
            for r in records if r.command is not None]


def header(title: str, study_dir: Path, overrides: list[str], records: list[StageRecord], wall_s: float) -> list[str]:
    lines = [f"# {title}", "", f"Study directory: `{study_dir}`; wall time {wall_s:.0f} s.", ""]
    lines.append("Overrides passed to every sweep: " + (" ".join(f"`{o}`" for o in overrides) if overrides
                                                        else "none (the study as specified)"))
    lines += ["", "Sweeps run:", "", "```"]
    for r in records:
        if r.command is None:
            continue
        earlier = " (finished in an earlier run of this study: skipped)" if r.state == "skipped" else ""
        lines += [f"# {r.stage}: exit {r.exit_status}, {r.wall_s or 0:.0f} s{earlier}", shlex.join(r.command)]
    return lines + ["```", ""]


def write_study_report(study_dir: Path, title: str, overrides: list[str], records: list[StageRecord],
                       body: list[str], selection: dict | None, stopped_because: str, wall_s: float) -> str:
    """Write summary.md (and selection.json once a selection was made); returns summary.md's text."""
    from labcore.artifacts import atomic_write_json, atomic_write_text
    if stopped_because:
        body = body + ["", f"**Stopped: {stopped_because}**"]
    if selection:
        atomic_write_json(study_dir / "selection.json", {**selection, "stages": sweeps_run(records)})
    text = "\n".join(header(title, study_dir, overrides, records, wall_s) + body) + "\n"
    atomic_write_text(study_dir / "summary.md", text)
    return text
