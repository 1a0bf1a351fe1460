"""Entropy of a distribution, from probabilities or from logits (seed §2.1–2.4).

Conventions (SPEC §1): 0·log 0 = 0 in the value and in the gradient (a zero-probability
class is treated as outside the support, like a class excluded by ``where``); ``base=None``
gives nats, ``base=2`` bits; float16/bfloat16 inputs are computed and returned in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core, _normalizer
from xent_jax._measures import Role, measure


@measure(probs=Role.DISTRIBUTION)
def entropy(
  probs: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Shannon entropy of a probability vector (seed §2.1, §2.3).

  .. math::
    H(p) = -\sum_j p_j \log p_j, \qquad 0 \log 0 = 0 .

  ``log p`` is evaluated as ``log1p(p - 1)`` for p > 1/2, so a near-certain distribution
  keeps the relative precision of its small entropy. Relative error ≤ 1e-6 (float32) and
  ≤ 1e-13 (float64) wherever the exact value is normal (SPEC §2). The gradient is
  -log p_j - 1, and 0 where p_j = 0.

  Args:
    probs: probabilities ``[..., C, ...]`` (not checked to sum to 1; see
      :func:`xent_jax.checked`).
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to ``probs``; False entries are excluded.
    base: logarithm base; None for nats.

  Returns:
    Entropy per example: ``probs`` with ``axis`` removed.

  >>> round(float(entropy([0.5, 0.5], base=2)), 5)
  1.0
  """
  fn = "entropy"
  probs = _core.as_float(probs, "probs", fn)
  axes = _core.normalize_axis(axis, probs.ndim, "probs", fn)
  mask = _core.as_mask(where, probs.shape, fn)
  scale = _core.log_scale(base, fn)
  probs = _core.masked(probs, mask)  # excluded entries never reach the log (double where)
  terms = _core.masked(0.0 - _core.xlogy(probs, probs), mask)  # +0, not -0, at p = 1
  return _core.in_base(jnp.sum(terms, axis=axes), scale)


# Entropy of softmax(z) from the statistics (m, L): d̄ = Σ_j q_j d_j ≤ 0 with q = e^{d - L},
# then H = Σ_j q_j (L - d_j) = L - d̄, a sum of two non-negative terms. clamp_neg_inf makes
# q·d = 0 (not 0·(-inf)) on impossible classes. ∂H/∂z_i = -q_i (log q_i + H) = -q_i (d_i - d̄):
# the mean d̄ is subtracted once per row instead of forming log q_i + H, which cancels for
# the dominant class. q_i = e^{d_i - L} is subnormal (flushed to 0 on CPU) below -87 in
# float32 while q_i·|d_i - d̄| can still be normal: the exponent is raised by 16 and the
# product scaled back. The same holds for the terms of d̄ itself (e.g. z = [90, 0, -3, 5, 1]
# in float32: the terms of q_j ≈ e^{-90} add 2.6% to H = 1.07e-35): the general path sums
# the terms below the underflow threshold in a raised exponent, and the fast path hands
# the rows whose H is small enough for them to matter to it.


def _entropy_flushed(h: jax.Array, num_classes: int) -> jax.Array:
  """Whether H is so small that terms q_j·|d_j| of subnormal q_j (each < 87.3·tiny in
  float32, flushed in a plain pass) could matter: z = [90, 5, 0, ..., 0] in float32."""
  weight = -math.log(float(jnp.finfo(h.dtype).tiny))
  return h < _normalizer.flush_bound(num_classes, h.dtype, weight)


