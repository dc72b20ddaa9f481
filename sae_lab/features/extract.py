"""Step 1: every layer in `features.layers` of the model over the labelled dataset, into
`<features.dir>/extraction` (labcore.layer_extraction: per-layer memory-mapped arrays, a checkpoint
every `extract.checkpoint_every` samples, a re-run resumes)."""

from __future__ import annotations

from labcore.task import Task
from sae_lab.features import common


class ExtractTask(Task):
    def validate(self) -> None:
        self.spec = common.model_spec(self.cfg)
        self.layers = common.layers(self.cfg, self.spec.layout().n_layers)
        self.settings = common.extract_settings(self.cfg)
        self.data = common.dataset(self.cfg)
        self.directory = common.extraction_dir(self.cfg)

    def analyse(self) -> dict[str, float]:
        from labcore.layer_extraction import extract_layers
        lm = self.spec.load()
        meta = extract_layers(lm, self.data, self.layers, self.directory, **self.settings)
        self.manifest.add_output("extraction", self.directory)
        bad = {layer: c for layer, c in meta["non_finite"].items() if c["values"]}
        if bad:
            print("non-finite activations (NaN/Inf) by layer: " + ", ".join(
                f"layer {layer}: {c['values']} values in {c['rows']} rows" for layer, c in bad.items()), flush=True)
        return {"samples": float(meta["samples"]), "rows": float(meta["rows"]), "layers": float(len(meta["layers"])),
                "d_model": float(meta["d_model"]),
                "non_finite_values": float(sum(c["values"] for c in meta["non_finite"].values())),
                "layers_with_non_finite": float(len(bad))}
