"""Divergences between distributions: KL (seed §3.1–3.2: H(p, q) = H(p) + KL(p‖q)) and JS.

KL(p‖q) = H(p, q) - H(p) is what cross-entropy adds on top of the target's own entropy, the
"distance" the seed's §3.2 alludes to. Same conventions as :mod:`xent_jax.cross_entropy`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core, _normalizer
from xent_jax._measures import Role, measure
from xent_jax.softmax import _log_softmax


@measure(p=Role.DISTRIBUTION, q=Role.DISTRIBUTION)
def kl_divergence(
  p: ArrayLike,
  q: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Kullback–Leibler divergence KL(p‖q) of model q from target p.

  .. math::
    \mathrm{KL}(p\|q) = \sum_j p_j \log\frac{p_j}{q_j} = H(p, q) - H(p) \ge 0 .

  Summed term by term (p_j (log p_j - log q_j)), so p ≈ q gives a small result without the
  cancellation of H(p, q) - H(p); absolute error ≤ 1e-6·(1 + H(p, q)) in float32 (SPEC §2).
  0·log 0 = 0; p_j > 0 with q_j = 0 gives +inf. Never negative for distributions: a sum
  rounded below 0 (by less than 8·eps·(2 + H(p) + H(p, q)), its rounding bound) is returned as
  0, with its gradient kept (no clamp that zeroes a derivative). Inputs that are not
  distributions (e.g. unnormalised, as in optax's tests) get the formula's value, negative
  if it is: never a silent 0. :func:`xent_jax.checked` rejects them;
  :func:`generalized_kl_divergence` is the divergence meant for unnormalised measures.

  Args:
    p: target probabilities ``[..., C, ...]``.
    q: model probabilities, same shape.
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to ``p``; False entries are excluded.
    base: logarithm base; None for nats.

  Returns:
    KL(p‖q) per example: ``p`` with ``axis`` removed.

  >>> round(float(kl_divergence([1.0, 0.0], [0.5, 0.5], base=2)), 5)
  1.0
  """
  p, q, axes, mask, scale = _core.distribution_pair("kl_divergence", p, q, axis, where, base)
  p, q = _core.masked_pair(p, q, mask)
  neg_entropy_terms, cross_terms = _core.xlogy(p, p), _core.xlogy(p, q)
  terms = _core.masked(neg_entropy_terms - cross_terms, mask)
  # Rounding bound: the parts that cancel, and p + q for inputs whose sums are 1 only up
  # to rounding (KL ≥ Σp·log(Σp/Σq) ≈ Σp - Σq can then be -eps).
  magnitude = jnp.abs(neg_entropy_terms) + jnp.abs(cross_terms) + p + q
  magnitude = jnp.sum(_core.masked(magnitude, mask), axis=axes)
  kl = _core.nonnegative_within_rounding(jnp.sum(terms, axis=axes), magnitude)
  return _core.in_base(kl, scale)


