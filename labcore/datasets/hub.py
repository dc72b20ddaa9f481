"""Text samples streamed from a Hugging Face dataset (SlimPajama, as the original attention study).

Streaming reads only the first records, so a 627B-token corpus costs seconds. It needs the network
and the optional `datasets` package; offline (`HF_HUB_OFFLINE=1` or `LAB_OFFLINE=1`) the error says
so before anything is fetched, and points at the local-file presets.
"""

from __future__ import annotations

from labcore.datasets.text import offline


class CorpusUnavailableError(RuntimeError):
    pass


class StreamedTexts:
    """The first `n_samples` records of `repo`'s `split` with at least `min_chars` characters in
    `text_field`, each cut to `sample_chars`."""

    def __init__(self, repo: str, n_samples: int, split: str = "train", text_field: str = "text",
                 min_chars: int = 2000, sample_chars: int = 4000, name: str | None = None):
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.repo, self.name, self.split, self.text_field = repo, name, split, text_field
        self.n_samples, self.min_chars, self.sample_chars = n_samples, min_chars, sample_chars

    def check_available(self) -> None:
        if offline():
            raise CorpusUnavailableError(
                f"dataset {self.repo!r} is streamed from the Hugging Face hub, but this machine is offline "
                "(HF_HUB_OFFLINE/LAB_OFFLINE set): use dataset=shakespeare_text or dataset=text_samples "
                "dataset.path=<a local text file>")
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise CorpusUnavailableError(f"streaming {self.repo!r} needs the `datasets` package "
                                         "(pip install datasets)") from None

    def texts(self) -> list[str]:
        self.check_available()
        from datasets import load_dataset
        stream = load_dataset(self.repo, self.name, split=self.split, streaming=True)
        out = []
        for record in stream:
            text = record.get(self.text_field) or ""
            if len(text) >= self.min_chars:
                out.append(text[: self.sample_chars])
                if len(out) == self.n_samples:
                    return out
        raise CorpusUnavailableError(f"{self.repo}: only {len(out)} records with >= {self.min_chars} characters")


def write_streamed_text(path, repo: str, n_chars: int, split: str = "train", text_field: str = "text",
                        name: str | None = None) -> None:
    """Write the first `n_chars` characters of `repo`'s records (joined by blank lines) to `path`,
    atomically (a character corpus for `labcore.datasets.text.CharText`)."""
    from datasets import load_dataset

    from labcore.artifacts import atomic_path
    parts, total = [], 0
    for record in load_dataset(repo, name, split=split, streaming=True):
        text = record.get(text_field) or ""
        parts.append(text)
        total += len(text) + 2
        if total >= n_chars:
            break
    with atomic_path(path) as tmp:
        tmp.write_text("\n\n".join(parts)[:n_chars], encoding="utf-8")