def _mean_shift(z, m, lse, axes, branch_free=False):
  """d̄ = Σ_j q_j d_j (kept as size 1) from the statistics.

  Differentiated by autodiff (the general path, the fallback rows). First the plain
  products, one fused pass, whose derivatives cancel exactly against those of L. Terms of
  subnormal q_j are flushed there; where H = L - d̄ is small enough for them to matter
  (C·87·tiny/eps, as on the fast path), d̄ is summed again with the terms below q = e^{-80}
  (float32; e^{-700} in float64) in a raised exponent, scaled back after their own sum.
  That pass costs about 10x the plain one on XLA:CPU (350 vs 27 ms at 65536x1000), so it
  runs only there (``branch_free``: always, for the few rows of ``fix_rows``).
  """

  def split():
    d = _normalizer.shift(z, m, axes)
    log_q, x = d - lse, _normalizer.clamp_neg_inf(d, m)
    s = _normalizer.raise_switch(log_q)
    plain = _normalizer.row_sum(jnp.exp(log_q) * x * (1 - s), axes)
    raised = _normalizer.row_sum(jnp.exp(log_q + _normalizer.MASS_RAISE * s) * x * s, axes)
    return plain + raised * math.exp(-_normalizer.MASS_RAISE)

  if branch_free:
    return split()
  d = _normalizer.shift(z, m, axes)
  plain = _normalizer.row_sum(jnp.exp(d - lse) * _normalizer.clamp_neg_inf(d, m), axes)
  num_terms = math.prod(z.shape[a] for a in axes)
  low = _entropy_flushed(lse - plain, num_terms)
  return jax.lax.cond(_normalizer.is_any(low), split, lambda: plain)


def _entropy_partials(z, m, lse, d_bar, axes):
  d = _normalizer.shift(z, m, axes)
  r = _normalizer.clamp_neg_inf(d, m) - d_bar  # finite where d = -inf (q = 0)
  # -q·r, with no underflow of q where q·|r| is still normal, and no select.
  return -_normalizer.times_prob(d - lse, r)


def _entropy_parts(axes, logits, mask):
  z = _normalizer.masked_logits(logits, mask)
  m, lse = _normalizer.stats(z, axes)
  d_bar = _mean_shift(z, m, lse, axes)
  grad = _core.masked(_entropy_partials(z, m, lse, d_bar, axes), mask)
  return jnp.squeeze(lse - d_bar, axes), (grad, None), axes


_entropy_from_logits = _normalizer.custom_jvp_from_partials(
  lambda *args: _entropy_parts(*args)[0], _entropy_parts, num_static=1
)


# Fast path of entropy_from_logits, [B, C] logits: the statistics (m, L, d̄) from two YNN
# passes (max + Σe, and Σ e·d with its own row max), H = log Σe - d̄; rows with a dominant
# class and a small H, where log Σe is not accurate enough, get the log1p of the
# non-maximal mass (one more pass over all rows when they are many, else row by row), and
# rows that come out non-finite (±inf or NaN logits) the exact statistics. Under
# differentiation the partials are one elementwise pass from those statistics.


def _exact_entropy_stats(z_KxC):
  m, lse = _normalizer.exact_stats(z_KxC)
  m, lse = m[:, None], lse[:, None]
  return m[:, 0], lse[:, 0], _mean_shift(z_KxC, m, lse, (1,), branch_free=True)[:, 0]


@_normalizer.row_batched
def _entropy_fast_stats_impl(z_BxC):
  num_classes = z_BxC.shape[1]
  z1, z2 = _normalizer.separate(z_BxC, 2)  # each pass fuses its own row max
  m = _normalizer.row_max(z1, (1,))
  total = _normalizer.row_sum(jnp.exp(z1 - m), (1,))
  d = z2 - _normalizer.row_max(z2, (1,))
  d_bar = _normalizer.row_sum(jnp.exp(d) * _normalizer.clamp_neg_inf(d, total), (1,)) / total
  h = jnp.log(total) - d_bar
  dominant = ((total < 2) & (h < 0.25))[:, 0]
  many = _normalizer.is_many(dominant)

  def exact_lse():
    (z3,) = _normalizer.separate(z_BxC, 1)
    mass = _normalizer.plain_mass(z3 - _normalizer.row_max(z3, (1,)), (1,))
    return _normalizer.log_total(total, mass)

  lse = jax.lax.cond(many, exact_lse, lambda: jnp.log(total))
  bad = ~jnp.isfinite((lse - d_bar)[:, 0]) | (dominant & ~many)  # also ±inf logits, NaN
  bad = bad | _entropy_flushed(lse - d_bar, num_classes)[:, 0]
  out = (m[:, 0], lse[:, 0], d_bar[:, 0])
  out = _normalizer.fix_rows(bad, _exact_entropy_stats, out, z_BxC, row_size=num_classes)
  return tuple(x[:, None] for x in out)


