"""xent_jax: tail-accurate entropy and cross-entropy in JAX."""
