"""Cross-entropy H(p, q) = -Σ p log q, the target p first (seed §3, §4).

Every function returns one value per example (the caller takes ``.mean()``), follows the
conventions of SPEC §1 (``axis``, ``where``, ``base``, 0·log 0 = 0 in value and gradient,
-inf logits as impossible classes, float16/bfloat16 computed and returned in float32) and is
accurate to float precision in the tails (SPEC §2).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core, _rows
from xent_jax.softmax import (
  accurate_lse,
  as_rows,
  exact_guard,
  is_fast_case,
  log_normalizer,
  masked_logits,
  row_max,
  row_sum,
  separate,
  shift,
  softmax_stats,
  with_inf_guard,
)


def cross_entropy(
  p: ArrayLike,
  q: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Cross-entropy of a model distribution q relative to a target p (seed §3.1).

  .. math::
    H(p, q) = -\sum_j p_j \log q_j, \qquad 0 \log q = 0 .

  The target goes first (seed §3.3): H(p, q) ≠ H(q, p). A class with p_j = 0 contributes 0
  to the value and the gradient even where q_j = 0; p_j > 0 with q_j = 0 gives +inf.
  ``log q`` is evaluated as ``log1p(q - 1)`` for q > 1/2 to keep relative precision.

  Args:
    p: target probabilities ``[..., C, ...]``.
    q: model probabilities, same shape as ``p``.
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to ``p``; False entries are excluded.
    base: logarithm base; None for nats.

  Returns:
    H(p, q) per example: ``p`` with ``axis`` removed.

  >>> float(cross_entropy([1.0, 0.0], [0.5, 0.5], base=2))
  1.0
  """
  p, q, axes, mask, scale = _core.distribution_pair("cross_entropy", p, q, axis, where, base)
  terms = _core.masked(-_core.xlogy(p, q), mask)
  return _core.in_base(jnp.sum(terms, axis=axes), scale)


def _smoothed_targets(targets, mask, eps, axes):
  """(1-ε)·targets + ε/K over the K classes in the support; 0 on excluded classes."""
  targets = _core.masked(targets, mask)
  if eps == 0:
    return targets
  if mask is None:
    return (1 - eps) * targets + eps / math.prod(targets.shape[a] for a in axes)
  k = jnp.sum(mask, axis=axes, keepdims=True, dtype=targets.dtype)
  return jnp.where(mask, (1 - eps) * targets + eps / jnp.maximum(k, 1), 0)


_LOG2 = math.log(2.0)


def _inf_where_positive(t: jax.Array) -> jax.Array:
  """+inf where t > 0 and 0 where t = 0, in arithmetic only: sign(t) / (1 - sign(t))."""
  sign = jnp.sign(t)
  return sign / (1 - sign)


def _softmax_xent_fwd(logits, targets, axes, mask, eps, guard=with_inf_guard):
  z = masked_logits(logits, mask)
  t = _smoothed_targets(targets, mask, eps, axes)
  t_sum = row_sum(t, axes)

  def body(z, m, exact):
    lse = log_normalizer(z, m, axes, exact)
    # H = Σ_j t_j (L - d_j) = L·Σt + Σ_j t_j (-d_j): both terms ≥ 0, so nothing cancels
    # (and the pass broadcasts one row value, m, which XLA:CPU fuses well). On an impossible
    # class (-d = +inf) the term is 0 for t_j = 0 (0·log 0 = 0) and +inf for t_j > 0: -d is
    # clamped to fmax and the infinity put back as min(inf·[d = -inf], inf·[t > 0]).
    neg_d = -shift(z, m, exact)
    neg_d_fin = jnp.minimum(neg_d, jnp.finfo(z.dtype).max)
    terms = t * neg_d_fin + jnp.minimum(neg_d - neg_d_fin, _inf_where_positive(t))
    return lse, lse * t_sum + row_sum(terms, axes)

  m = row_max(z, axes)
  lse, loss = guard(body, z, m)
  return jnp.squeeze(loss, axes), (z, t, mask, m, lse, t_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 4))
def _softmax_xent(logits, targets, axes, mask, eps):
  return _softmax_xent_fwd(logits, targets, axes, mask, eps)[0]


