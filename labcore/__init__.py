"""What the research lines share: the Lightning entrypoint, models with named hooks, the
activation/model cache, artifacts, statistics and plotting. Imports none of the lines."""


def run(cfg):
    """Run one job (see labcore.runner.run). Imported lazily so `import labcore` stays cheap."""
    from labcore.runner import run as _run
    return _run(cfg)


__all__ = ["run"]
