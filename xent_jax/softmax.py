"""Probabilities from logits: tail-accurate log-softmax, sigmoid and the seed's normalised tanh.

Seed §2.2 lists three ways to turn scores into probabilities: the logistic function (binary),
softmax (multi-class) and a normalised tanh. This module implements them so that the *tail*
of each probability keeps full relative precision, which is what every entropy and
cross-entropy in :mod:`xent_jax` is built on.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core, _normalizer
from xent_jax._measures import Role, measure

_LOG2 = math.log(2.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_softmax(logits, axes, mask):
  z = _normalizer.masked_logits(logits, mask)
  m, lse = _normalizer.stats(z, axes)
  return _normalizer.log_shift(z, m, axes) - lse


@_log_softmax.defjvp
def _log_softmax_jvp(axes, primals, tangents):
  logits, mask = primals
  dz = _core.masked(tangents[0], mask)
  log_p = _log_softmax(logits, axes, mask)
  p = jnp.exp(log_p)
  # d log p_i = dz_i - Σ_j p_j dz_j. For the dominant class k (p_k > 1/2, at most one per
  # row) dz_k - p_k dz_k cancels, so p_k's share is taken apart: with g = dz_k,
  #   d log p_k = (1 - p_k) g - Σ_{j≠k} p_j dz_j,   1 - p_k = -expm1(log p_k) exact,
  #   d log p_i = dz_i - p_k g - Σ_{j≠k} p_j dz_j   (i ≠ k).
  # Its transpose (reverse mode) is then g_i - p_i Σg, and g_k (1 - p_k) - p_k Σ_{i≠k} g_i
  # at k: exact in both modes.
  dominant = log_p > -_LOG2
  sum_axes = functools.partial(jnp.sum, axis=axes, keepdims=True)
  g = sum_axes(jnp.where(dominant, dz, 0))
  p_max = sum_axes(jnp.where(dominant, p, 0))
  # Σ_{j≠k} p_j dz_j, the terms of p_j below e^{-80} (float32; e^{-700} in float64)
  # formed as e^{log p_j + 16}·dz_j and summed on their own before the e^{-16}: each may be
  # subnormal (flushed on the CPU) while their sum is normal.
  s = _normalizer.raise_switch(log_p)
  raised = jnp.exp(log_p + _normalizer.RAISE * s) * jnp.where(dominant, 0, dz)
  rest = sum_axes(raised * (1 - s)) + sum_axes(raised * s) * math.exp(-_normalizer.RAISE)
  tangent = jnp.where(dominant, -_core.expm1(log_p) * g, dz - p_max * g) - rest
  return log_p, _core.masked(tangent, mask)


@measure(logits=Role.LOGITS)
def log_softmax(
  logits: ArrayLike, axis: _core.Axis = -1, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Tail-accurate log-softmax.

  .. math::
    \log \mathrm{softmax}(z)_j = (z_j - m) - \operatorname{log1p}\Big(\sum_{k \ne k^*}
    e^{z_k - m}\Big), \qquad m = z_{k^*} = \max_k z_k .

  Unlike ``jax.nn.log_softmax`` (``z - logsumexp(z)``), the log-probability of a dominant
  class keeps full relative precision: for logits ``[0, -30]`` it returns
  ``-9.36e-14`` where the stock formula returns ``0``. Relative error ≤ 1e-6 (float32) and
  ≤ 1e-13 (float64) wherever the exact value is a normal number, up to 4× the change that
  rounding the inputs by one unit already causes (SPEC §2). Seed §2.2–2.3.

  Args:
    logits: scores, any shape ``[..., C, ...]``; float16/bfloat16 are computed and returned
      in float32.
    axis: the class axis (an int or a tuple of ints).
    where: optional boolean mask broadcastable to ``logits``; excluded classes get ``-inf``
      (probability 0) and take no part in the normalisation. ``-inf`` logits are classes of
      probability 0; a row with every class excluded returns ``-inf`` everywhere.

  Returns:
    Log-probabilities, same shape as ``logits``.

  >>> import jax.numpy as jnp
  >>> float(log_softmax(jnp.array([0.0, -30.0]))[0])  # doctest: +ELLIPSIS
  -9.357...e-14

  See also: :func:`jax.nn.log_softmax`, :func:`xent_jax.entropy_from_logits`.
  """
  fn = "log_softmax"
  logits = _core.as_float(logits, "logits", fn)
  axes = _core.normalize_axis(axis, logits.ndim, "logits", fn)
  _core.check_classes(logits, axes, "logits", fn)
  mask = _core.as_mask(where, logits.shape, fn)
  return _log_softmax(logits, axes, mask)


@measure(x=Role.BINARY_LOGITS)
def sigmoid(x: ArrayLike) -> jax.Array:
  r"""Logistic function with full relative precision in both tails.

  .. math::
    \sigma(x) = \frac{1}{1 + e^{-x}} = \frac{e^{x}}{1 + e^{x}}

  Each branch is used where its exponential cannot overflow, so σ(-80) = 1.8e-35 is exact
  to rounding in float32 (a ``0.5 + 0.5·tanh(x/2)`` formulation returns 0 there). Seed §2.4.

  Args:
    x: logits, any shape; float16/bfloat16 are computed and returned in float32.

  Returns:
    σ(x), same shape as ``x``.

  >>> float(sigmoid(-80.0))  # doctest: +ELLIPSIS
  1.8048...e-35
  """
  x = _core.as_float(x, "x", "sigmoid")
  return _sigmoid(x)


