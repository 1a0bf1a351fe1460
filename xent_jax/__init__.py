"""xent_jax: entropy and cross-entropy in JAX, exact to float precision in the tails.

The public API (SPEC §1) is re-exported here; each function lives in one module per topic:
:mod:`xent_jax.softmax`, :mod:`xent_jax.entropy`, :mod:`xent_jax.cross_entropy`,
:mod:`xent_jax.divergence`, :mod:`xent_jax.linear_cross_entropy`.
"""

from xent_jax.checked import checked
from xent_jax.cross_entropy import (
  binary_cross_entropy,
  cross_entropy,
  sigmoid_binary_cross_entropy,
  softmax_cross_entropy,
  softmax_cross_entropy_with_integer_labels,
)
from xent_jax.divergence import js_divergence, kl_divergence, kl_divergence_from_logits
from xent_jax.entropy import (
  binary_entropy,
  binary_entropy_from_logits,
  entropy,
  entropy_from_logits,
)
from xent_jax.linear_cross_entropy import linear_softmax_cross_entropy
from xent_jax.softmax import log_sigmoid, log_softmax, sigmoid, tanh_probability

__version__ = "0.1.0"

__all__ = [
  "binary_cross_entropy",
  "binary_entropy",
  "binary_entropy_from_logits",
  "checked",
  "cross_entropy",
  "entropy",
  "entropy_from_logits",
  "js_divergence",
  "kl_divergence",
  "kl_divergence_from_logits",
  "linear_softmax_cross_entropy",
  "log_sigmoid",
  "log_softmax",
  "sigmoid",
  "sigmoid_binary_cross_entropy",
  "softmax_cross_entropy",
  "softmax_cross_entropy_with_integer_labels",
  "tanh_probability",
]