def _softmax_xent_bwd(axes, eps, res, g):
  z, t, mask, m, lse, t_sum = res
  g = jnp.expand_dims(g, axes)
  d = shift(z, m)
  # ∂H/∂z = (Σt)·softmax(z) - t, recomputed from the logits in one fused pass instead of
  # keeping a [B, C] softmax alive between the passes.
  # For a dominant class (q > 1/2) T·q - t is formed as T·expm1(d - L) + (T - t): with
  # one-hot targets q - 1 = expm1(log q) keeps the precision that 1 - q ≈ Σ_{j≠y} q_j has.
  log_q = d - lse
  grad_logits = g * jnp.where(
    log_q > -_LOG2, t_sum * jnp.expm1(log_q) + (t_sum - t), t_sum * jnp.exp(log_q) - t
  )
  # ∂H/∂t = -log q = L - d: +inf on an impossible class, except where t = 0 there (the
  # 0·log 0 term is the constant 0); 0 where excluded. The smoothing has slope (1-ε).
  log_q_neg = jnp.where((t == 0) & (d == -jnp.inf), 0, lse - d)
  grad_targets = _core.masked(g * (1 - eps) * log_q_neg, mask)
  return grad_logits, grad_targets, None


_softmax_xent.defvjp(_softmax_xent_fwd, _softmax_xent_bwd)


# Fast path of the dense cross-entropy, [B, C] logits (see softmax.py), H = Σ_j t_j (L - d_j)
# with d = z - max z (every term ≥ 0).
#  * Forward: one YNN pass computes the max, L = log1p(Σ_j frac(e^{d_j}) + (Σ_j floor(e^{d_j})
#    - 1)) -- exact also with ties at the max, floor counts them -- and Σ_j t_j (L - d_j).
#    Rows that come out non-finite (±inf logits, NaN) take the general path.
#  * Forward+backward: `softmax_stats` writes e = exp(d) once, H = Σt·L + Σ_j t_j (-d_j)
#    (L from `accurate_lse`); the gradient Σt·e/S - t is formed in place in that buffer, as
#    Σt·(e/S - 1) + (Σt - t) at the maxima (e = 1), where 1 - 1/S = expm1(L)/S keeps the
#    precision of the tail.


def _exact_softmax_xent(z_KxC, t_KxC):
  return _softmax_xent_fwd(z_KxC, t_KxC, (1,), None, 0.0, exact_guard)[0]


def _exact_softmax_xent_grads(z_KxC, t_KxC, g_K):
  res = _softmax_xent_fwd(z_KxC, t_KxC, (1,), None, 0.0, exact_guard)[1]
  return _softmax_xent_bwd((1,), 0.0, res, g_K)[:2]  # d/dlogits, d/dtargets


@jax.custom_vjp
def _softmax_xent_fast(z_BxC, t_BxC):
  d = z_BxC - jnp.max(z_BxC, axis=1, keepdims=True)
  e = jnp.exp(d)
  ties = jnp.floor(e)  # 1 at each maximum, else 0
  lse = jnp.log1p(
    jnp.sum(e - ties, axis=1, keepdims=True) + (jnp.sum(ties, axis=1, keepdims=True) - 1)
  )
  loss = row_sum(t_BxC * (lse - d), (1,))[:, 0]
  return _rows.fix_rows(
    ~jnp.isfinite(loss), _exact_softmax_xent, loss, z_BxC, t_BxC, row_size=z_BxC.shape[1]
  )


def _softmax_xent_fast_fwd(z_BxC, t_BxC):
  z_stats, z_loss = separate(z_BxC, 2)
  m, e, total = softmax_stats(z_stats)
  # H = Σt·L + Σ_j t_j (-d_j): two non-negative terms, the second independent of L.
  x = row_sum(t_BxC * (row_max(z_loss, (1,)) - z_loss), (1,))
  t_sum = row_sum(t_BxC, (1,))
  # log Σe is off by a few 1e-8 where Σe < 2: that matters only where H ≪ Σt.
  dominant = (total < 2) & (x + t_sum * jnp.log(total) < 0.25 * t_sum)
  lse = accurate_lse(e, total, dominant)
  loss = (t_sum * lse + x)[:, 0]
  bad = ~(jnp.isfinite(loss) & jnp.isfinite(total[:, 0]))
  loss = _rows.fix_rows(bad, _exact_softmax_xent, loss, z_BxC, t_BxC, row_size=z_BxC.shape[1])
  return loss, (z_BxC, t_BxC, e, m, total, lse, t_sum, bad)


