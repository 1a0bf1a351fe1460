"""Cross-entropy H(p, q) = -Σ p log q, the target p first (seed §3, §4).

Every function returns one value per example (the caller takes ``.mean()``), follows the
conventions of SPEC §1 (``axis``, ``where``, ``base``, 0·log 0 = 0 in value and gradient,
-inf logits as impossible classes, float16/bfloat16 computed and returned in float32) and is
accurate to float precision in the tails (SPEC §2).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core, _normalizer
from xent_jax._measures import Role, measure
from xent_jax.softmax import _sigmoid


@measure(p=Role.DISTRIBUTION, q=Role.DISTRIBUTION)
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

  >>> round(float(cross_entropy([1.0, 0.0], [0.5, 0.5], base=2)), 5)
  1.0
  """
  p, q, axes, mask, scale = _core.distribution_pair("cross_entropy", p, q, axis, where, base)
  p, q = _core.masked_pair(p, q, mask)
  terms = _core.masked(0.0 - _core.xlogy(p, q), mask)  # 0.0 - …: +0, not -0, where q = 1
  return _core.in_base(jnp.sum(terms, axis=axes), scale)


class _LabelInputs(NamedTuple):
  """The checked arguments of an integer-label loss, the class axes flattened into one."""

  x: jax.Array  # logits or probabilities; skipped examples (ignore_index) filled
  labels: jax.Array  # skipped examples relabelled 0
  axis: int  # the one class axis
  mask: jax.Array | None  # `where`, with every class of a skipped example included
  keep: jax.Array | None  # examples not labelled ignore_index (None: no ignore_index)
  weights: jax.Array | None
  scale: float | None


def _label_inputs(
  fn, x, x_name, labels, axis, where, ignore_index, weights, base, *, skipped_fill
) -> _LabelInputs:
  """Checks the arguments shared by the integer-label losses and puts them in one form.

  Labels are integers of shape ``x.shape`` without the class axes. Several class axes
  (optax's convention) move to the end, in the order given, and are flattened into one: a
  label is then a flat (row-major) index over them, the first axis given the major one. An
  example labelled ``ignore_index`` gets ``x = skipped_fill`` everywhere and label 0 (a
  finite loss with finite partials, replaced by 0 in :func:`_finish_label_loss`: the double
  where), so that neither its inputs nor its label reach the value or a derivative.
  """
  x = _core.as_float(x, x_name, fn)
  labels = _core.as_labels(labels, "labels", fn)
  axes = _core.normalize_axis(axis, x.ndim, x_name, fn)
  _core.check_classes(x, axes, x_name, fn)
  expected = tuple(n for i, n in enumerate(x.shape) if i not in axes)
  if labels.shape != expected:
    raise ValueError(
      f"{fn}: `labels` must have the shape of `{x_name}` without the class axes {axes}, "
      f"i.e. {expected}; got labels {labels.shape} for {x_name} {x.shape}."
    )
  mask = _core.as_mask(where, x.shape, fn)
  if len(axes) > 1:
    # In the order given, not sorted: axis=(3, 1) flattens axis 3 as the major one (optax).
    given = tuple(int(a) % x.ndim for a in axis)
    batch_axes = tuple(i for i in range(x.ndim) if i not in axes)

    def flatten(a):
      return a.transpose(batch_axes + given).reshape(expected + (-1,))

    x = flatten(x)
    mask = None if mask is None else flatten(mask)
    axes = (x.ndim - 1,)
  (axis,) = axes
  ignore_index = _core.check_ignore_index(ignore_index, fn)
  weights = _core.as_weights(weights, labels.shape, x.dtype, fn)
  scale = _core.log_scale(base, fn)
  keep = None
  if ignore_index is not None:
    keep = labels != ignore_index
    x = jnp.where(jnp.expand_dims(keep, axis), x, jnp.asarray(skipped_fill, x.dtype))
    labels = jnp.where(keep, labels, 0)
    if mask is not None:  # all classes of a skipped example included: label 0 stays legal
      mask = mask | ~jnp.expand_dims(keep, axis)
  return _LabelInputs(x, labels, axis, mask, keep, weights, scale)


def _finish_label_loss(loss: jax.Array, inputs: _LabelInputs) -> jax.Array:
  """0 for the skipped examples, then the per-example weights and the base."""
  if inputs.keep is not None:
    loss = jnp.where(inputs.keep, loss, 0)
  included = inputs.keep
  if inputs.weights is not None and inputs.mask is not None:  # `where` may exclude rows
    any_class = jnp.any(inputs.mask, axis=inputs.axis)
    included = any_class if included is None else included & any_class
  return _core.in_base(_core.weigh(loss, inputs.weights, included), inputs.scale)


