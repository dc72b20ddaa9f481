"""Attention spectra: query norm vs attention entropy per head, Q/K scaling interventions, gain fits.

Not built yet: this research line has no open issue. It will import `labcore` only.
"""
