"""xent_jax: entropy and cross-entropy in JAX, exact to float precision in the tails.

The public API (SPEC §1) is re-exported here; each function lives in one module per topic:
:mod:`xent_jax.softmax`, :mod:`xent_jax.entropy`, :mod:`xent_jax.cross_entropy`,
:mod:`xent_jax.divergence`, :mod:`xent_jax.classification`, :mod:`xent_jax.linear_cross_entropy`.
Each measure is exported as its :func:`xent_jax.checked.checkable`
wrapper (the same function, plus its value checks while a ``checked`` function is traced),
so that ``checked(my_loss)`` checks the calls inside ``my_loss``.
"""

import importlib as _importlib

from xent_jax.checked import checkable as _checkable
from xent_jax.checked import checked


def _measure(module: str, name: str):
  return _checkable(getattr(_importlib.import_module(f"xent_jax.{module}"), name))


binary_cross_entropy = _measure("cross_entropy", "binary_cross_entropy")
cross_entropy = _measure("cross_entropy", "cross_entropy")
cross_entropy_with_integer_labels = _measure("cross_entropy", "cross_entropy_with_integer_labels")
sigmoid_binary_cross_entropy = _measure("cross_entropy", "sigmoid_binary_cross_entropy")
softmax_cross_entropy = _measure("cross_entropy", "softmax_cross_entropy")
softmax_cross_entropy_with_integer_labels = _measure(
  "cross_entropy", "softmax_cross_entropy_with_integer_labels"
)
generalized_kl_divergence = _measure("divergence", "generalized_kl_divergence")
js_divergence = _measure("divergence", "js_divergence")
kl_divergence = _measure("divergence", "kl_divergence")
kl_divergence_from_logits = _measure("divergence", "kl_divergence_from_logits")
binary_entropy = _measure("entropy", "binary_entropy")
binary_entropy_from_logits = _measure("entropy", "binary_entropy_from_logits")
entropy = _measure("entropy", "entropy")
entropy_from_logits = _measure("entropy", "entropy_from_logits")
log_sigmoid = _measure("softmax", "log_sigmoid")
log_softmax = _measure("softmax", "log_softmax")
sigmoid = _measure("softmax", "sigmoid")
tanh_probability = _measure("softmax", "tanh_probability")
sigmoid_focal_loss = _measure("classification", "sigmoid_focal_loss")
poly_loss_cross_entropy = _measure("classification", "poly_loss_cross_entropy")
from xent_jax.linear_cross_entropy import linear_softmax_cross_entropy  # noqa: E402

__version__ = "0.1.0"

__all__ = [
  "binary_cross_entropy",
  "binary_entropy",
  "binary_entropy_from_logits",
  "checked",
  "cross_entropy",
  "cross_entropy_with_integer_labels",
  "entropy",
  "entropy_from_logits",
  "generalized_kl_divergence",
  "js_divergence",
  "kl_divergence",
  "kl_divergence_from_logits",
  "linear_softmax_cross_entropy",
  "log_sigmoid",
  "log_softmax",
  "poly_loss_cross_entropy",
  "sigmoid",
  "sigmoid_binary_cross_entropy",
  "sigmoid_focal_loss",
  "softmax_cross_entropy",
  "softmax_cross_entropy_with_integer_labels",
  "tanh_probability",
]
