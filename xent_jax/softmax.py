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

from xent_jax import _core

# How the softmax-based measures are computed (shared by entropy, cross-entropy and KL).
#
# Accuracy: with m = max_j z_j and d_j = z_j - m (exactly 0 at the maximum), the
# log-normaliser L = log Σ_j e^{d_j} is evaluated as log1p(s), s = Σ_{j≠argmax} e^{d_j},
# whenever Σ e^d < 2: then the maximum is unique, e^{d_max} = 1 is the only term that
# floor() maps to 1, and s = Σ_j (e^{d_j} - floor(e^{d_j})) is exact. The stock
# log(Σ e^d) rounds 1 + s to 1 there and returns log p_max = 0 instead of -s. For
# Σ e^d ≥ 2, log(Σ e^d) ≥ log 2 is already accurate. Every measure is then a sum of
# non-negative terms (L - d_j ≥ 0), so nothing cancels.
#
# Speed (XLA:CPU in jax 0.10). XLA hands a reduction whose inputs are computed by
# arithmetic only (exp, log1p, floor, subtract, multiply, max, min, iota; no compare, no
# select) to YNNPACK, which fuses the whole chain -- even a row max, the exp-sum that uses
# it and a second reduction that uses both -- into one cache-blocked pass over the input
# (measured: max + Σ exp at 3x a read pass, where the same two passes run separately at 4x).
# A compare or select inside the chain, two reductions that are both outputs, or a
# materialised [B, C] temporary split it into separate passes. Each elementwise op inside
# such a pass costs about a third of a read pass. A fresh [B, C] output costs 3x a read pass
# with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` and 10x without.
#
# Hence two implementations of each softmax measure, chosen at trace time:
#  * the fast path (class axis last, no `where`, no label smoothing: what a training loop
#    calls) -- forward: one YNN pass whose formula is exact for almost every row, plus an
#    exact recomputation of the rows it flags (`_rows.fix_rows`); forward+backward: the
#    exponentials are materialised once into the buffer that becomes the gradient, then
#    reduced and rescaled in place (the structure optax gets from autodiff, tail-accurate);
#  * the general path below (any axes, masks, smoothing, ±inf logits): one fast reduction
#    per pass through `_fence`, and the extra log1p pass only when some row has Σ e^d < 2,
#    decided by lax.cond. The fast paths fall back to it row by row.


def _fence(x: jax.Array) -> jax.Array:
  """The identity (NaN stays NaN), as a select XLA cannot fold: it ends the fusion."""
  return jnp.where(x == x, x, jnp.nan)


