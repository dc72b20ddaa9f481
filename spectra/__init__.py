"""Attention spectra: query norm vs attention entropy per head, Q/K scaling interventions, gain fits.

Being built (issue 9): `spectra.metrics` (per token and head: q-norm, entropy, max attention, k_eff,
effective key counts) exists; the Hugging Face adapter, the studies and their CLI do not yet.
It imports `labcore` only.
"""