@measure(p=Role.MEASURE, q=Role.MEASURE)
def generalized_kl_divergence(
  p: ArrayLike,
  q: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Generalised KL divergence of unnormalised non-negative measures, target p first.

  .. math::
    D(p\|q) = \sum_j \Big(p_j \log\frac{p_j}{q_j} - p_j + q_j\Big) \ge 0,

  the Bregman divergence of x log x - x (optax's ``generalized_kl_divergence(log q, p)``,
  scipy's ``rel_entr(p, q) - p + q`` summed). Equal to :func:`kl_divergence` when both sum
  to 1. Every term is ≥ 0, so a term rounded below 0 is returned as 0 (gradient kept).
  0·log 0 = 0 (a class with p_j = 0 contributes q_j); p_j > 0 with q_j = 0 gives +inf.
  Absolute error ≤ 1e-6·(Σp + Σq + H) in float32, with H = Σ|p log p| + Σ|p log q|.

  Args:
    p: target measure ``[..., C, ...]``, entries ≥ 0.
    q: model measure, same shape, entries ≥ 0.
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to ``p``; False entries are excluded.
    base: logarithm base; None for nats.

  Returns:
    D(p‖q) per example: ``p`` with ``axis`` removed.

  >>> d = generalized_kl_divergence([2.0, 0.0], [1.0, 1.0])  # 2 log 2 - 2 + 2
  >>> float(d)  # doctest: +ELLIPSIS
  1.386...
  """
  fn = "generalized_kl_divergence"
  p, q, axes, mask, scale = _core.distribution_pair(fn, p, q, axis, where, base)
  p, q = _core.masked_pair(p, q, mask)
  a, b = _core.xlogy(p, p), _core.xlogy(p, q)
  terms = (a - b) - (p - q)
  magnitude = jnp.abs(a) + jnp.abs(b) + p + q
  terms = _core.nonnegative_within_rounding(terms, magnitude)
  return _core.in_base(jnp.sum(_core.masked(terms, mask), axis=axes), scale)


@measure(p_logits=Role.LOGITS, q_logits=Role.LOGITS)
def kl_divergence_from_logits(
  p_logits: ArrayLike,
  q_logits: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""KL(softmax(p_logits) ‖ softmax(q_logits)), from tail-accurate log-softmaxes.

  .. math::
    \mathrm{KL}(p\|q) = \sum_j p_j (\log p_j - \log q_j), \quad
    \log p = \mathrm{log\_softmax}(z^p),\; \log q = \mathrm{log\_softmax}(z^q).

  Both log-probabilities come from :func:`xent_jax.log_softmax`, so a dominant class keeps
  its tiny log-probability; classes with p_j = 0 (a -inf p-logit) contribute 0, a -inf
  q-logit where p_j > 0 gives +inf. Gradient w.r.t. ``q_logits``: softmax(q) - p.

  Two nearby distributions (distillation, a KL penalty between policies) keep relative
  precision, beyond SPEC §2's absolute bound: the log-ratios are formed without the
  rounding of the two log-normalisers, log p_j - log q_j = d_j - log1p(Σ_i q_i expm1(d_i))
  with d = (z^p - z^q) - (max z^p - max z^q), and summed as Σ_j q_j h(u_j) with
  h(u) = u e^u - expm1(u) ≥ 0 (Σ_j p_j - q_j = 0), so no term cancels another. For
  ``[0, -12, -1]`` against ``[0, -12.25, -1]`` it returns 1.2936570e-07 (exact
  1.2936568e-07; the plain sum gives 1.47e-07), and ∂/∂q_logits = -q expm1(u) keeps its
  digits where q - p would lose them.

  Args:
    p_logits: target logits ``[..., C, ...]``.
    q_logits: model logits, same shape.
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to the logits; False entries are excluded.
    base: logarithm base; None for nats.

  Returns:
    KL per example: the logits' shape with ``axis`` removed.

  >>> float(kl_divergence_from_logits([0.0, 0.0], [0.0, 0.0]))
  0.0
  """
  fn = "kl_divergence_from_logits"
  p_logits, q_logits, axes, mask, scale = _core.distribution_pair(
    fn, p_logits, q_logits, axis, where, base, names=("p_logits", "q_logits")
  )
  _core.check_classes(p_logits, axes, "p_logits", fn)
  # Excluded entries masked before the custom_jvp, so that their tangents are 0 as well.
  p_logits, q_logits = _core.masked(p_logits, mask), _core.masked(q_logits, mask)
  return _core.in_base(_kl_from_logits(axes, p_logits, q_logits, mask), scale)


_LOG2 = math.log(2.0)


def _h_coefficients(dtype) -> tuple[float, ...]:
  """(n - 1)/n! for n = N, ..., 2: h(u) = u e^u - expm1(u) = Σ_{n≥2} (n - 1)/n! u^n, to below
  eps·h(u) for |u| < 1 (N = 14 in float32, 22 in float64)."""
  top = 14 if jnp.dtype(dtype) == jnp.float32 else 22
  return tuple((n - 1) / math.factorial(n) for n in range(top, 1, -1))


def _kl_terms(u, log_p, log_q, p, q):
  """q_j h(u_j) = p_j u_j - p_j + q_j ≥ 0 with u_j = log(p_j / q_j): the KL's terms.

  Σ_j (p_j - q_j) = 0, so KL = Σ_j p_j u_j = Σ_j q_j h(u_j), a sum of non-negative terms:
  nothing cancels between classes. h(u) = u e^u - expm1(u) ≈ u²/2 comes from its series
  for |u| < 1 (where p_j u_j and p_j - q_j cancel) and as p_j (u_j - 1) + q_j beyond it.
  """
  small = jnp.abs(u) < 1
  us = jnp.where(small, u, 0)
  series = jnp.zeros_like(us)
  for a in _h_coefficients(u.dtype):
    series = (series + a) * us
  series = series * us  # Σ a_n u^n from n = 2
  support = log_p > -jnp.inf
  ub = jnp.where(small | ~support, 2, u)  # u = -inf where p = 0: its term is q
  big = jnp.where(support, p * (ub - 1), 0) + q
  present = support | (log_q > -jnp.inf)
  return jnp.where(present, jnp.where(small, q * series, big), 0)


def _log_ratio(axes, p_logits, q_logits, mask, log_p, log_q):
  r"""u_j = log p_j - log q_j, without the rounding of the two log-normalisers.

  log p_j - log q_j = Δ_j - (lse_p - lse_q) with Δ = z^p - z^q; each log-normaliser is
  known to an absolute error of about eps, which swamps a KL of two nearby distributions
  (14% off at 1.3e-7 in float32, 0 for 2.7e-36 in float64). Here, with m^p and m^q the
  rows' maxima and d_j = (z^p_j - z^q_j) - (m^p - m^q),

  .. math::
    \mathrm{lse}_p - \mathrm{lse}_q - (m^p - m^q) = \log \sum_j q_j e^{d_j}
    = \operatorname{log1p}(S), \qquad S = \sum_j q_j \operatorname{expm1}(d_j),

  so u_j = d_j - log1p(S) is exact to rounding where p is near q (|S| < ½), and exactly
  0 at a top class both share when the others agree. Elsewhere nothing cancels and
  u = log p - log q. Returns (u, whether the row is near).
  """
  zp = _normalizer.masked_logits(p_logits, mask)
  zq = _normalizer.masked_logits(q_logits, mask)
  sum_axes = functools.partial(jnp.sum, axis=axes, keepdims=True)

  def row_max(z):  # a constant to the derivatives (any shift gives the same u)
    m = jnp.max(z, axis=axes, keepdims=True)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))

  # d_j = (z^p_j - z^q_j) - (m^p - m^q): two roundings of differences of nearby numbers
  # wherever the logits are near (a KL penalty, distillation) or offset by a constant.
  # A non-finite logit where p or q has mass makes d_j = ±inf or NaN: S is then not finite
  # or at least ½ (the row is not near), or u_j = -inf (p_j = 0), its limit. A class with
  # p_j > 0 = q_j (KL = +inf) counts as S = +inf; classes with p_j = q_j = 0 not at all.
  # d is recomputed where it is used (from references XLA keeps apart): shared, it would
  # be written out as a [B, C] temporary (453 against 359 ms at 65536×1000).
  c = row_max(zp) - row_max(zq)
  (zp1, zp2), (zq1, zq2) = _normalizer.separate(zp, 2), _normalizer.separate(zq, 2)
  d = (zp1 - zq1) - c
  q_present = log_q > -jnp.inf
  dq = jnp.where(q_present, d, 0)  # double where: NaN and ±inf stay out of the derivatives
  # S = Σ_j q_j expm1(d_j): the terms as q_j expm1(d_j), and where d_j ≥ 1 as
  # e^{log q_j + d_j} - q_j (no overflow of e^{d_j}; capped at e^1, where S ≥ ½ anyway).
  low = dq < 1
  q = jnp.exp(log_q)
  raised = jnp.exp(jnp.minimum(jnp.where(q_present, log_q, 0) + jnp.where(low, 0, dq), 1)) - q
  s_terms = jnp.where(low, q * _core.expm1(jnp.where(low, dq, 0)), raised)
  lost = jnp.where(log_p > -jnp.inf, jnp.inf, 0).astype(d.dtype)
  s = sum_axes(jnp.where(q_present, s_terms, lost))
  # Far apart (|S| ≥ ½) nothing cancels: log p - log q there (log1p(S) would lose
  # digits as S → -1, and e^{log q_j + d_j} its own as d_j grows).
  near = jnp.abs(s) < 0.5
  exact = ((zp2 - zq2) - c) - jnp.log1p(jnp.where(near, s, 0))
  present = (log_p > -jnp.inf) | (log_q > -jnp.inf)
  plain = jnp.where(present, log_p, 0) - jnp.where(present, log_q, 0)
  return jnp.where(near, exact, plain), near


