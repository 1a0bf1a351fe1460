"""Probabilities from logits: tail-accurate log-softmax, sigmoid and the seed's normalised tanh.

Seed §2.2 lists three ways to turn scores into probabilities: the logistic function (binary),
softmax (multi-class) and a normalised tanh. This module implements them so that the *tail*
of each probability keeps full relative precision, which is what every entropy and
cross-entropy in :mod:`xent_jax` is built on.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core


class SoftmaxParts(NamedTuple):
  """The shift-invariant pieces of a softmax, shared by every measure built on it.

  With m = max_j z_j, d_j = z_j - m (exactly 0 at the maximum, -inf for excluded classes)
  and s = Σ_{j ≠ argmax} e^{d_j}, the log-normaliser is log Σ_j e^{d_j} = log1p(s) =: L, and
  log p_j = d_j - L. Both terms of log p_j are ≤ 0 and added without cancellation, and
  log1p keeps the relative precision of L when the maximum dominates (s ≪ 1), where the
  stock log(Σ e^d) rounds 1 + s to 1 and returns log p_max = 0.
  """

  m: jax.Array  # max z, reduced axes kept as size 1
  d: jax.Array  # z - max z, [..., C, ...]
  exp_d: jax.Array  # e^d, [..., C, ...]
  lse: jax.Array  # L = log Σ e^d, reduced axes kept as size 1; 0 for an empty row
  support: jax.Array  # False for a row whose classes are all excluded by `where`


def shifted_logits(logits: jax.Array, m: jax.Array, mask: jax.Array | None) -> jax.Array:
  """d = z - m with d = 0 exactly at the maxima and d = -inf on excluded classes.

  Written with a select so that the maximum gets an exact 0 also when m is infinite (all
  logits -inf, or some +inf): such rows become uniform over the tied maxima, the limit of
  equal logits, instead of inf - inf = NaN.
  """
  d = jnp.where(logits == m, jnp.zeros((), logits.dtype), logits - m)
  return d if mask is None else jnp.where(mask, d, -jnp.inf)


def softmax_parts(
    logits: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
) -> SoftmaxParts:
  """Computes :class:`SoftmaxParts` in two passes over ``logits`` (max, then exp-sum)."""
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  m = jnp.max(logits, axis=axes, keepdims=True)
  is_max = logits == m
  if mask is not None:
    is_max &= mask
  d = shifted_logits(logits, m, mask)
  exp_d = jnp.exp(d)
  count = jnp.sum(is_max, axis=axes, keepdims=True, dtype=logits.dtype)
  # s sums the non-maximal terms directly (never Σ e^d - 1, which would cancel) and adds the
  # exact count of extra ties of the maximum.
  s = jnp.sum(jnp.where(is_max, 0, exp_d), axis=axes, keepdims=True) + (count - 1)
  support = count > 0
  lse = jnp.where(support, jnp.log1p(jnp.maximum(s, 0)), 0)
  return SoftmaxParts(m, d, exp_d, lse, support)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_softmax(logits, axes, mask):
  parts = softmax_parts(logits, axes, mask)
  return parts.d - parts.lse


@_log_softmax.defjvp
def _log_softmax_jvp(axes, primals, tangents):
  logits, mask = primals
  dlogits, _ = tangents
  log_p = _log_softmax(logits, axes, mask)
  p = jnp.exp(log_p)
  # d log p_j = dz_j - Σ_k p_k dz_k. Excluded classes have a constant -inf output: tangent 0.
  dlogits = _core.masked(dlogits, mask)
  dlog_p = dlogits - jnp.sum(p * dlogits, axis=axes, keepdims=True)
  return log_p, _core.masked(dlog_p, mask)


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
  -9.35762...e-14

  See also: :func:`jax.nn.log_softmax`, :func:`xent_jax.entropy_from_logits`.
  """
  fn = "log_softmax"
  logits = _core.as_float(logits, "logits", fn)
  axes = _core.normalize_axis(axis, logits.ndim, "logits", fn)
  mask = _core.as_mask(where, logits.shape, fn)
  return _log_softmax(logits, axes, mask)


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
  1.8048513...e-35
  """
  x = _core.as_float(x, "x", "sigmoid")
  return _sigmoid(x)


def _sigmoid(x: jax.Array) -> jax.Array:
  e = jnp.exp(-jnp.abs(x))
  return jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))


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
  return jnp.minimum(x, 0) - jnp.log1p(jnp.exp(-jnp.abs(x)))


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
  return _sigmoid(2 * x)