def _softmax_xent_fast_bwd(res, g_B):
  z_BxC, t_BxC, e, m, total, lse, t_sum, bad = res
  g = g_B[:, None]
  at_max = t_sum * (-jnp.expm1(lse) / total) + (t_sum - t_BxC)  # Σt·(1/S - 1) + (Σt - t)
  grad_z = g * jnp.where(e >= 1, at_max, t_sum * (e / total) - t_BxC)
  grad_t = g * (lse - (z_BxC - m))
  grads = _rows.fix_rows(
    bad, _exact_softmax_xent_grads, (grad_z, grad_t), z_BxC, t_BxC, g_B, row_size=z_BxC.shape[1]
  )
  return grads


_softmax_xent_fast.defvjp(_softmax_xent_fast_fwd, _softmax_xent_fast_bwd)


def softmax_cross_entropy(
  logits: ArrayLike,
  targets: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  label_smoothing: float = 0.0,
  base: float | None = None,
) -> jax.Array:
  r"""Cross-entropy between target distributions and softmax(logits), tail-accurate.

  .. math::
    H(t, \mathrm{softmax}(z)) = -\sum_j t_j \log \mathrm{softmax}(z)_j
      = L \sum_j t_j - \sum_j t_j d_j,

  with d = z - max z and L = log Σ e^d evaluated as ``log1p`` of the non-maximal mass.
  With the label on a class that wins by 20 nats it returns e^{-20} (optax returns 0); a
  ``-inf`` logit on a class of target 0 contributes 0 (optax returns NaN). With
  ``label_smoothing=ε`` the targets become (1-ε)·t + ε/K over the K classes in the support.
  Relative error ≤ 1e-6 (float32) / 1e-13 (float64) where the value is normal (SPEC §2);
  the gradient (Σt)·softmax(z) - t is finite for finite or -inf logits.

  Args:
    logits: ``[..., C, ...]``.
    targets: target probabilities, same shape as ``logits``.
    axis: the class axis (int or tuple of ints).
    where: optional boolean mask broadcastable to ``logits``; False entries are excluded.
    label_smoothing: ε in [0, 1].
    base: logarithm base; None for nats.

  Returns:
    Loss per example: ``logits`` with ``axis`` removed.

  >>> float(softmax_cross_entropy([0.0, 0.0], [1.0, 0.0], base=2))
  1.0
  """
  fn = "softmax_cross_entropy"
  logits = _core.as_float(logits, "logits", fn)
  targets = _core.as_float(targets, "targets", fn)
  _core.check_same_shape(fn, logits=logits, targets=targets)
  logits, targets = _core.promote(fn, logits=logits, targets=targets)
  axes = _core.normalize_axis(axis, logits.ndim, "logits", fn)
  _core.check_classes(logits, axes, "logits", fn)
  mask = _core.as_mask(where, logits.shape, fn)
  eps = _core.check_smoothing(label_smoothing, fn)
  scale = _core.log_scale(base, fn)
  if is_fast_case(logits, axes, mask, eps):
    loss = _softmax_xent_fast(as_rows(logits), as_rows(targets)).reshape(logits.shape[:-1])
  else:
    loss = _softmax_xent(logits, targets, axes, mask, eps)
  return _core.in_base(loss, scale)


def _label_terms(logits, labels, axis, mask):
  """(labels with the class axis, valid, K = classes in the support, row has support)."""
  num_classes = logits.shape[axis]
  labels = jnp.expand_dims(labels, axis)
  valid = (labels >= 0) & (labels < num_classes)
  if mask is None:
    return labels, valid, jnp.asarray(num_classes, logits.dtype), None
  k = jnp.sum(mask, axis=axis, keepdims=True, dtype=logits.dtype)
  return labels, valid, jnp.maximum(k, 1), k > 0


