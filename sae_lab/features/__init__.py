"""The multi-layer feature pipeline: extract every layer of a model over a labelled dataset, train an
SAE per layer, find the features that separate the two groups, and measure on the model what they do.

    python -m sae_lab.feature_pipeline experiment=feature_minilm          # the whole pipeline, resumable
    python -m sae_lab.train experiment=feature_minilm feature_step=extract
    python -m sae_lab.train -m experiment=feature_minilm 'layer=range(6)'                       # SAEs
    python -m sae_lab.train -m experiment=feature_minilm feature_step=analyse 'layer=range(6)'  # analyses

Steps (each a `labcore` job; `feature_step=` picks it): extract.ExtractTask, layer_sae.LayerSAETask,
analysis.AnalyseTask; report.write_report gathers the per-layer analyses.
"""