def row_sum(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Σ over ``axes`` (kept as size 1) as its own, fast, reduction pass (see above)."""
  return _fence(jnp.sum(x, axis=axes, keepdims=True))


def row_max(z: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """max over ``axes`` (kept); an all -inf row gets 0, so that its d = z - m is all -inf."""
  m = jnp.max(z, axis=axes, keepdims=True)
  return jnp.where(m == -jnp.inf, jnp.zeros((), z.dtype), m)


def shift(z: jax.Array, m: jax.Array, exact: bool = True) -> jax.Array:
  """d = z - m, with d = 0 (not inf - inf = NaN) at a +inf maximum when ``exact``.

  ``exact=False`` is the arithmetic-only form for reduction passes over rows whose maximum
  is finite (see :func:`with_inf_guard`).
  """
  if not exact:
    return z - m
  return jnp.where(z == m, jnp.zeros((), z.dtype), z - m)


def with_inf_guard(fn, z: jax.Array, m: jax.Array):
  """fn(z, m, exact), recomputed with ``exact=True`` only when some row maximum is +inf.

  A +inf logit takes all the mass of its row (ties share it): the limit of a large logit.
  The fast form runs outside the conditional (XLA:CPU compiles passes inside a
  conditional branch less well); the exact one only when it is needed.
  """
  fast = fn(z, m, exact=False)
  return jax.lax.cond(
    jnp.any(m == jnp.inf),
    lambda: fn(z, m, exact=True),
    lambda: fast,
  )


def exact_guard(fn, z: jax.Array, m: jax.Array):
  """fn(z, m, exact=True): :func:`with_inf_guard` without its conditional.

  For the few rows a fast path hands to the general one (`_rows.fix_rows`): there run
  time does not matter and a single, branch-free trace halves the compile time.
  """
  return fn(z, m, exact=True)


def log_normalizer(z: jax.Array, m: jax.Array, axes: tuple[int, ...], exact: bool):
  """L = log Σ_j e^{z_j - m}, to full relative precision also when L ≪ 1 (see above).

  An empty row (every d = -inf) gets L = 0. The log1p pass runs only when some row needs
  it, except in the ``exact`` form (the rare path of :func:`with_inf_guard`, and
  :func:`exact_guard`), which always makes both passes and has no conditional to compile.
  """
  total = row_sum(jnp.exp(shift(z, m, exact)), axes)

  def non_max_mass():
    e = jnp.exp(shift(z, m, exact))
    return row_sum(e - jnp.floor(e), axes)

  if exact:
    small = non_max_mass()
  else:
    small = jax.lax.cond(jnp.any(total < 2), non_max_mass, lambda: jnp.zeros_like(total))
  return jnp.where(total >= 2, jnp.log(total), jnp.log1p(small))


def clamp_neg_inf(d: jax.Array) -> jax.Array:
  """max(d, -fmax): lets q · d be 0 where d = -inf and q = e^d = 0, with arithmetic only."""
  return jnp.maximum(d, -jnp.finfo(d.dtype).max)


def is_fast_case(x: jax.Array, axes: tuple[int, ...], mask, smoothing: float = 0.0) -> bool:
  """Whether the fast path applies: class axis last, nothing masked or smoothed, B ≥ 1."""
  return axes == (x.ndim - 1,) and x.size > 0 and mask is None and smoothing == 0


def as_rows(x: jax.Array) -> jax.Array:
  """``[..., C]`` as ``[B, C]`` (a free reshape)."""
  return x.reshape(-1, x.shape[-1])


def separate(x: jax.Array, n: int) -> tuple[jax.Array, ...]:
  """``n`` references to ``x`` that XLA keeps apart (no copy is made).

  Without it XLA shares a subexpression of several passes over ``x`` (``x - max``, an
  ``exp``) by writing it out as a [B, C] temporary, which costs more than recomputing it
  inside each fused pass.
  """
  return jax.lax.optimization_barrier((x,) * n)


def softmax_stats(z_BxC: jax.Array):
  """Materialised exponentials of the logits and their row sums.

  Returns ``(m, e, total)``: the row max ``m`` ``[B, 1]`` (0 for an all ``-inf`` row),
  ``e = exp(z - m)`` ``[B, C]`` and ``total = Σ e`` ``[B, 1]``. A ``+inf`` logit makes its
  row NaN: the callers recompute such rows with the general path.
  """
  m = row_max(z_BxC, (1,))
  e = jnp.exp(z_BxC - m)
  return m, e, jnp.sum(e, axis=1, keepdims=True)


def accurate_lse(e: jax.Array, total: jax.Array, needed: jax.Array) -> jax.Array:
  """L = log Σe, with full relative precision in the rows where ``needed`` (a dominant class).

  ``log(total)`` is accurate where total ≥ 2; below, L = log1p of the non-maximal mass,
  Σ (e - floor e), which costs one more pass over ``e`` -- run only if some row needs it.
  """

  def exact():
    return jnp.where(
      total < 2, jnp.log1p(jnp.sum(e - jnp.floor(e), axis=1, keepdims=True)), jnp.log(total)
    )

  return jax.lax.cond(jnp.any(needed), exact, lambda: jnp.log(total))


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Excluded classes become -inf logits: probability 0, no part in the normaliser."""
  return logits if mask is None else jnp.where(mask, logits, -jnp.inf)


def _log_softmax_fwd(logits, axes, mask):
  z = masked_logits(logits, mask)

  def body(z, m, exact):
    return shift(z, m) - log_normalizer(z, m, axes, exact)

  log_p = with_inf_guard(body, z, row_max(z, axes))
  return log_p, (log_p, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _log_softmax(logits, axes, mask):
  return _log_softmax_fwd(logits, axes, mask)[0]


def _log_softmax_bwd(axes, res, g):
  log_p, mask = res
  p = jnp.exp(log_p)
  g_sum = jnp.sum(g, axis=axes, keepdims=True)
  # ∂/∂z_j = g_j - p_j Σg. For a dominant class (p_j > 1/2) that difference cancels, so it
  # is formed as g_j (1 - p_j) - p_j (Σg - g_j) with 1 - p_j = -expm1(log p_j) exact.
  dominant = -g * jnp.expm1(log_p) - p * (g_sum - g)
  grad = jnp.where(log_p > -math.log(2.0), dominant, g - p * g_sum)
  return _core.masked(grad, mask), None


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


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
  _core.check_classes(logits, axes, "logits", fn)
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
  # -softplus(-x) = -(max(-x, 0) + log1p(e^{-|x|})), with JAX's logaddexp rules: the same
  # two non-negative terms, and the derivative σ(-x) also at the kink x = 0.
  return -jax.nn.softplus(-x)


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
