"""Entropy of a distribution, from probabilities or from logits (seed §2.1–2.4).

Conventions (SPEC §1): 0·log 0 = 0 in the value and in the gradient (a zero-probability
class is treated as outside the support, like a class excluded by ``where``); ``base=None``
gives nats, ``base=2`` bits; float16/bfloat16 inputs are computed and returned in float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core, _rows
from xent_jax.softmax import (
  as_rows,
  clamp_neg_inf,
  exact_guard,
  is_fast_case,
  log_normalizer,
  masked_logits,
  row_max,
  row_sum,
  separate,
  shift,
  with_inf_guard,
)


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

  >>> float(entropy([0.5, 0.5], base=2))
  1.0
  """
  fn = "entropy"
  probs = _core.as_float(probs, "probs", fn)
  axes = _core.normalize_axis(axis, probs.ndim, "probs", fn)
  mask = _core.as_mask(where, probs.shape, fn)
  scale = _core.log_scale(base, fn)
  terms = _core.masked(-_core.xlogy(probs, probs), mask)
  return _core.in_base(jnp.sum(terms, axis=axes), scale)


def _entropy_fwd(logits, axes, mask, guard=with_inf_guard):
  z = masked_logits(logits, mask)

  def body(z, m, exact):
    lse = log_normalizer(z, m, axes, exact)
    d = shift(z, m, exact)
    # d̄ = Σ_j q_j d_j ≤ 0 with q = e^{d - L}; then H = Σ_j q_j (L - d_j) = L - d̄, a sum of
    # two non-negative terms. clamp_neg_inf makes q·d = 0 (not 0·(-inf)) on impossible
    # classes; the pass depends on L, so XLA cannot fuse it with the normaliser's pass.
    d_bar = row_sum(jnp.exp(d - lse) * clamp_neg_inf(d), axes)
    return lse, d_bar

  m = row_max(z, axes)
  lse, d_bar = guard(body, z, m)
  return jnp.squeeze(lse - d_bar, axes), (z, m, lse, d_bar)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _entropy_from_logits(logits, axes, mask):
  return _entropy_fwd(logits, axes, mask)[0]


def _entropy_bwd(axes, res, g):
  z, m, lse, d_bar = res
  d = shift(z, m)
  # ∂H/∂z_i = -q_i (log q_i + H) = -q_i (d_i - d̄): the mean log-probability d̄ is
  # subtracted once per row instead of forming log q_i + H, which cancels for the dominant
  # class. One fused pass writes the gradient; no [B, C] softmax is kept from the forward.
  # q_i·|d_i - d̄| is formed as exp(d_i - L + log|d_i - d̄|): q_i alone may be subnormal
  # (flushed to 0 on CPU) while the product, up to 88x larger, is a normal number.
  r = clamp_neg_inf(d) - d_bar
  grad = -jnp.sign(r) * jnp.exp(d - lse + jnp.log(jnp.abs(r))) * jnp.expand_dims(g, axes)
  return grad, None


_entropy_from_logits.defvjp(_entropy_fwd, _entropy_bwd)


# Fast path of entropy_from_logits, [B, C] logits (see softmax.py). The forward makes two
# YNN passes (Σe and Σ e·d, e = exp(d), d = z - max z) and H = log Σe - d̄; rows with a
# dominant class and a small H, where log Σe is not accurate enough, get the log1p of the
# non-maximal mass (see `_entropy_fast_fwd`). The backward
# pass writes -q_i (d_i - d̄) once. q_i = e^{x_i}, x = d - L, is subnormal (flushed to 0
# on CPU) for x < -87 in float32 while q_i·|d_i - d̄| can still be normal: there the
# exponent is raised by 16 and the product scaled back, a select between constants that
# costs nothing in the pass (the general path pays a log per element for the same).

_UNDERFLOW = {jnp.dtype(jnp.float32): -80.0, jnp.dtype(jnp.float64): -700.0}
_RAISE = 16.0


def _exact_entropy(z_KxC):
  return _entropy_fwd(z_KxC, (1,), None, exact_guard)[0]


def _exact_entropy_grad(z_KxC, g_K):
  return _entropy_bwd((1,), _entropy_fwd(z_KxC, (1,), None, exact_guard)[1], g_K)[0]


