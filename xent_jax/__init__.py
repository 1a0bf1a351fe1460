"""xent_jax: entropy and cross-entropy in JAX, exact to float precision in the tails.

The package, module by module. ``import xent_jax`` loads the measures and ``checked``
(re-exported below); the training layer is imported by name (``from xent_jax import fit``).

Measures (SPEC §1, §2; each is defined with ``@measure`` of :mod:`xent_jax._measures`):

- :mod:`xent_jax.softmax` — probabilities from logits: ``log_softmax``, ``sigmoid``,
  ``log_sigmoid``, ``tanh_probability``.
- :mod:`xent_jax.entropy` — H(p) from probabilities or logits, categorical and binary.
- :mod:`xent_jax.cross_entropy` — H(p, q), target first: from probabilities, logits or
  integer labels, categorical and binary.
- :mod:`xent_jax.divergence` — KL (from probabilities, logits, unnormalised measures) and JS.
- :mod:`xent_jax.classification` — reweighted cross-entropies: focal loss, poly-1 loss.
- :mod:`xent_jax.linear_cross_entropy` — the fused ``hidden @ weight`` + softmax
  cross-entropy of a language model's output layer, chunked (SPEC §7).
- :mod:`xent_jax.checked` — ``checked(fn)``: the measures' invalid input *values* raise,
  also under jit (SPEC §5).

Models and training (SPEC §3):

- :mod:`xent_jax.models` — logistic and softmax regression: logits, losses, closed-form
  gradients, and the seed's §4.1 loss.
- :mod:`xent_jax.training` — ``jax.value_and_grad`` + optax: a pure train step, whole runs
  under ``lax.scan``, seeds under ``vmap``, data-parallel with ``jax.sharding``.
- :mod:`xent_jax.fit` — the fast solver: L-BFGS to the optimum, compile included.
- :mod:`xent_jax.optimum` — the reference solver: float64 scipy optima that tests and
  experiments compare with (not for training).
- :mod:`xent_jax.data` — breast_cancer and digits (scikit-learn), synthetic data.

Private building blocks:

- :mod:`xent_jax._measures` — the ``@measure`` decorator: argument roles, their value
  checks, and the registry that ``checked`` and the coverage tests read.
- :mod:`xent_jax._normalizer` — the softmax log-normaliser, exact and fast (the log1p
  trick), and custom derivative rules from closed-form partials.
- :mod:`xent_jax._core` — argument checks, dtype policy, tail-accurate ``log``/``xlogy``.
- :mod:`xent_jax._validate` — argument checks of the training layer's public entries.
- :mod:`xent_jax._static` — functions as jit-static arguments, compared by value.
"""

from xent_jax.checked import checked
from xent_jax.classification import poly_loss_cross_entropy, sigmoid_focal_loss
from xent_jax.cross_entropy import (
  binary_cross_entropy,
  cross_entropy,
  cross_entropy_with_integer_labels,
  sigmoid_binary_cross_entropy,
  softmax_cross_entropy,
  softmax_cross_entropy_with_integer_labels,
)
from xent_jax.divergence import (
  generalized_kl_divergence,
  js_divergence,
  kl_divergence,
  kl_divergence_from_logits,
)
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