@jax.custom_jvp
def _entropy_fast_stats(z_BxC):
  """(m, L, d̄) of ``[B, C]`` rows; with dm = dz at the max (:func:`_normalizer.shift_tangent`)
  and dz' = dz - dm: dL = Σ q dz', dd̄ = Σ_j q_j (1 + d_j - d̄) dz'_j."""
  return _entropy_fast_stats_impl(z_BxC)


@_entropy_fast_stats.defjvp
def _entropy_fast_stats_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  m, lse, d_bar = _entropy_fast_stats(z)
  d = _normalizer.shift(z, m, (1,))
  q = jnp.exp(d - lse)
  dm = _normalizer.shift_tangent(z, m, dz, (1,))
  dz_shifted = _normalizer.zero_at_shift(z, m, dz - dm, (1,))  # exact transpose too
  d_lse = jnp.sum(q * dz_shifted, axis=1, keepdims=True)
  r = _normalizer.clamp_neg_inf(d, m) - d_bar
  terms = _normalizer.times_prob_switched(d - lse, (1 + r) * dz_shifted)  # q·r normal, q not
  d_d_bar = jnp.sum(terms, axis=1, keepdims=True)
  return (m, lse, d_bar), (dm, d_lse, d_d_bar)


@_normalizer.row_batched
def _entropy_fast_value(z_BxC):
  _, lse, d_bar = _entropy_fast_stats_impl(z_BxC)
  return (lse - d_bar)[:, 0]


def _entropy_fast_parts(z_BxC):
  m, lse, d_bar = _entropy_fast_stats(z_BxC)
  h = (lse - d_bar)[:, 0]
  partials = (_entropy_partials(z_BxC, m, lse, d_bar, (1,)),)
  return h, partials, (1,), (_entropy_fast_tangent, (z_BxC, m, lse, d_bar, h))


def _entropy_fast_tangent(z_BxC, m, lse, d_bar, h, dz_BxC):
  """The JVP -Σ_j q_j (d_j - d̄) dz_j in one pass, the terms formed ×e^{16}.

  The scale e^{-16} is applied to the row sum (no term next to the underflow threshold is
  flushed); rows that come out non-finite (±inf logits, NaN) get the plain contraction
  of the exact partials.
  """
  d = z_BxC - m
  r = _normalizer.clamp_neg_inf(d, m) - d_bar
  raised = _normalizer.raised_terms(d - lse, r * dz_BxC, _normalizer.RAISE)
  tangent = -_normalizer.raised_row_sum(raised)
  return _normalizer.exact_unless_finite(tangent, h, _entropy_fast_parts, (z_BxC,), (dz_BxC,))


_entropy_fast = _normalizer.custom_jvp_from_partials(_entropy_fast_value, _entropy_fast_parts)