# q first: the distribution's shape and class axis are the reference for the labels.
@measure(q=Role.DISTRIBUTION, labels=Role.LABELS, allow_padding=True)
def cross_entropy_with_integer_labels(
  labels: ArrayLike,
  q: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  ignore_index: int | None = None,
  weights: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Cross-entropy of model probabilities q relative to integer class labels: -log q_y.

  .. math::
    H(y, q) = -\log q_y, \qquad
    \frac{\partial H}{\partial q_j} = -\frac{[j = y]}{q_y},

  :func:`cross_entropy` with one-hot targets, the label first like the target there; keras's
  ``sparse_categorical_crossentropy(from_logits=False)`` and torch's ``nll_loss(log(q),
  y)``, without their clip or renormalisation: q is taken as given (``checked`` rejects q
  that is not a distribution). ``log q_y`` is ``log1p(q_y - 1)`` for q_y > 1/2, so a label
  with q_y = 1 - 1e-7 costs 1e-7, not a rounded 0. q_y = 0 gives +inf and the gradient
  -inf at the label (0 elsewhere), never NaN. Same labels, ``where``, ``ignore_index`` and
  ``weights`` as :func:`softmax_cross_entropy_with_integer_labels`: out-of-range labels
  give NaN with zero partials unless the example is excluded by ``where`` (then 0, e.g.
  padding); a label on a
  class excluded by ``where`` has probability 0 (+inf).

  Args:
    labels: integer labels, ``q.shape`` without ``axis``.
    q: model probabilities ``[..., C, ...]``.
    axis: the class axis; a tuple of axes is flattened into one class axis, in the order
      given (row-major, as in optax): a label is then a flat index over them.
    where: optional boolean mask broadcastable to ``q``; False entries are excluded.
    ignore_index: optional label value marking examples to skip (keras's ``ignore_class``,
      torch's ``ignore_index=-100``): their loss is 0 and their gradient exactly 0.
    weights: optional per-example weights, broadcastable to ``labels`` (torch's class
      weights: ``weights=w[labels]``, mean ``jnp.sum(loss) / jnp.sum(weights)``).
    base: logarithm base; None for nats.

  Returns:
    Loss per example, shape of ``labels``.

  >>> round(float(cross_entropy_with_integer_labels(0, [0.5, 0.5], base=2)), 5)
  1.0
  """
  inputs = _label_inputs(
    "cross_entropy_with_integer_labels",
    q,
    "q",
    labels,
    axis,
    where,
    ignore_index,
    weights,
    base,
    skipped_fill=1.0,
  )
  q, labels, axis, mask = inputs.x, inputs.labels, inputs.axis, inputs.mask
  num_classes = q.shape[axis]
  valid = (labels >= 0) & (labels < num_classes)
  # The label's probability is gathered (one element per example); out-of-range labels
  # are clipped here and turned into NaN below, never wrapped. An excluded class has
  # probability 0 (double where: what it holds never reaches a derivative).
  index = jnp.expand_dims(jnp.clip(labels, 0, num_classes - 1), axis)
  q_label = jnp.squeeze(jnp.take_along_axis(_core.masked(q, mask), index, axis=axis), axis)
  # Examples that are out of range or fully excluded read the constant 1 (a loss of 0 with
  # finite partials) instead of whatever they hold.
  keep = valid if mask is None else valid & jnp.any(mask, axis=axis)
  q_label = jnp.where(keep, q_label, 1)
  # -log q_y as log1p(q_y - 1) above 1/2 (q_y - 1 is exact there), +0 at q_y = 1; its
  # derivative -1/q_y (-inf at q_y = 0) from xlogy's rule, whose own derivative 1/q_y² is
  # formed without q_y² (underflowed: an HVP at q_y = 1e-20 was NaN).
  loss = 0.0 - _core.xlogy(jnp.ones_like(q_label), q_label)
  loss = jnp.where(valid, loss, jnp.nan)
  if mask is not None:
    loss = jnp.where(jnp.any(mask, axis=axis), loss, 0)  # a fully masked example costs 0
  return _finish_label_loss(loss, inputs)


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


def _dense_value(z, t, m, lse, t_sum, axes):
  """H = L·Σt + Σ_j t_j (-d_j), d = z - m: both terms ≥ 0, so nothing cancels.

  On an impossible class (-d = +inf) the term is 0 for t_j = 0 (0·log 0 = 0) and +inf for
  t_j > 0: -d is clamped to fmax and the infinity put back as min(inf·[d = -inf],
  inf·[t > 0]), in arithmetic only (XLA:CPU fuses it with the pass); that 0-or-inf term
  has no derivative.
  """
  neg_d = -_normalizer.log_shift(z, m, axes)
  neg_d_fin = jnp.minimum(neg_d, jnp.finfo(z.dtype).max)
  inf_term = jax.lax.stop_gradient(jnp.minimum(neg_d - neg_d_fin, _inf_where_positive(t)))
  return lse * t_sum + _normalizer.row_sum(t * neg_d_fin + inf_term, axes)


def _dense_partials(z, t, m, lse, t_sum, axes, eps, mask):
  """∂H/∂z = (Σt)·q - t and ∂H/∂t = -(1-ε) log q, exact at a dominant class too.

  At the dominant class k (q_k > 1/2) T·q_k - t_k = T·expm1(log q_k) + Σ_{j≠k} t_j: q - 1
  keeps the precision that 1 - q ≈ Σ_{j≠k} q_j has, and the targets of the other classes
  are summed, not taken as T - t_k (which rounds away a 1e-12 tail next to 1).
  """

  # Σ_{j≠k} t_j: one more pass, only when some row has a dominant class (L < log 2). There
  # the maximum is unique, floor(e^d) is 1 at k and 0 elsewhere: arithmetic only, so the
  # pass fuses (see _normalizer.py). It reads its own reference to z (no shared [B, C] d).
  def t_rest_fn():
    (z_rest,) = _normalizer.separate(z, 1)
    d = _normalizer.shift(z_rest, m, axes)
    return _normalizer.row_sum(t * (1 - jnp.floor(jnp.exp(d))), axes)

  t_rest = jax.lax.cond(_normalizer.is_any(lse < _LOG2), t_rest_fn, lambda: t_sum)
  (z,) = _normalizer.separate(z, 1)
  d = _normalizer.log_shift(z, m, axes)  # an elementwise pass: the select costs less
  log_q = d - lse
  # The dominant class is the maximum (d = 0, log q = -L) of a row with L < log 2: its
  # partial is a row value, put in place with a select (a JVP applied forward does not
  # form the partials: it runs _softmax_xent_fast_tangent; the VJP is elementwise).
  at_max = (d == 0) & (lse < _LOG2)
  # Its derivative -T·e^{-L}·dL is all of d(T·q_k): d log q_k = dz_k - dm - dL, and the
  # tangent of m is dz_k at the class it is (a dominant class is the unique maximum).
  at_max_value = t_sum * _core.expm1(-lse) + t_rest
  q = _normalizer.softmax_from_log(log_q)
  grad_z = jnp.where(at_max, at_max_value, t_sum * q - t)
  # -log q = L - d is +inf on an impossible class; where t = 0 there the term is the
  # constant 0·log 0 = 0 (a one-sided derivative), never 0·inf. ε = 1: t is a constant.
  impossible = (t == 0) & (d == -jnp.inf)
  neg_log_q = jnp.where(impossible, 0, lse - jnp.where(impossible, 0, d))
  grad_t = None if eps == 1 else _core.masked((1 - eps) * neg_log_q, mask)
  return _core.masked(grad_z, mask), grad_t


def _softmax_xent_parts(axes, eps, logits, targets, mask):
  z = _normalizer.masked_logits(logits, mask)
  t = _smoothed_targets(targets, mask, eps, axes)
  m, lse = _normalizer.stats(z, axes)
  t_sum = jnp.sum(t, axis=axes, keepdims=True)
  loss = jnp.squeeze(_dense_value(z, t, m, lse, t_sum, axes), axes)
  return loss, (*_dense_partials(z, t, m, lse, t_sum, axes, eps, mask), None), axes


_softmax_xent = _normalizer.custom_jvp_from_partials(
  lambda *args: _softmax_xent_parts(*args)[0], _softmax_xent_parts, num_static=2
)


# Fast path of the dense cross-entropy, [B, C] logits (see _normalizer.py).
#  * Value alone: one YNN pass computes the max, L = log1p(Σ_j frac(e^{d_j}) + (Σ_j
#    floor(e^{d_j}) - 1)) -- exact also with ties at the max, floor counts them -- and
#    Σ_j t_j (L - d_j). Rows that come out non-finite (±inf logits, NaN), or whose L is
#    small enough for flushed subnormal terms to matter, are recomputed.
#  * Under differentiation: the fused statistics (m, L) and the closed-form partials, which
#    XLA forms in one elementwise pass together with the cotangent.


def _exact_dense_rows(z_KxC, t_KxC):
  m, lse = _normalizer.exact_stats(z_KxC)
  t_sum = jnp.sum(t_KxC, axis=1, keepdims=True)
  return _dense_value(z_KxC, t_KxC, m[:, None], lse[:, None], t_sum, (1,))[:, 0]


@_normalizer.row_batched
def _softmax_xent_fast_value(z_BxC, t_BxC):
  d = z_BxC - jnp.max(z_BxC, axis=1, keepdims=True)
  e = jnp.exp(d)
  ties = jnp.floor(e)  # 1 at each maximum, else 0
  lse = jnp.log1p(
    jnp.sum(e - ties, axis=1, keepdims=True) + (jnp.sum(ties, axis=1, keepdims=True) - 1)
  )
  # Rows with a non-finite loss, or an L so small that flushed subnormal terms of its mass
  # matter (z = [90, 5, 0, ..., 0] in float32; made NaN here), get the exact statistics.
  lse = _normalizer.nan_if_flush_sensitive(lse, z_BxC.shape[1])
  loss = _normalizer.row_sum(t_BxC * (lse - d), (1,))[:, 0]
  return _normalizer.fix_rows(
    ~jnp.isfinite(loss), _exact_dense_rows, loss, z_BxC, t_BxC, row_size=z_BxC.shape[1]
  )


def _softmax_xent_fast_parts(z_BxC, t_BxC):
  m, lse = _normalizer.log_normalizer(_normalizer.max_stats, (1,), z_BxC)
  t_sum = jnp.sum(t_BxC, axis=1, keepdims=True)
  loss = _softmax_xent_fast(z_BxC, t_BxC)  # the fused value pass; its derivative is this rule
  partials = _dense_partials(z_BxC, t_BxC, m, lse, t_sum, (1,), 0.0, None)
  return loss, partials, (1,), (_softmax_xent_fast_tangent, (z_BxC, t_BxC, m, lse, t_sum, loss))


def _softmax_xent_fast_tangent(z_BxC, t_BxC, m, lse, t_sum, loss, dz_BxC, dt_BxC):
  """The JVP Σ_j (T q_j - t_j)(dz_j - δ) + Σ_j (L - d_j) dt_j in one pass (T = Σt).

  Σ_j (T q_j - t_j) = 0, so any row constant δ may be subtracted from dz. In a row with a
  dominant class k (L < log 2: the maximum is unique) δ = dz_k, and the term whose
  coefficient T q_k - t_k would cancel (1 - q_k next to 1) is exactly 0; elsewhere every
  q_j ≤ 1/2 and δ = 0. Each other term keeps its relative precision, with no indicator.
  T q_j is formed ×e^{16} (:func:`_normalizer.raised_terms`), the sum scaled by e^{-16}
  after (no term next to the underflow threshold flushed). Rows that come out non-finite
  (±inf logits, an impossible class, overflow) get the plain contraction of the exact
  partials.
  """
  raised = 0
  if dz_BxC is not None:

    def at_max():  # dz at the dominant class (floor(e^d) is 1 there, 0 elsewhere)
      (z,) = _normalizer.separate(z_BxC, 1)
      at_k = jnp.floor(jnp.exp(_normalizer.shift(z, m, (1,)))) * dz_BxC
      return _normalizer.row_sum(at_k, (1,)) * (lse < _LOG2).astype(lse.dtype)

    delta = jax.lax.cond(_normalizer.is_any(lse < _LOG2), at_max, lambda: jnp.zeros_like(lse))
    raised_q = _normalizer.raised_terms(z_BxC - m - lse, t_sum, _normalizer.RAISE)
    coef = raised_q - t_BxC * _E_RAISE
    raised = coef * (dz_BxC - delta)
  if dt_BxC is not None:
    raised = raised + (lse - (z_BxC - m)) * _E_RAISE * dt_BxC
  tangent = _normalizer.raised_row_sum(raised)
  return _normalizer.exact_unless_finite(
    tangent, loss, _softmax_xent_fast_parts, (z_BxC, t_BxC), (dz_BxC, dt_BxC)
  )


_E_RAISE = math.exp(_normalizer.RAISE)


_softmax_xent_fast = _normalizer.custom_jvp_from_partials(
  _softmax_xent_fast_value, _softmax_xent_fast_parts
)


@measure(logits=Role.LOGITS, targets=Role.DISTRIBUTION)
def softmax_cross_entropy(
  logits: ArrayLike,
  targets: ArrayLike,
  axis: _core.Axis = -1,
  *,
  where: ArrayLike | None = None,
  label_smoothing: float = 0.0,
  weights: ArrayLike | None = None,
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
    weights: optional per-example weights, broadcastable to the output: the loss of
      example i is multiplied by w_i (torch's weighted mean is ``jnp.sum(loss) /
      jnp.sum(weights)``; to drop examples use ``where``, which also keeps garbage in
      them, their weight included, out of the value and the gradient).
    base: logarithm base; None for nats.

  Returns:
    Loss per example: ``logits`` with ``axis`` removed.

  >>> round(float(softmax_cross_entropy([0.0, 0.0], [1.0, 0.0], base=2)), 5)
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
  out_shape = tuple(n for i, n in enumerate(logits.shape) if i not in axes)
  weights = _core.as_weights(weights, out_shape, logits.dtype, fn)
  scale = _core.log_scale(base, fn)
  if _normalizer.is_fast_case(logits, axes, mask, eps):
    rows = _normalizer.as_rows
    loss = _softmax_xent_fast(rows(logits), rows(targets)).reshape(logits.shape[:-1])
  else:
    # Excluded entries are masked before the custom_jvp: its tangents there are then 0
    # (a NaN tangent on an excluded logit would meet a zero partial: 0·NaN).
    loss = _softmax_xent(axes, eps, *(_core.masked(x, mask) for x in (logits, targets)), mask)
  included = None if mask is None or weights is None else jnp.any(mask, axis=axes)
  return _core.in_base(_core.weigh(loss, weights, included), scale)


def _label_terms(logits, labels, axis, mask):
  """(labels with the class axis, valid, K = classes in the support, row has support)."""
  num_classes = logits.shape[axis]
  labels = jnp.expand_dims(labels, axis)
  valid = (labels >= 0) & (labels < num_classes)
  if mask is None:
    return labels, valid, jnp.asarray(num_classes, logits.dtype), None
  k = jnp.sum(mask, axis=axis, keepdims=True, dtype=logits.dtype)
  return labels, valid, jnp.maximum(k, 1), k > 0


def _int_xent_parts(axis, eps, logits, labels, mask):
  z = _normalizer.masked_logits(logits, mask)
  labels_e, valid, k, has_support = _label_terms(logits, labels, axis, mask)
  c, lse = _normalizer.stats(z, (axis,))
  log_q = _normalizer.log_shift(z, c, (axis,)) - lse
  # The label's log-probability is gathered (one element per example); out-of-range labels
  # are clipped here and turned into NaN below, never wrapped.
  index = jnp.clip(labels_e, 0, logits.shape[axis] - 1)
  # H = L - d_y: L ≥ 0 and -d_y ≥ 0, so the loss keeps full relative precision also when
  # the label wins by a large margin (H = log1p(Σ e^{d_j}) ≈ Σ e^{d_j} ≪ 1).
  log_q_label = _normalizer.label_log_prob(z, index, c, lse, axis)
  nll = 0.0 - log_q_label  # +0, not -0, where q_y = 1
  loss = (1 - eps) * nll if eps < 1 else jnp.zeros_like(nll)  # ε = 1: no 0·inf
  if eps:  # + (ε/K) Σ_j (L - d_j) over the support: every term ≥ 0
    loss = loss + eps / k * jnp.sum(_core.masked(-log_q, mask), axis=axis, keepdims=True)
  # ∂H/∂z = softmax(z) - target, target = (1-ε)·onehot + ε/K. At the label q - (1-ε) is
  # formed as expm1(log q) + ε: q - 1 keeps the relative precision of 1 - q = Σ_{j≠y} q_j
  # when the label dominates.
  is_label = jax.lax.broadcasted_iota(labels_e.dtype, z.shape, axis) == labels_e
  # With smoothing the label's target 1 - ε + ε/K is one constant: where q_y ≤ 1/2 the
  # partial is q_y minus it (exact when q_y equals it), else (q_y - 1) + (ε - ε/K).
  q = _normalizer.softmax_from_log(log_q)
  if eps:
    at_label = jnp.where(
      log_q_label > -_LOG2,
      _core.expm1(log_q_label) + (eps - eps / k),
      jnp.exp(log_q_label) - (1 - eps + eps / k),
    )
    grad = jnp.where(is_label, at_label, q - _core.masked(jnp.broadcast_to(eps / k, z.shape), mask))
  else:
    grad = jnp.where(is_label, _core.expm1(log_q_label), q)
  keep = valid if has_support is None else valid & has_support
  grad = _core.masked(jnp.where(keep, grad, 0), mask)
  loss = jnp.where(valid, loss, jnp.nan)
  if has_support is not None:
    loss = jnp.where(has_support, loss, 0)  # a fully masked row (e.g. padding) costs 0
  return jnp.squeeze(loss, axis), (grad, None, None), (axis,)


_int_xent = _normalizer.custom_jvp_from_partials(
  lambda *args: _int_xent_parts(*args)[0], _int_xent_parts, num_static=2
)


# Fast path of the integer-label cross-entropy, [B, C] logits: the statistics are shifted
# by the label's own logit (`_normalizer.label_stats`), so H = L - (z_y - c) = L on almost
# every row, from one fused pass with no max pass. The partials softmax - onehot are
# e^{d - L}, and expm1(-L) = -R/(1+R) at the label (R the non-label mass): exact.


def _int_xent_fast_loss(z_BxC, y_B, c, lse):
  num_classes = z_BxC.shape[1]
  index = jnp.clip(y_B, 0, num_classes - 1)[:, None]
  # 0.0 - log q_y: +0, not -0, where q_y = 1 (the other classes -inf); tail-exact derivative
  loss = 0.0 - _normalizer.label_log_prob(z_BxC, index, c, lse, 1)[:, 0]
  return jnp.where((y_B >= 0) & (y_B < num_classes), loss, jnp.nan)


@_normalizer.row_batched
def _int_xent_fast_value(z_BxC, y_B):
  return _int_xent_fast_loss(z_BxC, y_B, *_normalizer.label_stats(z_BxC, y_B))


def _int_xent_fast_parts(z_BxC, y_B):
  # The partials take the max shift: with the label's own logit far below the maximum,
  # log q_j = (z_j - z_y) - L would subtract two large numbers and lose the digits of q_j.
  c, lse = _normalizer.log_normalizer(_normalizer.max_stats_for_labels, (1,), z_BxC, y_B)
  loss = _int_xent_fast_loss(z_BxC, y_B, c, lse)
  q = _normalizer.softmax_from_log(_normalizer.log_shift(z_BxC, c, (1,)) - lse)
  # At the label, log q = -loss: its partial expm1(-loss) is a row value, put in place with
  # a select (a JVP applied forward runs _int_xent_fast_tangent instead; the VJP is this
  # elementwise pass). Rows with an invalid label get 0.
  dtype = z_BxC.dtype
  valid = ((y_B >= 0) & (y_B < z_BxC.shape[1]))[:, None]
  at_label_row = jnp.where(valid, _core.expm1(-loss)[:, None], 0)
  is_label = jax.lax.broadcasted_iota(y_B.dtype, z_BxC.shape, 1) == y_B[:, None]
  grad = jnp.where(is_label, at_label_row, q) * valid.astype(dtype)
  return loss, (grad, None), (1,), (_int_xent_fast_tangent, (z_BxC, y_B, c, lse, loss))


def _int_xent_fast_tangent(z_BxC, y_B, m, lse, loss, dz_BxC, dy_B):
  """The JVP Σ_j ∂H/∂z_j dz_j in one pass, as Σ_j q_j (dz_j - dz_y).

  Equal to Σ_{j≠y} q_j dz_j + (q_y - 1) dz_y since 1 - q_y = Σ_{j≠y} q_j, with the label's
  term exactly 0 and each other term formed with the relative precision of q_j: no
  indicator and no 1 - q_y. q_j is e^{d_j - L + 16}, the sum scaled by e^{-16} after (no
  term near the underflow threshold is flushed; adding 16 rounds the exponent, which costs
  each q_j up to 6e-7 relative in float32, within SPEC §2, and saves the switch of
  :func:`_normalizer.raised_terms`: +20-50% on this pass). Rows that come out non-finite
  (±inf logits or tangents, overflow) or whose loss is not finite get the plain contraction
  of the exact partials.
  """
  del dy_B  # labels have no tangent
  y_clipped = jnp.clip(y_B, 0, z_BxC.shape[1] - 1)[:, None]
  dz_label = jnp.take_along_axis(dz_BxC, y_clipped, axis=1)
  raised = jnp.exp(z_BxC - m - (lse - _normalizer.RAISE)) * (dz_BxC - dz_label)
  tangent = _normalizer.raised_row_sum(raised)
  # (rows with an invalid label have a NaN loss: recomputed, their partials are 0)
  return _normalizer.exact_unless_finite(
    tangent, loss, _int_xent_fast_parts, (z_BxC, y_B), (dz_BxC, None)
  )


_int_xent_fast = _normalizer.custom_jvp_from_partials(_int_xent_fast_value, _int_xent_fast_parts)


@measure(logits=Role.LOGITS, labels=Role.LABELS, allow_padding=True)
def softmax_cross_entropy_with_integer_labels(
  logits: ArrayLike,
  labels: ArrayLike,
  axis: int = -1,
  *,
  where: ArrayLike | None = None,
  label_smoothing: float = 0.0,
  ignore_index: int | None = None,
  weights: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with integer class labels, tail-accurate (seed §4.1, multi-class).

  .. math::
    H(y, \mathrm{softmax}(z)) = -\log \mathrm{softmax}(z)_y = L - d_y,
    \qquad L = \operatorname{log1p}\Big(\sum_{j \ne j^*} e^{d_j}\Big),\; d = z - \max z .

  Equal to :func:`softmax_cross_entropy` with one-hot targets. For logits ``[0, -30]`` and
  label 0 it returns 9.36e-14 (optax: 0). Labels outside ``[0, C)`` (negative included)
  give NaN for that example instead of wrapping around, with zero partial derivatives (so
  that a ``jnp.where`` applied to the loss afterwards, e.g. over padding labelled -1,
  leaves a finite gradient), unless the whole example is excluded by ``where`` (then the
  loss and its gradient are 0). With
  ``label_smoothing=ε`` the target is (1-ε)·onehot + ε/K. Relative error ≤ 1e-6 (float32)
  / 1e-13 (float64) where the value is normal; gradient softmax(z) - onehot.

  Args:
    logits: ``[..., C, ...]``.
    labels: integer labels, ``logits.shape`` without ``axis``.
    axis: the class axis; a tuple of axes is flattened into one class axis, in the order
      given (row-major, as in optax): a label is then a flat index over them.
    where: optional boolean mask broadcastable to ``logits``; False entries are excluded.
    label_smoothing: ε in [0, 1].
    ignore_index: optional label value (torch uses -100) marking examples to skip: their
      loss is 0 and their gradient exactly 0 whatever their logits hold, as if ``where``
      excluded the whole example.
    weights: optional per-example weights, broadcastable to ``labels``: the loss of example
      i is multiplied by w_i. torch's ``CrossEntropyLoss(reduction="mean")`` with
      ``ignore_index`` is ``jnp.sum(loss) / jnp.sum(labels != ignore_index)``; with
      per-example weights, ``jnp.sum(loss) / jnp.sum(weights * (labels != ignore_index))``
      (the mean over the included examples). A skipped example (``ignore_index``, or every
      class excluded by ``where``) costs 0 whatever its weight holds (inf, NaN).
    base: logarithm base; None for nats.

  Returns:
    Loss per example, shape of ``labels``.

  >>> import jax.numpy as jnp
  >>> z = jnp.array([0.0, -30.0])
  >>> float(softmax_cross_entropy_with_integer_labels(z, 0))  # doctest: +ELLIPSIS
  9.357...e-14
  """
  inputs = _label_inputs(
    "softmax_cross_entropy_with_integer_labels",
    logits,
    "logits",
    labels,
    axis,
    where,
    ignore_index,
    weights,
    base,
    skipped_fill=0.0,
  )
  logits, labels, axis, mask = inputs.x, inputs.labels, inputs.axis, inputs.mask
  eps = _core.check_smoothing(label_smoothing, "softmax_cross_entropy_with_integer_labels")
  if _normalizer.is_fast_case(logits, (axis,), mask, eps):
    loss = _int_xent_fast(_normalizer.as_rows(logits), labels.reshape(-1)).reshape(labels.shape)
  else:
    loss = _int_xent(axis, eps, _core.masked(logits, mask), labels, mask)  # (tangents, too)
  return _finish_label_loss(loss, inputs)


@measure(p=Role.PROBABILITY, q=Role.PROBABILITY)
def binary_cross_entropy(
  p: ArrayLike, q: ArrayLike, *, label_smoothing: float = 0.0, base: float | None = None
) -> jax.Array:
  r"""Elementwise binary cross-entropy between target probabilities p and model q (seed §3.2).

  .. math::
    H(p, q) = -p \log q - (1 - p) \log (1 - q)

  The seed's §3.2 formula for H(σ₁(x), σ₂(x)). Each log keeps relative precision near 0
  and 1 (``log1p``, and exact 1 - q for q ≥ 1/2); 0·log 0 = 0 in value and gradient.

  Args:
    p: target probabilities, any shape.
    q: model probabilities, same shape as ``p``.
    label_smoothing: ε in [0, 1]: the target becomes (1-ε)·p + ε/2 (keras's
      ``BinaryCrossentropy(label_smoothing=ε)``).
    base: logarithm base; None for nats.

  Returns:
    H(p, q), same shape as ``p``.

  >>> round(float(binary_cross_entropy(0.5, 0.5, base=2)), 5)
  1.0
  """
  fn = "binary_cross_entropy"
  p, q = _core.as_float(p, "p", fn), _core.as_float(q, "q", fn)
  _core.check_same_shape(fn, p=p, q=q)
  p, q = _core.promote(fn, p=p, q=q)
  p = _smoothed_labels(p, _core.check_smoothing(label_smoothing, fn))
  scale = _core.log_scale(base, fn)
  return _core.in_base(0.0 - (_core.xlogy(p, q) + _core.xlog1my(1 - p, q)), scale)


def _sigmoid_xent_value(logits, labels):
  # -y log σ(z) - (1-y) log σ(-z) = log1p(e^{-|z|}) + c·|z| with c = 1-y for z > 0 and
  # c = y for z < 0: every term is ≥ 0 for labels in [0, 1] (no max(z,0) - z·y that cancels
  # for y ≈ 1), one exp and one log1p per element. c = max(s, 0) - y·s with s = sign(z).
  # Speed: arithmetic only (sign, abs, min, max, division; no compare or select), so that
  # XLA:CPU fuses this into the caller's `.mean()` as one YNNPACK pass; each op costs about
  # a third of a read pass there, so the formula has as few as it can (17).
  # Infinite logits: |z| is clamped to fmax in c·|z|, and the infinity is put back as
  # min(|z| - min(|z|, fmax), inf·[c > 0]): (+inf, y=1) gives 0, (+inf, y<1) gives +inf,
  # never 0·inf = NaN. That 0-or-inf term has no derivative.
  s = jnp.sign(logits)
  a = jnp.abs(logits)
  # (the 0 through a barrier: XLA would share the broadcast constant with the derivative
  # pass by writing it out as an [N] temporary)
  c = jnp.maximum(s, jax.lax.optimization_barrier(jnp.zeros((), s.dtype))) - labels * s
  a_fin = jnp.minimum(a, jnp.finfo(logits.dtype).max)
  # (abs: the bound stays ≥ 0, and the term 0 at finite z, also for labels outside [0, 1])
  inf_term = jnp.minimum(a - a_fin, jnp.abs(_inf_where_positive(c)))
  return jnp.log1p(jnp.exp(-a)) + c * a_fin + jax.lax.stop_gradient(inf_term)


def _smoothed_labels(labels, eps):
  """(1-ε)·y + ε/2; for ε = 1 the constant ½ (no derivative w.r.t. y, not 0·inf)."""
  if eps == 1:
    return jnp.full_like(labels, 0.5)
  return (1 - eps) * labels + eps / 2 if eps else labels


def _sigmoid_xent_smoothed_value(eps, logits, labels):
  return _sigmoid_xent_value(logits, _smoothed_labels(labels, eps))


def _sigmoid_xent_parts(eps, logits, labels):
  # The smoothing is inside the rule, so that ∂/∂y = -(1-ε)·z is formed before the
  # cotangent multiplies it (z near fmax times a cotangent of 2 would overflow first).
  labels = _smoothed_labels(labels, eps)
  # ∂/∂z = σ(z) - y = (1-y)·σ(z) - y·σ(-z), in the form (p - y)·tanh(|z|/2) + σ(-|z|)(1 - 2y)
  # with p = [z > 0] = max(sign z, 0) (σ(|z|) - σ(-|z|) = tanh(|z|/2)): at z = 20, y = 1 it
  # is -σ(-20) = -2.1e-9, where σ(20) - 1 rounds to 0; at y = 1/2 it is tanh(z/2)/2 also
  # next to z = 0; each term keeps relative precision in both tails. Arithmetic only, so a
  # JVP's reduction and the VJP's output are each one fused pass. ∂/∂y = -z.
  # The inputs and the constant 1 come through one barrier: XLA would otherwise share e,
  # or the broadcast 1, with the value's pass by writing it out as an [N] temporary, which
  # costs more than recomputing it (measured: 0 temporaries this way, 256-1024 MiB at 2^26
  # logits otherwise).
  z, y, one = jax.lax.optimization_barrier((logits, labels, jnp.ones((), logits.dtype)))
  grad_logits = _sigmoid_residual(z, y, one)
  grad_labels = None if eps == 1 else -(1 - eps) * z
  return _sigmoid_xent_value(logits, labels), (grad_logits, grad_labels), ()


@jax.custom_jvp
def _sigmoid_residual(z, y, one):
  """σ(z) - y, tail-exact (``one`` is 1, through the caller's barrier)."""
  a = jnp.abs(z)
  e = jnp.exp(-a)
  p = jnp.maximum(jnp.sign(z), 0)
  return (p - y) * jnp.tanh(a * 0.5) + e / (one + e) * (one - 2 * y)


@_sigmoid_residual.defjvp
def _sigmoid_residual_jvp(primals, tangents):
  # d(σ(z) - y) = σ(z)σ(-z) dz - dy, with σ(z)σ(-z) = e/(1 + e)², e = e^{-|z|}: exact in
  # both tails. Autodiff of the formula above differentiated tanh(|z|/2) as 1 - tanh², which
  # rounds to 0 beyond |z| ≈ 17 (float32), and the Hessian came out -σ(z)σ(-z) wherever
  # the label disagreed with the sign of z (z = 20, y = 0: -2.1e-9, exact +2.1e-9).
  (z, y, one), (dz, dy, _) = primals, tangents
  e = jnp.exp(-jnp.abs(z))
  return _sigmoid_residual(z, y, one), e / jnp.square(one + e) * dz - dy


_sigmoid_xent = _normalizer.custom_jvp_from_partials(
  _sigmoid_xent_smoothed_value, _sigmoid_xent_parts, num_static=1
)


def _pos_weighted_sigmoid_xent_parts(logits, labels, pos_weight):
  # w·y·softplus(-z) + (1-y)·softplus(z): two non-negative terms (softplus is log1p-exact),
  # 0·inf = 0 for a certain logit with the matching hard label. ∂/∂z = -w·y·σ(-z) +
  # (1-y)·σ(z), each term with its own tail; ∂/∂y = w·softplus(-z) - softplus(z);
  # ∂/∂w = y·softplus(-z).
  # Beyond z = 64, softplus(-z) = σ(-z) = e^{-z} to working precision, and a weight w > 1
  # can lift w·e^{-z} back above the underflow threshold e^{-z} is under (w = 1e10 at
  # z = 100 in float32: 3.7e-34, once 0): those products are formed by times_exp_neg.
  z, y, w = logits, labels, pos_weight
  sp_neg, sp_pos = jax.nn.softplus(-z), jax.nn.softplus(z)
  wy = w * y
  loss = _times_tail(z, wy, jax.nn.softplus) + _core.mul0(1 - y, sp_pos)
  grad_z = (1 - y) * _sigmoid(z) - _times_sigmoid_neg(z, wy)
  grad_y = _times_tail(z, w, jax.nn.softplus) - sp_pos
  return loss, (grad_z, grad_y, _core.mul0(y, sp_neg)), ()


def _times_tail(z, x, f):
  """x·f(-z), f = softplus or σ, x ≥ 0: lifted by times_exp_neg beyond z = 64 (double where:
  no e^{-z} formed, and overflowing, at z < 0)."""
  tail = z > _core.EXP_TAIL
  return jnp.where(tail, _core.times_exp_neg(jnp.where(tail, z, 0), x), _core.mul0(x, f(-z)))


@jax.custom_jvp
def _times_sigmoid_neg(z, x):
  """x·σ(-z) (:func:`_times_tail`), whose z-derivative -x·σ(z)σ(-z) is formed lifted too."""
  return _times_tail(z, x, _sigmoid)


@_times_sigmoid_neg.defjvp
def _times_sigmoid_neg_jvp(primals, tangents):
  # -x·σ(z)σ(-z) = -x·e/(1 + e)², e = e^{-|z|}: with x = w·y = 1e10 at z = -100, σ(z)σ(-z)
  # alone is subnormal (flushed) while the product is 1.9e-34.
  (z, x), (dz, dx) = primals, tangents
  a = jnp.abs(z)
  slope = _core.times_exp_neg(a, x) / jnp.square(1 + jnp.exp(-a))
  out, d_x = jax.jvp(lambda x: _times_tail(z, x, _sigmoid), (x,), (dx,))  # linear in dx
  return out, d_x - slope * dz


_pos_weighted_sigmoid_xent = _normalizer.custom_jvp_from_partials(
  lambda *args: _pos_weighted_sigmoid_xent_parts(*args)[0], _pos_weighted_sigmoid_xent_parts
)


@measure(logits=Role.BINARY_LOGITS, labels=Role.PROBABILITY)
def sigmoid_binary_cross_entropy(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  label_smoothing: float = 0.0,
  pos_weight: ArrayLike | None = None,
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
    pos_weight: optional weight w > 0 of the positive term, broadcastable to ``logits``
      (torch's ``BCEWithLogitsLoss(pos_weight=...)``): the loss becomes
      -w·y·log σ(z) - (1-y)·log σ(-z), with the same tail accuracy.
    base: logarithm base; None for nats.

  Returns:
    The loss, same shape as ``logits``.

  >>> float(sigmoid_binary_cross_entropy(30.0, 1.0))  # doctest: +ELLIPSIS
  9.357...e-14
  """
  fn = "sigmoid_binary_cross_entropy"
  logits = _core.as_float(logits, "logits", fn)
  labels = _core.as_array(labels, "labels", fn)
  if jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
    labels = labels.astype(logits.dtype)  # 0/1 integer labels are exact in any float
  labels = _core.as_float(labels, "labels", fn)
  _core.check_same_shape(fn, logits=logits, labels=labels)
  logits, labels = _core.promote(fn, logits=logits, labels=labels)
  eps = _core.check_smoothing(label_smoothing, fn)
  scale = _core.log_scale(base, fn)
  if pos_weight is None:
    return _core.in_base(_sigmoid_xent(eps, logits, labels), scale)
  if isinstance(pos_weight, int | float) and not pos_weight > 0:
    raise ValueError(f"{fn}: `pos_weight` must be > 0, got {pos_weight}.")
  pos_weight = _core.as_float(pos_weight, "pos_weight", fn).astype(logits.dtype)
  try:
    pos_weight = jnp.broadcast_to(pos_weight, logits.shape)
  except ValueError:
    raise ValueError(
      f"{fn}: `pos_weight` of shape {pos_weight.shape} does not broadcast to `logits` "
      f"{logits.shape}."
    ) from None
  labels = _smoothed_labels(labels, eps)
  return _core.in_base(_pos_weighted_sigmoid_xent(logits, labels, pos_weight), scale)
