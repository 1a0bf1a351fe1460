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
  if mask is None and len(axes) == 1 and z.size > 0:
    # One class axis, nothing masked: the fast statistics of [B, C] rows (the class axis
    # moved last; free when it is last), then (z - m) - L in arithmetic only, so that a
    # reduction of the output in the caller's loss fuses with it (a select's output
    # reaches XLA:CPU's fused reductions as a [B, C] temporary: 4x jax.nn's time).
    # shift clamps both sides to fmax; in a row whose maximum is +inf that leaves its
    # finite logits at about -fmax, which the factor 2 takes to -inf (+inf logits: 0).
    moved = jnp.moveaxis(z, axes[0], -1)
    rows = _normalizer.as_rows(moved)
    m, lse = _normalizer.max_stats(rows)
    k = 1 + (m == jnp.inf).astype(z.dtype)
    (rows,) = _normalizer.separate(rows, 1)
    log_p = (_normalizer.shift(rows, m, (1,)) * k - lse).reshape(moved.shape)
    return jnp.moveaxis(log_p, -1, axes[0])
  m, lse = _normalizer.stats(z, axes)
  return _normalizer.log_shift(z, m, axes) - lse


@_log_softmax.defjvp
def _log_softmax_jvp(axes, primals, tangents):
  logits, mask = primals
  dz = _core.masked(tangents[0], mask)
  z = _normalizer.masked_logits(logits, mask)
  log_p = _log_softmax(logits, axes, mask)
  return log_p, _core.masked(_log_softmax_linear(z, log_p, dz, axes=axes), mask)


def _log_softmax_tangent(z, log_p, dz, *, axes):
  """d log p = dz - Σ_j p_j dz_j, exact at a dominant class: the JVP (forward mode).

  With k a unique maximum (none where the maximum is tied), g = dz at the maximum and
  r = Σ_{j≠k} p_j = 1 - p_k:
    d log p_i = (dz_i - g) - Σ_{j≠k} p_j dz_j + r g   (i ≠ k),
    d log p_k = -Σ_{j≠k} p_j dz_j + r g,
  the dominant class's 1 - p_k as the sum of the others. JAX's transpose of this formula
  (the exact VJP, v_j - p_j Σv with r v_k - p_k Σ_{j≠k} v_j at k) is what every higher
  derivative differentiates; first-order reverse mode evaluates
  :func:`_log_softmax_cotangent`.
  """
  sum_axes = functools.partial(jnp.sum, axis=axes, keepdims=True)
  m = _normalizer.row_max(z, axes)
  g = _normalizer.shift_tangent(z, m, dz, axes)
  at_k = _normalizer.unique_shift(z, m, axes)
  others = jnp.where(at_k, 0, log_p)  # double where: log p_k is not summed

  def plain(others, dz):
    p = jnp.exp(others) * (1 - at_k)
    return sum_axes(p * dz), sum_axes(p)

  def raised(others, dz):
    # The terms of p_j below e^{-80} (float32; e^{-700} in float64) formed as
    # e^{log p_j + 16}·dz_j and summed on their own before the e^{-16}: each may be
    # subnormal (flushed on the CPU) while their sum, or their product with a cotangent
    # in reverse mode, is normal.
    s = _normalizer.raise_switch(others)
    p = jnp.exp(others + _normalizer.RAISE * s) * (1 - at_k)
    low = math.exp(-_normalizer.RAISE)
    split = lambda x: sum_axes(x * (1 - s)) + sum_axes(x * s) * low
    return split(p * dz), split(p)

  # Only rows with such probabilities need the raised sums (they cost several plain passes).
  deepest = jnp.min(jnp.where(log_p > -jnp.inf, log_p, 0), axis=axes)
  deep = _normalizer.is_any(_normalizer.raise_switch(deepest) > 0)
  rest, r = jax.lax.cond(deep, raised, plain, others, dz)
  return jnp.where(at_k, 0, dz - g) - rest + r * g


def _log_softmax_cotangent(z, log_p, v, *, axes):
  """The VJP v - p·Σv in two passes over v, as ``jax.nn``'s, exact at a dominant class.

  Where L < log 2 (p_k > 1/2: the maximum k is unique, and log p_k = -L is the row's
  largest log-probability) the class k gets r v_k - p_k Σ_{j≠k} v_j with
  r = 1 - p_k = -expm1(-L), no v_k - p_k Σv that cancels; that sum runs only when some row
  has such a class. p_j·Σv keeps its tail where p_j alone is subnormal
  (:func:`_normalizer.times_prob_switched`).
  """
  del z
  sum_axes = functools.partial(jnp.sum, axis=axes, keepdims=True)
  neg_lse = jnp.max(log_p, axis=axes, keepdims=True)  # log p of the maximum, -L
  total = sum_axes(v)
  dominant = neg_lse > -_LOG2
  at_k = (log_p == neg_lse) & dominant
  rest = jax.lax.cond(
    _normalizer.is_any(dominant), lambda: sum_axes(jnp.where(at_k, 0, v)), lambda: total
  )
  at_k_value = -_core.expm1(neg_lse) * v - jnp.exp(neg_lse) * rest
  return jnp.where(at_k, at_k_value, v - _normalizer.times_prob_switched(log_p, total))


_log_softmax_linear = _normalizer.linear_map(
  "xent_jax_log_softmax_tangent", _log_softmax_tangent, _log_softmax_cotangent
)


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
