"""Adversarial attacks, measured in pixel space before the model's normalization."""
