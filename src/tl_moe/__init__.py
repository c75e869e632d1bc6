"""tl_moe: expert-level interpretability for Mixture-of-Experts models on TransformerLens."""

__version__ = "0.1.0"