def _kl_from_logits_parts(axes, p_logits, q_logits, mask):
  log_p = _log_softmax(p_logits, axes, mask)
  log_q = _log_softmax(q_logits, axes, mask)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  sum_axes = functools.partial(jnp.sum, axis=axes, keepdims=True)
  # Double where: the p = 0 entries never see (-inf) - (-inf), in value or in derivative.
  support = log_p > -jnp.inf  # also where p itself is subnormal (flushed to 0)
  log_ratio, accurate = _log_ratio(axes, p_logits, q_logits, mask, log_p, log_q)  # +inf: q = 0 < p
  kl = sum_axes(_kl_terms(log_ratio, log_p, log_q, p, q))
  # ∂/∂z^q = q - p (Σp = 1), as -q expm1(u) where u is exact (p near q, which q - p
  # loses) and below 1 (beyond it, p > e·q, q - p does not cancel).
  low = accurate & (log_ratio < 1)
  grad_q = jnp.where(low, -q * _core.expm1(jnp.where(low, log_ratio, 0)), q - p)
  # ∂/∂z^p = p_j (r_j - KL), r = log p - log q. For the dominant p_j, r_j - KL cancels; it
  # is (1 - p_j) r_j - Σ_{k≠j} p_k r_k with 1 - p_j = -expm1(log p_j). Where r_j = +inf
  # (q_j = 0 < p_j) the limit is +inf; where only KL is +inf, -inf.
  p_dominant = log_p > -_LOG2
  finite = log_ratio < jnp.inf
  r = jnp.where(finite & support, log_ratio, 0)
  rest = sum_axes(jnp.where(p_dominant, 0, p * r))
  r_minus_kl = jnp.where(p_dominant, -_core.expm1(log_p) * r - rest, r - kl)
  r_minus_kl = jnp.where(finite, r_minus_kl, jnp.inf)
  # p_j·(r_j - KL): the product can be a normal number where p_j alone is subnormal
  # (log p_j < -87 in float32, r_j ≈ 88).
  safe_log_p, safe_r = jnp.where(support, log_p, 0), jnp.where(support, r_minus_kl, 0)
  grad_p = jnp.where(support, _normalizer.times_prob(safe_log_p, safe_r), 0)
  kl = _core.straight_through_nonnegative(jnp.squeeze(kl, axes))
  return kl, (_core.masked(grad_p, mask), _core.masked(grad_q, mask), None), axes


