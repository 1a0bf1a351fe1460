"""Tests of the library, xent_jax: values and derivatives against mpmath, bad input, transformations."""
