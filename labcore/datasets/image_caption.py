"""Images with a prompt and a group label, read from a local table: the inputs of a vision-language
activation study (e.g. portraits labelled by a group, one prompt for all or one per image).

The table is a CSV (header row) or JSONL file (one object a line), one row per sample:

    image,label,prompt
    faces/001.png,female,Describe this person.
    faces/002.png,male,

`image` is a path relative to `image_dir` (default: the table's own folder) or absolute; `label` is
the group; `prompt` is optional (a missing column or an empty cell takes the default `prompt`).
Everything is checked when the dataset is built, before any model loads: a missing table, column or
image file is a ConfigError naming the key (and the file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from labcore.datasets.labelled import read_table
from labcore.validate import ConfigError

TABLE_TYPES = (".csv", ".jsonl")


class ImageCaptions:
    def __init__(self, path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 prompt: str = "Describe this image.", prompt_field: str = "prompt", image_field: str = "image",
                 label_field: str = "label", key: str = "dataset.path"):
        group = key.rsplit(".", 1)[0]    # "dataset": the other keys' prefix in errors
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ConfigError(key, f"no table of images at {self.path}")
        if self.path.suffix.lower() not in TABLE_TYPES:
            raise ConfigError(key, f"{self.path}: unknown table type {self.path.suffix!r} "
                              f"(expected one of {TABLE_TYPES})")
        rows = read_table(self.path, key)
        if not rows:
            raise ConfigError(key, f"{self.path}: the table has no rows")
        for field, field_key in ((image_field, "image_field"), (label_field, "label_field")):
            missing = [i for i, row in enumerate(rows) if field not in row]
            if missing:
                raise ConfigError(f"{group}.{field_key}", f"{self.path}: no column {field!r} (row {missing[0] + 1}; "
                                  f"columns: {sorted(rows[missing[0]])})")
            # a short CSV row reads as None, an empty cell as "": neither names an image or a group
            empty = [i for i, row in enumerate(rows) if row[field] in (None, "")]
            if empty:
                raise ConfigError(f"{group}.{field_key}", f"{self.path}: row {empty[0] + 1} has no {field!r}")

        root = Path(image_dir).expanduser() if image_dir is not None else self.path.parent
        self.images = [root / str(row[image_field]) for row in rows]
        for i, image in enumerate(self.images):
            if not image.is_file():
                raise ConfigError(f"{group}.image_dir" if image_dir is not None else key,
                                  f"row {i + 1}: image file {image} not found")
        self.prompts = [str(row.get(prompt_field) or prompt) for row in rows]
        names = [str(row[label_field]) for row in rows]
        self.label_names = sorted(set(names))
        if len(self.label_names) < 2:
            raise ConfigError(f"{group}.label_field",
                              f"{self.path}: {len(self.label_names)} label group(s) {self.label_names} in column "
                              f"{label_field!r}; a group comparison needs at least 2")
        index = {name: i for i, name in enumerate(self.label_names)}
        self.labels = np.array([index[name] for name in names], dtype=np.int64)
        self.ids = np.arange(len(rows), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, i: int) -> str:
        return f"{self.images[i].name}: {self.prompts[i]}"

    def batch(self, lm, indices: list[int], max_length: int | None = None) -> dict:
        """The encoded batch of samples `indices` (images opened as RGB), ready for `lm.forward`."""
        from PIL import Image

        images = []
        for i in indices:
            with Image.open(self.images[i]) as image:    # convert() copies, so the file closes here
                images.append(image.convert("RGB"))
        return lm.encode_images(images, [self.prompts[i] for i in indices], max_length)
