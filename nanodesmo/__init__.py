"""A nanoGPT with a self-state: perturbation regimes, frozen-weight causal test, memory variants.

Not built yet: this research line has no open issue. It will import `labcore` only.
"""
