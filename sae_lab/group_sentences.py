"""The feature pipeline's offline demo data: sentences about subjects of two groups (female / male,
the groups of the original captioning study) in many contexts, generated from templates.

Every subject appears in every template, so a feature that separates the groups cannot lean on the
context. The last `heldout_templates` templates are marked `split = heldout`: the group probe is
trained on the other templates and judged on these, never on contexts it saw.

    python -m sae_lab.group_sentences out.csv     # write the table (text, label, subject, template, split)
"""

from __future__ import annotations

import sys
from pathlib import Path

from labcore.datasets.labelled import LabelledText

SUBJECTS = {
    "female": ["woman", "girl", "mother", "sister", "daughter", "wife", "queen", "aunt", "lady", "niece",
               "grandmother", "actress"],
    "male": ["man", "boy", "father", "brother", "son", "husband", "king", "uncle", "gentleman", "nephew",
             "grandfather", "actor"],
}

TEMPLATES = [
    "The {s} walked into the kitchen.", "A {s} was reading a book by the window.",
    "The {s} bought fresh bread at the market.", "Yesterday the {s} painted the fence.",
    "The {s} is waiting for the bus.", "Everyone listened when the {s} spoke.",
    "The {s} planted tomatoes in the garden.", "A tired {s} fell asleep on the train.",
    "The {s} answered the phone quickly.", "At noon the {s} cooked lunch for everyone.",
    "The {s} laughed at the joke.", "The old {s} told a story about the war.",
    "A young {s} ran across the park.", "The {s} wrote a letter to a friend.",
    "The {s} opened the door slowly.", "On Sunday the {s} went fishing.",
    "The {s} carried the boxes upstairs.", "The {s} is learning to play the piano.",
    "A {s} stood at the corner of the street.", "The {s} fixed the broken chair.",
    "The {s} smiled at the children.", "The {s} drove to the city in the rain.",
    "After dinner the {s} washed the dishes.", "The {s} sang a song at the wedding.",
    "The {s} forgot the keys at home.", "The {s} watched the sunset from the hill.",
    "A {s} asked the teacher a question.", "The {s} visited the museum last week.",
    "The {s} paid for the coffee.", "The {s} climbed the tall ladder.",
    "The {s} fed the cat before leaving.", "In the morning the {s} read the newspaper.",
    "The {s} was late for the meeting.", "The {s} counted the money twice.",
    "The {s} cleaned the windows of the house.", "The {s} waved from the balcony.",
    "The {s} found a coin on the sidewalk.", "The {s} wore a warm coat in winter.",
    "The {s} cried at the end of the film.", "The {s} ordered soup at the restaurant.",
    # held out: the probe never trains on these contexts
    "The {s} crossed the bridge at night.", "A quiet {s} sat alone in the library.",
    "The {s} repaired the roof after the storm.", "The {s} thanked the nurse warmly.",
    "The {s} sold apples at the fair.", "The {s} lost the umbrella on the way.",
    "The {s} whistled while walking the dog.", "The {s} signed the papers at the bank.",
    "The {s} baked a cake for the party.", "The {s} looked at the map carefully.",
    "The {s} shouted across the field.", "The {s} opened a small shop downtown.",
]
HELDOUT_TEMPLATES = 12


def rows() -> list[dict]:
    """One row per (template, subject): text, label, subject, template index, split."""
    out = []
    for t, template in enumerate(TEMPLATES):
        split = "heldout" if t >= len(TEMPLATES) - HELDOUT_TEMPLATES else "train"
        for label, subjects in SUBJECTS.items():
            for subject in subjects:
                out.append({"text": template.format(s=subject), "label": label, "subject": subject,
                            "template": t, "split": split})
    return out


class GroupSentences(LabelledText):
    """The generated sentences as a `LabelledText` dataset (no file needed)."""

    def __init__(self, key: str = "dataset"):
        self.path, self.key = Path("<sae_lab.group_sentences>"), key
        self._init_rows(rows(), "text", "label")


def main(argv: list[str] | None = None) -> int:
    from labcore.tables import write_csv
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    table = rows()
    write_csv(args[0], table)
    print(f"wrote {len(table)} sentences to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