@jax.custom_jvp
def _sigmoid(x: jax.Array) -> jax.Array:
  e = jnp.exp(-jnp.abs(x))
  return jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))


@_sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return _sigmoid(x), _sigmoid_slope(x) * dx


@jax.custom_jvp
def _sigmoid_slope(x: jax.Array) -> jax.Array:
  """σ'(x) = σ(x) σ(-x) = e / (1 + e)², e = e^{-|x|}: no 1 - σ."""
  e = jnp.exp(-jnp.abs(x))
  return e / jnp.square(1 + e)


@_sigmoid_slope.defjvp
def _sigmoid_slope_jvp(primals, tangents):
  # σ'' = σ'·(1 - 2σ) = -σ'·tanh(x/2): tanh keeps its digits near 0, where 1 - 2σ (or the
  # autodiff of e^{-|x|}, whose kink at 0 has derivative 0) cancels or is wrong.
  (x,), (dx,) = primals, tangents
  slope = _sigmoid_slope(x)
  return slope, -slope * jnp.tanh(x / 2) * dx


@measure(x=Role.BINARY_LOGITS)
def log_sigmoid(x: ArrayLike) -> jax.Array:
  r"""log σ(x), accurate in both tails.

  .. math::
    \log\sigma(x) = \min(x, 0) - \operatorname{log1p}(e^{-|x|})

  Both terms are ≤ 0, so they add without cancellation; ``log1p`` keeps log σ(30) = -9.4e-14
  instead of rounding it to 0.

  Args:
    x: logits, any shape.

  Returns:
    log σ(x), same shape as ``x``.

  >>> float(log_sigmoid(30.0))  # doctest: +ELLIPSIS
  -9.357...e-14
  """
  x = _core.as_float(x, "x", "log_sigmoid")
  return _log_sigmoid(x)


@jax.custom_jvp
def _log_sigmoid(x: jax.Array) -> jax.Array:
  # -softplus(-x) = -(max(-x, 0) + log1p(e^{-|x|})): the same two non-positive terms.
  return -jax.nn.softplus(-x)


@_log_sigmoid.defjvp
def _log_sigmoid_jvp(primals, tangents):
  # d log σ(x) = σ(-x) dx, also at the kink x = 0, and σ(-x) from its own exact rule: the
  # second derivative -σ(x)σ(-x) keeps the tail (JAX's softplus rule rounds its slope to 1,
  # so d²/dx² log σ was 0 from x = -15 in float32).
  (x,), (dx,) = primals, tangents
  return _log_sigmoid(x), _sigmoid(-x) * dx


@measure(x=Role.BINARY_LOGITS)
def tanh_probability(x: ArrayLike) -> jax.Array:
  r"""The seed's "normalised tanh" probability, computed without cancellation.

  .. math::
    \frac{1 + \tanh x}{2} = \sigma(2x)

  The identity follows from tanh x = 2σ(2x) - 1. Evaluating ``(1 + tanh x) / 2`` literally
  cancels for x ≪ 0 (tanh x rounds to -1 and the result to 0 from x ≈ -9 in float32),
  so it is computed as σ(2x) (2x is exact). Seed §2.2.

  Args:
    x: scores, any shape; float16/bfloat16 are computed and returned in float32.

  Returns:
    Probabilities in [0, 1], same shape as ``x``.

  >>> float(tanh_probability(0.0))
  0.5
  """
  x = _core.as_float(x, "x", "tanh_probability")
  return _tanh_probability(x)


@jax.custom_jvp
def _tanh_probability(x: jax.Array) -> jax.Array:
  return _sigmoid(2 * x)


@_tanh_probability.defjvp
def _tanh_probability_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return _tanh_probability(x), _tanh_probability_slope(x) * dx


@jax.custom_jvp
def _tanh_probability_slope(x: jax.Array) -> jax.Array:
  """d/dx σ(2x) = 2 e / (1 + e)² with e = e^{-2|x|}.

  In float32 e is subnormal (flushed to 0 on CPU) from 2|x| ≈ 87.3 while 2e is still normal
  up to 88.0: there the factor 2 goes into the exponent, e^{log 2 - 2|x|}.
  """
  a = 2 * jnp.abs(x)
  e = jnp.exp(-a)
  two_e = jnp.where(a > 80, jnp.exp(_LOG2 - a), 2 * e)
  return two_e / jnp.square(1 + e)


@_tanh_probability_slope.defjvp
def _tanh_probability_slope_jvp(primals, tangents):
  # d/dx 2σ'(2x) = 4σ''(2x) = -2·(2σ'(2x))·tanh(x): see _sigmoid_slope.
  (x,), (dx,) = primals, tangents
  slope = _tanh_probability_slope(x)
  return slope, -2 * slope * jnp.tanh(x) * dx
