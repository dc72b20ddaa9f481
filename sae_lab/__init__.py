"""Sparse autoencoders on transformer activations: training, evaluation, seed consistency."""