_kl_from_logits = _normalizer.custom_jvp_from_partials(
  lambda *args: _kl_from_logits_parts(*args)[0], _kl_from_logits_parts, num_static=1
)


@measure(p=Role.DISTRIBUTION, q=Role.DISTRIBUTION)
def js_divergence(
  p: ArrayLike,
  q: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Jensen–Shannon divergence, the symmetrised and bounded KL.

  .. math::
    \mathrm{JS}(p, q) = \tfrac12 \mathrm{KL}(p\|m) + \tfrac12 \mathrm{KL}(q\|m),
    \qquad m = \tfrac12 (p + q), \qquad 0 \le \mathrm{JS} \le \log 2 .

  Unlike cross-entropy and KL it is symmetric, and finite even where the supports differ.

  Args:
    p: probabilities ``[..., C, ...]``.
    q: probabilities, same shape.
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to ``p``; False entries are excluded.
    base: logarithm base; None for nats.

  Returns:
    JS(p, q) per example: ``p`` with ``axis`` removed.

  >>> round(float(js_divergence([1.0, 0.0], [0.0, 1.0], base=2)), 5)
  1.0
  """
  p, q, axes, mask, scale = _core.distribution_pair("js_divergence", p, q, axis, where, base)
  p, q = _core.masked(p, mask), _core.masked(q, mask)
  m = (p + q) / 2
  xlogy = _core.xlogy
  terms = (xlogy(p, p) - xlogy(p, m) + xlogy(q, q) - xlogy(q, m)) / 2
  terms = jnp.sum(_core.masked(terms, mask), axis=axes)
  return _core.in_base(_core.straight_through_nonnegative(terms), scale)
