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

from xent_jax import _core
from xent_jax.softmax import (
    log_normalizer,
    masked_logits,
    row_max,
    row_sum,
    shift,
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


def _softmax_xent_fwd(logits, targets, axes, mask, eps):
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
  lse, loss = with_inf_guard(body, z, m)
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
  return _core.in_base(_softmax_xent(logits, targets, axes, mask, eps), scale)


def _label_terms(logits, labels, axis, mask):
  """(labels with the class axis, valid, K = classes in the support, row has support)."""
  num_classes = logits.shape[axis]
  labels = jnp.expand_dims(labels, axis)
  valid = (labels >= 0) & (labels < num_classes)
  if mask is None:
    return labels, valid, jnp.asarray(num_classes, logits.dtype), None
  k = jnp.sum(mask, axis=axis, keepdims=True, dtype=logits.dtype)
  return labels, valid, jnp.maximum(k, 1), k > 0


def _int_xent_fwd(logits, labels, axis, mask, eps):
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
  lse, loss = with_inf_guard(body, z, m)
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
  return _core.in_base(_int_xent(logits, labels, axis, mask, eps), scale)


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
  # c = y for z < 0: every term is ≥ 0 (no max(z,0) - z·y that cancels for y ≈ 1), one exp
  # and one log1p per element.
  # Speed: arithmetic only (sign, min, division), no compare or select, so that XLA:CPU
  # fuses this into the caller's `.mean()` instead of writing a temporary first.
  # Infinite logits: |z| is clamped to fmax in c·|z|, and the infinity is put back as
  # min(|z| - min(|z|, fmax), inf·[c > 0]): (+inf, y=1) gives 0, (+inf, y<1) gives +inf,
  # never 0·inf = NaN.
  s = jnp.sign(logits)
  a = s * logits  # |z|, in an op that fuses
  a_fin = jnp.minimum(a, jnp.finfo(logits.dtype).max)
  c = (1 + s) / 2 * (1 - labels) + (1 - s) / 2 * labels
  loss = jnp.log1p(jnp.exp(-a)) + c * a_fin + jnp.minimum(a - a_fin, _inf_where_positive(c))
  return loss, (logits, labels)


@jax.custom_vjp
def _sigmoid_xent(logits, labels):
  return _sigmoid_xent_fwd(logits, labels)[0]


def _sigmoid_xent_bwd(res, g):
  logits, labels = res
  # ∂/∂z = σ(z) - y, and ∂/∂y = -z (infinite at infinite logits, 0 where g = 0). σ is the
  # logistic op (accurate in both tails), not exp(-|z|) again: XLA would share that with
  # the forward pass and write it out as a temporary.
  return g * (jax.nn.sigmoid(logits) - labels), _core.mul0(g, -logits)


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