def _int_xent_fwd(logits, labels, axis, mask, eps, guard=with_inf_guard):
  z = masked_logits(logits, mask)
  axes = (axis,)
  labels_e, valid, k, has_support = _label_terms(logits, labels, axis, mask)
  # The label's logit is gathered (one element per example), not picked with a one-hot
  # compare inside the reduction pass, which would slow the pass down (see softmax.py).
  # Out-of-range labels are clipped here and turned into NaN below, never wrapped.
  index = jnp.clip(labels_e, 0, logits.shape[axis] - 1)
  z_label = jnp.take_along_axis(z, index, axis=axis)

  def body(z, m, exact):
    lse = log_normalizer(z, m, axes, exact)
    # H = L - d_y: L ≥ 0 and -d_y ≥ 0, so the loss keeps full relative precision also when
    # the label wins by a large margin (H = log1p(Σ e^{d_j}) ≈ Σ e^{d_j} ≪ 1).
    loss = (lse - shift(z_label, m)) * (1 - eps)
    if eps:  # + (ε/K) Σ_j (L - d_j) over the support: every term ≥ 0
      smooth = row_sum(_core.masked(lse - shift(z, m, exact), mask), axes)
      loss = loss + eps / k * smooth
    return lse, loss

  m = row_max(z, axes)
  lse, loss = guard(body, z, m)
  loss = jnp.where(valid, loss, jnp.nan)
  if has_support is not None:
    loss = jnp.where(has_support, loss, 0)  # a fully masked row (e.g. padding) costs 0
  return jnp.squeeze(loss, axis), (z, labels, mask, m, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 4))
def _int_xent(logits, labels, axis, mask, eps):
  return _int_xent_fwd(logits, labels, axis, mask, eps)[0]


def _int_xent_bwd(axis, eps, res, g):
  z, labels, mask, m, lse = res
  labels, valid, k, has_support = _label_terms(z, labels, axis, mask)
  g = jnp.where(valid, jnp.expand_dims(g, axis), 0)
  if has_support is not None:
    g = jnp.where(has_support, g, 0)
  # The backward pass writes a [B, C] output anyway, so the one-hot compare is cheap here.
  is_label = jax.lax.broadcasted_iota(labels.dtype, z.shape, axis) == labels
  # ∂H/∂z = softmax(z) - target, target = (1-ε)·onehot + ε/K, recomputed in one fused pass
  # (see _softmax_xent_bwd). At the label q - (1-ε) is formed as expm1(log q) + ε: q - 1
  # keeps the relative precision of 1 - q = Σ_{j≠y} q_j when the label dominates.
  log_q = shift(z, m) - lse
  grad = jnp.where(is_label, jnp.expm1(log_q) + eps, jnp.exp(log_q))
  if eps:
    grad = grad - _core.masked(jnp.broadcast_to(eps / k, z.shape), mask)
  grad_logits = g * grad
  return grad_logits, None, None


_int_xent.defvjp(_int_xent_fwd, _int_xent_bwd)


# Fast path of the integer-label cross-entropy, [B, C] logits (see softmax.py). The shift
# is the label's own logit, not the row max: H = log Σ_j e^{z_j - z_y} needs no max pass,
# and the label's term is exactly e^0 = 1.
#  * Forward: S = Σ_j e^{z_j - z_y} in one YNN pass, H = log S. Where S ≥ 2, H ≥ log 2 is
#    accurate. Where S < 2 the label is the strict maximum (another class would add ≥ 1),
#    so H = log1p(Σ_j (e^{u_j} - floor(e^{u_j}))) exactly: that pass runs over the flagged
#    rows only, or over all rows when they are many (a confident model). Rows where S is
#    not finite (a class 88 nats above the label, ±inf or NaN logits) take the general path.
#  * Forward+backward: e = exp(z - z_y) is written once with the label's entry set to 0, so
#    R = Σ e = Σ_{j≠y} e^{z_j - z_y} has no 1 to round against: H = log1p(R) is exact in
#    every finite row. The gradient softmax - onehot is e/(1+R) with -R/(1+R) at the label,
#    formed in place in the same buffer.