@measure(logits=Role.LOGITS)
def entropy_from_logits(
  logits: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Entropy of softmax(logits), exact in the tails (seed §2.3).

  .. math::
    H(\mathrm{softmax}(z)) = L - \sum_j q_j d_j, \qquad d_j = z_j - \max_k z_k,\;
    L = \log \sum_j e^{d_j},\; q_j = e^{d_j - L} .

  Both terms are non-negative, and L is evaluated as ``log1p`` of the non-maximal mass, so
  for logits ``[0, -d]`` the result keeps full relative precision, where
  ``-Σ p log_softmax(z)`` (distrax ``Categorical.entropy``) loses the dominant class's term
  and is off by the factor d/(1+d). Relative error ≤ 1e-6 (float32) / 1e-13 (float64)
  wherever the exact value is normal. ``-inf`` logits and classes excluded by ``where`` have
  probability 0; the gradient -q_i (log q_i + H) is finite for finite or -inf logits.

  Args:
    logits: ``[..., C, ...]``; float16/bfloat16 computed and returned in float32.
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to ``logits``; False entries are excluded.
    base: logarithm base; None for nats.

  Returns:
    Entropy per example: ``logits`` with ``axis`` removed.

  >>> round(float(entropy_from_logits([0.0, 0.0], base=2)), 5)
  1.0
  """
  fn = "entropy_from_logits"
  logits = _core.as_float(logits, "logits", fn)
  axes = _core.normalize_axis(axis, logits.ndim, "logits", fn)
  _core.check_classes(logits, axes, "logits", fn)
  mask = _core.as_mask(where, logits.shape, fn)
  scale = _core.log_scale(base, fn)
  if _normalizer.is_fast_case(logits, axes, mask):
    h = _entropy_fast(_normalizer.as_rows(logits)).reshape(logits.shape[:-1])
  else:
    h = _entropy_from_logits(axes, _core.masked(logits, mask), mask)  # (tangents, too)
  return _core.in_base(h, scale)


@measure(p=Role.PROBABILITY)
def binary_entropy(p: ArrayLike, *, base: float | None = None) -> jax.Array:
  r"""Elementwise binary entropy of a Bernoulli(p) (seed §2.4).

  .. math::
    H_b(p) = -p \log p - (1 - p) \log (1 - p)

  Both logs are evaluated where they keep relative precision (``log1p`` on the side of 1,
  and 1 - p is exact for p ≥ 1/2), so H_b(1 - 1e-7) is accurate in float32. The maximum is
  log 2 at p = 1/2. The gradient is log((1-p)/p), with each 0·log 0 term contributing 0.

  Args:
    p: probabilities, any shape.
    base: logarithm base; None for nats.

  Returns:
    H_b(p), same shape as ``p``.

  >>> round(float(binary_entropy(0.5, base=2)), 5)
  1.0
  """
  fn = "binary_entropy"
  p = _core.as_float(p, "p", fn)
  scale = _core.log_scale(base, fn)
  h = 0.0 - _core.xlogy(p, p) - _core.xlog1my(1 - p, p)  # 0.0 - …: +0, not -0, at p = 0, 1
  return _core.in_base(h, scale)


@jax.custom_jvp
def _binary_entropy_from_logits(z):
  a = jnp.minimum(jnp.abs(z), jnp.finfo(z.dtype).max)  # finite at z = ±inf (the term is 0)
  e = jnp.exp(-a)
  # H(σ(z)) = log(1 + e^{-|z|}) + |z| σ(-|z|): both terms ≥ 0 (no cancellation) and each
  # keeps relative precision for large |z| (log1p, and σ(-|z|) = e/(1+e) with no 1 - σ).
  # Beyond |z| = 64, log1p(e) = e and 1 + e = 1 to working precision: H = (1 + |z|) e,
  # formed by _core.times_exp_neg, since e alone underflows (at |z| = 88 in float32) before H.
  return jnp.where(
    a > _core.EXP_TAIL, _core.times_exp_neg(a, 1 + a), jnp.log1p(e) + a * e / (1 + e)
  )


@_binary_entropy_from_logits.defjvp
def _binary_entropy_from_logits_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  a = jnp.abs(z)
  e = jnp.exp(-a)
  # dH/dz = -z σ(z) σ(-z) = -z e / (1 + e)^2, finite (0) at z = ±inf.
  z_fin = jnp.clip(z, -jnp.finfo(z.dtype).max, jnp.finfo(z.dtype).max)
  slope = -_core.times_exp_neg(a, z_fin) / jnp.square(1 + e)
  return _binary_entropy_from_logits(z), slope * dz


@measure(logits=Role.BINARY_LOGITS)
def binary_entropy_from_logits(logits: ArrayLike, *, base: float | None = None) -> jax.Array:
  r"""Elementwise entropy of Bernoulli(σ(z)), exact in both tails (seed §2.4–2.6).

  .. math::
    H(\sigma(z)) = \log\big(1 + e^{-|z|}\big) + \frac{|z|\, e^{-|z|}}{1 + e^{-|z|}}

  Equivalent to ``binary_entropy(sigmoid(z))`` but never forms 1 - σ(z), so
  H(σ(80)) ≈ 81·e^{-80} keeps full relative precision (σ(80) rounds to 1). The gradient is
  -z σ(z) σ(-z).

  Args:
    logits: any shape; float16/bfloat16 computed and returned in float32.
    base: logarithm base; None for nats.

  Returns:
    H(σ(z)), same shape as ``logits``.

  >>> round(float(binary_entropy_from_logits(0.0, base=2)), 5)
  1.0
  """
  fn = "binary_entropy_from_logits"
  logits = _core.as_float(logits, "logits", fn)
  scale = _core.log_scale(base, fn)
  return _core.in_base(_binary_entropy_from_logits(logits), scale)
