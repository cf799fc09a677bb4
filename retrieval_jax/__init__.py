"""retrieval_jax: dense retrieval training and evaluation in JAX/Flax."""

__version__ = "0.1.0"