def _exact_int_xent(z_KxC, y_K):
  return _int_xent_fwd(z_KxC, y_K, 1, None, 0.0, exact_guard)[0]


def _exact_int_xent_grad(z_KxC, y_K, g_K):
  res = _int_xent_fwd(z_KxC, y_K, 1, None, 0.0, exact_guard)[1]
  return _int_xent_bwd(1, 0.0, res, g_K)[0]


def _label_shift(z_BxC, y_B):
  """(z - z_y, clipped labels, valid): out-of-range labels are clipped, then made NaN."""
  num_classes = z_BxC.shape[1]
  y_clipped = jnp.clip(y_B, 0, num_classes - 1)
  z_label = jnp.take_along_axis(z_BxC, y_clipped[:, None], axis=1)
  return z_BxC - z_label, y_clipped, (y_B >= 0) & (y_B < num_classes)


@jax.custom_vjp
def _int_xent_fast(z_BxC, y_B):
  num_rows, num_classes = z_BxC.shape
  u, _, valid = _label_shift(z_BxC, y_B)
  total = row_sum(jnp.exp(u), (1,))[:, 0]
  loss = jnp.log(total)
  dominant = total < 2  # NaN compares False
  bad = ~(total < jnp.inf)

  def non_label_mass():  # recomputes u inside the branch: never a [B, C] operand
    e = jnp.exp(_label_shift(z_BxC, y_B)[0])
    return row_sum(e - jnp.floor(e), (1,))[:, 0]

  many = jnp.sum(dominant) > num_rows // 8
  mass = jax.lax.cond(many, non_label_mass, lambda: jnp.zeros_like(total))
  loss = jnp.where(many & dominant, jnp.log1p(mass), loss)
  loss = _rows.fix_rows(
    bad | (dominant & ~many), _exact_int_xent, loss, z_BxC, y_B, row_size=num_classes
  )
  return jnp.where(valid, loss, jnp.nan)


def _int_xent_fast_fwd(z_BxC, y_B):
  num_rows, num_classes = z_BxC.shape
  u, y_clipped, valid = _label_shift(z_BxC, y_B)
  rows = jnp.arange(num_rows)
  e = jnp.exp(u).at[rows, y_clipped].set(0)  # becomes the gradient, in place
  mass = jnp.sum(e, axis=1)
  bad = ~(mass < jnp.inf)
  loss = _rows.fix_rows(bad, _exact_int_xent, jnp.log1p(mass), z_BxC, y_B, row_size=num_classes)
  return jnp.where(valid, loss, jnp.nan), (z_BxC, y_B, e, mass, bad)


def _int_xent_fast_bwd(res, g_B):
  z_BxC, y_B, e, mass, bad = res
  _, y_clipped, valid = _label_shift(z_BxC, y_B)
  g_B = jnp.where(valid, g_B, 0)
  total = 1 + mass
  grad = (e * (g_B / total)[:, None]).at[jnp.arange(len(y_B)), y_clipped].set(-g_B * (mass / total))
  grad = _rows.fix_rows(bad, _exact_int_xent_grad, grad, z_BxC, y_B, g_B, row_size=z_BxC.shape[1])
  return grad, None


_int_xent_fast.defvjp(_int_xent_fast_fwd, _int_xent_fast_bwd)


