"""Neuron sensitivity of the final linear layer and the single-neuron attack (Suri & Evans, 2020)."""
