"""Feature cards: for each feature, the contexts it fires on most, with each token's activation shown
(Markdown: the peak token in bold with its value; HTML: every token shaded by its activation)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np


def top_contexts(z_feature: np.ndarray, rows_sample: np.ndarray, n: int) -> list[tuple[int, int, float]]:
    """The `n` samples where the feature peaks highest: (sample, row of the peak, peak value), best first."""
    order = np.argsort(-z_feature, kind="stable")
    out, seen = [], set()
    for row in order:
        if z_feature[row] <= 0 or len(out) == n:
            break
        sample = int(rows_sample[row])
        if sample not in seen:
            seen.add(sample)
            out.append((sample, int(row), float(z_feature[row])))
    return out


def _token_text(tokenizer, token_ids) -> list[str]:
    """Each token's share of the decoded text (with its leading space), for any tokenizer: the
    difference between decoding the first i + 1 tokens and the first i."""
    if tokenizer is None:
        return [f"{int(t)} " for t in token_ids]
    ids = [int(t) for t in token_ids]
    texts, previous = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False)
        texts.append(text[len(previous):] if text.startswith(previous) else " " + tokenizer.decode(ids[i:i + 1]))
        previous = text
    return texts


def write_cards(features: list[dict], z_rows: dict[int, np.ndarray], rows: dict[str, np.ndarray], tokenizer,
                describe, label_names: list[str], labels: np.ndarray, out: Path, title: str,
                n_contexts: int = 8) -> tuple[Path, Path]:
    """feature_cards.md and feature_cards.html for `features` (dicts with feature, cohens_d, toward),
    each with its top contexts. z_rows[f] is feature f's activation on every extraction row."""
    md = [f"# {title}", "", "Each card: the feature's Cohen's d between the groups (on the training templates), "
          "then the samples where it fires most; the peak token is in **bold** with its activation.", ""]
    page = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:60em} .tok{padding:1px 0;border-radius:2px} "
            ".card{border:1px solid #ccc;padding:0.5em 1em;margin:1em 0}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>"]
    for f in features:
        feature = f["feature"]
        z = z_rows[feature]
        heading = f"feature {feature}: d = {f['cohens_d']:+.2f}, toward {f['toward']}"
        md += [f"## {heading}", "", "| group | activation | context |", "|---|---|---|"]
        page.append(f"<div class='card'><h2>{html.escape(heading)}</h2><table>")
        for sample, peak_row, value in top_contexts(z, rows["sample"], n_contexts):
            sample_rows = np.flatnonzero(rows["sample"] == sample)
            tokens = _token_text(tokenizer, rows["token"][sample_rows])
            acts = z[sample_rows]
            group = label_names[int(labels[sample])]
            if len(sample_rows) == 1:     # tokens="last": one stored token, show the sample itself
                context = f"{describe(sample)} → **{tokens[0].strip()}** ({value:.2f})"
            else:
                context = "".join(f"{t[: len(t) - len(t.lstrip())]}**{t.strip()}**({a:.2f})" if r == peak_row else t
                                  for t, a, r in zip(tokens, acts, sample_rows))
            cell = context.strip().replace("|", "\\|")        # a table cell: escape the column bar
            md.append(f"| {group} | {value:.3f} | {cell} |")
            peak = max(float(acts.max()), 1e-12)
            spans = "".join(f"<span class='tok' title='{a:.3f}' style='background:rgba(255,140,0,{max(0.0, a) / peak:.2f})'>"
                            f"{html.escape(t)}</span>" for t, a in zip(tokens, acts))
            page.append(f"<tr><td>{html.escape(group)}</td><td>{value:.3f}</td><td>{spans}</td></tr>")
        if not top_contexts(z, rows["sample"], 1):
            md.append("| | | (never fires) |")
        md.append("")
        page.append("</table></div>")
    page.append("</body></html>")
    out.mkdir(parents=True, exist_ok=True)
    from labcore.artifacts import atomic_write_text
    atomic_write_text(out / "feature_cards.md", "\n".join(md) + "\n")
    atomic_write_text(out / "feature_cards.html", "\n".join(page) + "\n")
    return out / "feature_cards.md", out / "feature_cards.html"
