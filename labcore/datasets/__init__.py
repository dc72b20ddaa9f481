"""Datasets the research lines share: each a small class that builds its examples deterministically."""