def _entropy_fast_fwd(z_BxC):
  num_rows, num_classes = z_BxC.shape
  z1, z2 = separate(z_BxC, 2)  # each pass fuses its own row max (see `separate`)
  m = row_max(z1, (1,))
  total = row_sum(jnp.exp(z1 - m), (1,))
  d = z2 - row_max(z2, (1,))
  d_bar = row_sum(jnp.exp(d) * clamp_neg_inf(d), (1,)) / total
  h = jnp.log(total) - d_bar
  # log Σe has an absolute error of a few 1e-8: relative to H it matters only where H is
  # small, i.e. a dominant class (Σe < 2). Those rows get L = log1p of the non-maximal
  # mass: from one more pass over all rows when they are many, else row by row.
  dominant = ((total < 2) & (h < 0.25))[:, 0]
  many = jnp.sum(dominant) > num_rows // 8

  def exact_lse():
    (z3,) = separate(z_BxC, 1)
    e = jnp.exp(z3 - row_max(z3, (1,)))
    return jnp.where(total < 2, jnp.log1p(row_sum(e - jnp.floor(e), (1,))), jnp.log(total))

  lse = jax.lax.cond(many, exact_lse, lambda: jnp.log(total))
  h = (lse - d_bar)[:, 0]
  bad = ~jnp.isfinite(h) | (dominant & ~many)  # also ±inf logits, NaN, an all -inf row
  h = _rows.fix_rows(bad, _exact_entropy, h, z_BxC, row_size=num_classes)
  return h, (z_BxC, m, lse, d_bar, bad)


def _entropy_fast_bwd(res, g_B):
  z_BxC, m, lse, d_bar, bad = res
  # A barrier keeps XLA from sharing `z - m` and the broadcast clamp constant with the
  # forward passes by writing them out as [B, C] temporaries.
  lowest = jnp.asarray(jnp.finfo(z_BxC.dtype).min, z_BxC.dtype)
  z_BxC, m, lowest = jax.lax.optimization_barrier((z_BxC, m, lowest))
  d = z_BxC - m
  x = d - lse  # log q
  r = jnp.maximum(d, lowest) - d_bar  # as clamp_neg_inf: finite where d = -inf (q = 0)
  low = x < _UNDERFLOW[x.dtype]
  grad = (jnp.exp(x + jnp.where(low, _RAISE, 0.0)) * r) * (
    -g_B[:, None] * jnp.where(low, math.exp(-_RAISE), 1.0)
  )
  grad = _rows.fix_rows(bad, _exact_entropy_grad, grad, z_BxC, g_B, row_size=z_BxC.shape[1])
  return (grad,)


@jax.custom_vjp
def _entropy_fast(z_BxC):
  return _entropy_fast_fwd(z_BxC)[0]  # the forward rule writes nothing [B, C] either


_entropy_fast.defvjp(_entropy_fast_fwd, _entropy_fast_bwd)


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

  >>> float(entropy_from_logits([0.0, 0.0], base=2))
  1.0
  """
  fn = "entropy_from_logits"
  logits = _core.as_float(logits, "logits", fn)
  axes = _core.normalize_axis(axis, logits.ndim, "logits", fn)
  _core.check_classes(logits, axes, "logits", fn)
  mask = _core.as_mask(where, logits.shape, fn)
  scale = _core.log_scale(base, fn)
  if is_fast_case(logits, axes, mask):
    h = _entropy_fast(as_rows(logits)).reshape(logits.shape[:-1])
  else:
    h = _entropy_from_logits(logits, axes, mask)
  return _core.in_base(h, scale)


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

  >>> float(binary_entropy(0.5, base=2))
  1.0
  """
  fn = "binary_entropy"
  p = _core.as_float(p, "p", fn)
  scale = _core.log_scale(base, fn)
  h = 0.0 - _core.xlogy(p, p) - _core.xlog1my(1 - p, p)  # 0.0 - …: +0, not -0, at p = 0, 1
  return _core.in_base(h, scale)


@jax.custom_jvp
def _binary_entropy_from_logits(z):
  a = jnp.abs(z)
  e = jnp.exp(-a)
  # H(σ(z)) = log(1 + e^{-|z|}) + |z| σ(-|z|): both terms ≥ 0 (no cancellation) and each
  # keeps relative precision for large |z| (log1p, and σ(-|z|) = e/(1+e) with no 1 - σ).
  # e·min(a, fmax) is 0 at z = ±inf (e = 0) without 0·inf or a select.
  return jnp.log1p(e) + e * jnp.minimum(a, jnp.finfo(z.dtype).max) / (1 + e)


@_binary_entropy_from_logits.defjvp
def _binary_entropy_from_logits_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  e = jnp.exp(-jnp.abs(z))
  # dH/dz = -z σ(z) σ(-z) = -z e / (1 + e)^2, finite (0) at z = ±inf.
  slope = -_core.mul0(e, z) / jnp.square(1 + e)
  return _binary_entropy_from_logits(z), slope * dz


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

  >>> float(binary_entropy_from_logits(0.0, base=2))
  1.0
  """
  fn = "binary_entropy_from_logits"
  logits = _core.as_float(logits, "logits", fn)
  scale = _core.log_scale(base, fn)
  return _core.in_base(_binary_entropy_from_logits(logits), scale)