def softmax_cross_entropy_with_integer_labels(
  logits: ArrayLike,
  labels: ArrayLike,
  axis: int = -1,
  *,
  where: ArrayLike | None = None,
  label_smoothing: float = 0.0,
  base: float | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with integer class labels, tail-accurate (seed §4.1, multi-class).

  .. math::
    H(y, \mathrm{softmax}(z)) = -\log \mathrm{softmax}(z)_y = L - d_y,
    \qquad L = \operatorname{log1p}\Big(\sum_{j \ne j^*} e^{d_j}\Big),\; d = z - \max z .

  Equal to :func:`softmax_cross_entropy` with one-hot targets. For logits ``[0, -30]`` and
  label 0 it returns 9.36e-14 (optax: 0). Labels outside ``[0, C)`` (negative included)
  give NaN for that example instead of wrapping around, unless the whole example is
  excluded by ``where`` (then the loss and its gradient are 0, e.g. for padding). With
  ``label_smoothing=ε`` the target is (1-ε)·onehot + ε/K. Relative error ≤ 1e-6 (float32)
  / 1e-13 (float64) where the value is normal; gradient softmax(z) - onehot.

  Args:
    logits: ``[..., C, ...]``.
    labels: integer labels, ``logits.shape`` without ``axis``.
    axis: the class axis (a single int).
    where: optional boolean mask broadcastable to ``logits``; False entries are excluded.
    label_smoothing: ε in [0, 1].
    base: logarithm base; None for nats.

  Returns:
    Loss per example, shape of ``labels``.

  >>> import jax.numpy as jnp
  >>> z = jnp.array([0.0, -30.0])
  >>> float(softmax_cross_entropy_with_integer_labels(z, 0))  # doctest: +ELLIPSIS
  9.35762...e-14
  """
  fn = "softmax_cross_entropy_with_integer_labels"
  logits = _core.as_float(logits, "logits", fn)
  labels = _core.as_labels(labels, "labels", fn)
  if isinstance(axis, (tuple, list)):
    raise TypeError(f"{fn}: `axis` must be a single int (the class axis), got {axis!r}.")
  (axis,) = _core.normalize_axis(axis, logits.ndim, "logits", fn)
  _core.check_classes(logits, (axis,), "logits", fn)
  expected = logits.shape[:axis] + logits.shape[axis + 1 :]
  if labels.shape != expected:
    raise ValueError(
      f"{fn}: `labels` must have the shape of `logits` without the class axis {axis}, "
      f"i.e. {expected}; got labels {labels.shape} for logits {logits.shape}."
    )
  mask = _core.as_mask(where, logits.shape, fn)
  eps = _core.check_smoothing(label_smoothing, fn)
  scale = _core.log_scale(base, fn)
  if is_fast_case(logits, (axis,), mask, eps):
    loss = _int_xent_fast(as_rows(logits), labels.reshape(-1)).reshape(labels.shape)
  else:
    loss = _int_xent(logits, labels, axis, mask, eps)
  return _core.in_base(loss, scale)


def binary_cross_entropy(p: ArrayLike, q: ArrayLike, *, base: float | None = None) -> jax.Array:
  r"""Elementwise binary cross-entropy between target probabilities p and model q (seed §3.2).

  .. math::
    H(p, q) = -p \log q - (1 - p) \log (1 - q)

  The seed's §3.2 formula for H(σ₁(x), σ₂(x)). Each log keeps relative precision near 0
  and 1 (``log1p``, and exact 1 - q for q ≥ 1/2); 0·log 0 = 0 in value and gradient.

  Args:
    p: target probabilities, any shape.
    q: model probabilities, same shape as ``p``.
    base: logarithm base; None for nats.

  Returns:
    H(p, q), same shape as ``p``.

  >>> float(binary_cross_entropy(0.5, 0.5, base=2))
  1.0
  """
  fn = "binary_cross_entropy"
  p, q = _core.as_float(p, "p", fn), _core.as_float(q, "q", fn)
  _core.check_same_shape(fn, p=p, q=q)
  p, q = _core.promote(fn, p=p, q=q)
  scale = _core.log_scale(base, fn)
  return _core.in_base(-(_core.xlogy(p, q) + _core.xlog1my(1 - p, q)), scale)


def _sigmoid_xent_fwd(logits, labels):
  # -y log σ(z) - (1-y) log σ(-z) = log1p(e^{-|z|}) + c·|z| with c = 1-y for z > 0 and
  # c = y for z < 0: every term is ≥ 0 for labels in [0, 1] (no max(z,0) - z·y that cancels
  # for y ≈ 1), one exp and one log1p per element. c = max(s, 0) - y·s with s = sign(z).
  # Speed: arithmetic only (sign, abs, min, max, division; no compare or select), so that
  # XLA:CPU fuses this into the caller's `.mean()` as one YNNPACK pass; each op costs about
  # a third of a read pass there, so the formula has as few as it can (17).
  # Infinite logits: |z| is clamped to fmax in c·|z|, and the infinity is put back as
  # min(|z| - min(|z|, fmax), inf·[c > 0]): (+inf, y=1) gives 0, (+inf, y<1) gives +inf,
  # never 0·inf = NaN.
  s = jnp.sign(logits)
  a = jnp.abs(logits)
  c = jnp.maximum(s, 0) - labels * s
  a_fin = jnp.minimum(a, jnp.finfo(logits.dtype).max)
  # (abs: the bound stays ≥ 0, and the term 0 at finite z, also for labels outside [0, 1])
  inf_term = jnp.minimum(a - a_fin, jnp.abs(_inf_where_positive(c)))
  loss = jnp.log1p(jnp.exp(-a)) + c * a_fin + inf_term
  return loss, (logits, labels)


@jax.custom_vjp
def _sigmoid_xent(logits, labels):
  return _sigmoid_xent_fwd(logits, labels)[0]


def _sigmoid_xent_bwd(res, g):
  logits, labels = res
  # ∂/∂z = σ(z) - y, and ∂/∂y = -z (infinite at infinite logits, 0 where g = 0).
  # σ = 1/(1 + e^{-z}) is what XLA expands the logistic op into; it is accurate in both tails
  # (e^{-z} overflows only where σ(z) is subnormal anyway). Its 1 comes through a barrier:
  # XLA would otherwise share the broadcast constant 1 with the forward pass (which uses 1
  # too) and write it out as an [N] temporary; likewise e^{-|z|} is not reused.
  one = jax.lax.optimization_barrier(jnp.ones((), logits.dtype))
  sigma = one / (one + jnp.exp(-logits))
  return g * (sigma - labels), _core.mul0(g, -logits)


_sigmoid_xent.defvjp(_sigmoid_xent_fwd, _sigmoid_xent_bwd)


def sigmoid_binary_cross_entropy(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  label_smoothing: float = 0.0,
  base: float | None = None,
) -> jax.Array:
  r"""Elementwise H(y, σ(z)), the logistic-regression loss (seed §4.1–4.2), tail-accurate.

  .. math::
    H(y, \sigma(z)) = -y \log\sigma(z) - (1-y)\log\sigma(-z)
      = \operatorname{log1p}(e^{-|z|}) + c\,|z|,\quad
      c = \begin{cases} 1 - y & z > 0 \\ y & z \le 0 \end{cases}

  One fused elementwise pass (one ``exp``, one ``log1p``). Finite at infinite logits with
  matching labels (``(+inf, 1)`` gives 0; optax gives NaN). With ``label_smoothing=ε`` the
  label becomes (1-ε)·y + ε/2. Relative error ≤ 1e-6 (float32) / 1e-13 (float64) where the
  value is normal; gradient σ(z) - y.

  Args:
    logits: any shape.
    labels: target probabilities of class 1 (0/1 labels, integer or float, or soft
      labels in [0, 1]), same shape as ``logits``.
    label_smoothing: ε in [0, 1].
    base: logarithm base; None for nats.

  Returns:
    The loss, same shape as ``logits``.

  >>> float(sigmoid_binary_cross_entropy(30.0, 1.0))  # doctest: +ELLIPSIS
  9.357...e-14
  """
  fn = "sigmoid_binary_cross_entropy"
  logits = _core.as_float(logits, "logits", fn)
  labels = _core._asarray(labels, "labels", fn)
  if jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
    labels = labels.astype(logits.dtype)  # 0/1 integer labels are exact in any float
  labels = _core.as_float(labels, "labels", fn)
  _core.check_same_shape(fn, logits=logits, labels=labels)
  logits, labels = _core.promote(fn, logits=logits, labels=labels)
  eps = _core.check_smoothing(label_smoothing, fn)
  scale = _core.log_scale(base, fn)
  if eps:
    labels = (1 - eps) * labels + eps / 2
  return _core.in_base(_sigmoid_xent(logits, labels), scale)
