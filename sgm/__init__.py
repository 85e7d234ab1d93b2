"""sgm: conditional score-based diffusion models for Bayesian inverse problems on gridded fields."""

__version__ = "0.1.0"
