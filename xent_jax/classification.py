"""Reweighted cross-entropies for classification: the focal loss and the poly-1 loss.

Both multiply or extend the cross-entropy by a power of 1 - p_t, the probability the model
gives to everything but the target. Written literally (optax), 1 - p_t rounds to 0 once the
model is confident (p_t > 1 - 6e-8 in float32, a margin of about 17 nats) and the loss or
its gradient with it. Here 1 - p_t is formed from the other classes' probabilities (σ(-z)
for a sigmoid, -expm1(log q) from a tail-accurate log-softmax), so the value and every
derivative keep their relative precision at margins of 20-80 nats and beyond.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from xent_jax import _core, _normalizer
from xent_jax._measures import Role, measure
from xent_jax.cross_entropy import _sigmoid_xent, _sigmoid_xent_parts
from xent_jax.softmax import _log_sigmoid, _sigmoid


# Where 1 - p_t is at least this, it is formed and raised to γ in linear space (pow is
# correctly rounded); below (an underflowing σ), in log space. exp(γ·log m) alone would
# multiply the rounding of log m by γ·|log m| (8e-6 relative at m = 1e-6, γ = 5). The
# bound is fmax/4096 of 1/m: the derivatives in the labels divide by m (d log m = dm/m, ×γ
# and ×|z| in a JVP), which must not overflow. It lies past the logit grid (|z| ≤ 80 in
# float32, m = e^-80.4; |z| ≤ 700 in float64, e^-701.5), whose second derivatives in the
# labels were NaN, -inf or half their value in the log-space formulas (from z = 69).
def _linear_min(dtype) -> float:
  return 4096 / float(jnp.finfo(dtype).max)


def _one_minus_pt(z, y):
  """(σ(z), σ(-z), m, linear, m_safe): m = 1 - p_t = y·σ(-z) + (1-y)·σ(z) in linear space
  (two non-negative terms, σ(-z) for y = 1: no 1 - σ(z) rounded to 0), whether it lies in
  the linear regime, and m there, 1 elsewhere (double where: no 0 ** (γ-1) or 1/0 in any
  derivative)."""
  s_pos, s_neg = _sigmoid(z), _sigmoid(-z)
  m = y * s_neg + (1 - y) * s_pos
  linear = m >= _linear_min(m.dtype)
  return s_pos, s_neg, m, linear, jnp.where(linear, m, 1)


@jax.custom_jvp
def _log_one_minus_pt(z, y):
  """log m, m = 1 - p_t = y·σ(-z) + (1-y)·σ(z), in log space (-inf where m = 0)."""
  return jnp.logaddexp(jnp.log(y) + _log_sigmoid(-z), jnp.log1p(-y) + _log_sigmoid(z))


@_log_one_minus_pt.defjvp
def _log_one_minus_pt_jvp(primals, tangents):
  # d log m = ((1-2y)·σ(z)σ(-z) dz + (σ(-z) - σ(z)) dy) / m, each ratio formed in log space.
  # Autodiff of the logaddexp gave NaN at a hard label (log y at y = 0 has the derivative
  # inf, times a zero tangent) and at m = 0 (logaddexp(-inf, -inf)); m = 0 (an infinite
  # logit with the matching hard label) gets no tangent.
  (z, y), (dz, dy) = primals, tangents
  log_m = _log_one_minus_pt(z, y)
  alive = log_m > -jnp.inf
  lm = jnp.where(alive, log_m, 0)
  log_sig, log_sig_neg = _log_sigmoid(z), _log_sigmoid(-z)
  # Where m is a normal float of the linear regime, the ratios divide by m itself: e^{x - log m}
  # would multiply the rounding of log m (3.8e-6 at log m = -69 in float32) into them,
  # which a soft label next to 0 or 1 does not excuse (∂²FL/∂y² at z = -80, y = 1e-30 was
  # 2.9e-6 off). Outside the linear regime |z| > 80 (float32), where σ(-z) - σ(z) does not
  # cancel.
  s_pos, s_neg, _, linear, m_safe = _one_minus_pt(z, y)
  d_z = (1 - 2 * y) * jnp.where(
    linear, _core.ratio(s_pos * s_neg, m_safe), jnp.exp(log_sig + log_sig_neg - lm)
  )
  # (σ(-z) - σ(z))/m as -tanh(z/2)/m, whose two terms cancel near z = 0. In log space it
  # overflows where m < 1/fmax (z > 88 in float32, y = 1): capped, or a zero tangent dy
  # times inf made every derivative of the loss NaN there.
  big = jnp.finfo(z.dtype).max
  d_y = jnp.where(
    linear,
    _core.ratio(-jnp.tanh(z / 2), m_safe),
    jnp.clip(jnp.exp(log_sig_neg - lm) - jnp.exp(log_sig - lm), -big, big),
  )
  return log_m, jnp.where(alive, d_z * dz + d_y * dy, 0)


@jax.custom_jvp
def _power(m, log_m, gamma):
  """m^γ for m > 0 given log m, whose γ-derivative m^γ·log m takes the exact log m.

  JAX's rule for m**γ takes log of the rounded m: next to m = 1 (a confidently wrong
  prediction, 1 - p_t = σ(17) in float32) that is 40% off, and ∂²FL/∂γ∂z was 6% off.
  """
  del log_m
  return m**gamma


@_power.defjvp
def _power_jvp(primals, tangents):
  (m, log_m, gamma), (dm, _, dgamma) = primals, tangents
  out = _power(m, log_m, gamma)
  return out, gamma * m ** (gamma - 1) * dm + out * log_m * dgamma


def _pow2(k: jax.Array, dtype) -> jax.Array:
  """2^k for integer-valued ``k`` within the normal exponent range, exact (from its bits)."""
  info = jnp.finfo(dtype)
  int_type = jnp.int32 if info.bits == 32 else jnp.int64
  biased = (k.astype(int_type) + (info.maxexp - 1)) << (info.nmant)
  return jax.lax.bitcast_convert_type(biased, dtype)


@jax.custom_jvp
def _power_times(m, log_m, gamma, x):
  """m^γ·x for a normal float m, with no m^γ formed alone: it may be below the normal range
  (flushed to 0 on the CPU) where the product is not (m = σ(-44), γ = 2: m^γ = 6e-39,
  m^γ·44 normal).

  m = f·2^e exactly (frexp), and m^γ = e^{γ log f}·2^{eγ} with log f in [-0.7, 0): the
  error is a few roundings, not γ times the rounding of log m (which, at log m = -46 and
  γ = 2, was 2e-6 relative where a soft label next to 0 or 1 leaves the problem well
  conditioned). γ = g + h, g on a grid of 1/256 so that e·g is exact, is split into an
  integer n = ceil(e·g) and the rest; 2^n is applied last from its bits, in three steps
  (it may lie far outside the exponent range while the product does not). ``log_m`` is
  log m, for the derivative only: the JVP is m^γ·(x·(γ d log m + log m dγ) + dx), again in
  this form (autodiff of the product with 2^n would form 2^n alone; the tangent of m is
  taken as m·d log m).
  """
  del log_m
  dtype = x.dtype
  info = jnp.finfo(dtype)
  f, e = jnp.frexp(m)
  e = jax.lax.stop_gradient(e.astype(dtype))
  r = jnp.log(f)
  g = jax.lax.stop_gradient(jnp.round(gamma * 256) / 256)
  eg = e * g
  n = jnp.ceil(eg)
  mant = jnp.exp(gamma * r + ((eg - n) + e * (gamma - g)) * math.log(2)) * x
  # n ≤ 0 (m ≤ 1, γ ≥ 0), and below -3·(maxexp - 3) the product is 0 whatever mant·x is;
  # each third of n (the last within 2 of the others) is then a normal power of two.
  limit = 3 * (info.maxexp - 3)
  n = jnp.clip(n, -limit, limit)
  third = jnp.trunc(n / 3)
  return mant * _pow2(third, dtype) * _pow2(third, dtype) * _pow2(n - 2 * third, dtype)


@_power_times.defjvp
def _power_times_jvp(primals, tangents):
  (m, log_m, gamma, x), (_, d_log_m, d_gamma, dx) = primals, tangents
  # One product with m^γ: the terms m^γ·x·d log m and m^γ·dx may each be below the normal
  # range where their sum is not (∂²FL/∂z∂y at z = 44, y = 1, γ = 2 in float32 was 7% off
  # as two products). Its transpose (reverse over reverse) forms m^γ·ct first, which may not.
  tangent = _power_times(m, log_m, gamma, x * (gamma * d_log_m + log_m * d_gamma) + dx)
  return _power_times(m, log_m, gamma, x), tangent


@jax.custom_jvp
def _weight_times(weight, m, log_m, gamma, scaled, x):
  """weight·x (weight = m^γ), whose JVP is formed by :func:`_power_times` where ``scaled``
  (m^γ below the normal range): the product rule would multiply by the flushed m^γ."""
  del m, log_m, gamma, scaled
  return weight * x


@_weight_times.defjvp
def _weight_times_jvp(primals, tangents):
  (weight, m, log_m, gamma, scaled, x) = primals
  (d_weight, dm, d_log_m, d_gamma, _, dx) = tangents
  use = scaled > 0
  power_tangents = (dm, d_log_m, d_gamma, dx)
  power_primals = (m, log_m, gamma, jnp.where(use, x, 0))
  _, power_tangent = _power_times_jvp(power_primals, power_tangents)
  tangent = jnp.where(use, power_tangent, d_weight * x + weight * dx)
  return weight * x, tangent


def _focal_parts(logits, labels, gamma):
  z, y = logits, labels
  _, (ce_z, ce_y), _ = _sigmoid_xent_parts(0.0, z, y)
  # ce with its own exact rule: the partials below are differentiated again for second
  # derivatives, and autodiff of the value's |z| formula gives ∂ce/∂z = 0 at z = 0 (the
  # Hessian at z = 0, a zero-initialised model, was 63% off).
  ce = _sigmoid_xent(0.0, z, y)
  s_pos, s_neg, _, linear, m_safe = _one_minus_pt(z, y)
  log_sig, log_sig_neg = _log_sigmoid(z), _log_sigmoid(-z)
  log_m = _log_one_minus_pt(z, y)
  alive = log_m > -jnp.inf  # m = 0: an infinite logit with the matching hard label
  lm = jnp.where(alive, log_m, 0)
  power = _core.mul0(gamma - 1, lm)

  def from_logs(log_x):  # γ·m^(γ-1)·x in one exponent: no huge m^(γ-1) times a tiny x
    return jnp.where(alive, gamma * jnp.exp(power + log_x), 0)

  weight = jnp.where(linear, _power(m_safe, lm, gamma), jnp.exp(_core.mul0(gamma, log_m)))  # m^γ
  # Where m^γ alone is below the normal range (flushed to 0 on the CPU), its products are
  # formed without it: ∂FL/∂y = m^γ·(-z + ...) at z = 44, y = 1, γ = 2 is -2.8e-37.
  # Not below the linear regime: there d log m = dm/m nears the float range (e^88 at
  # m = σ(-88) in float32) and a scaled JVP's x·γ·d log m overflowed (inf and NaN in
  # Hessians).
  scaled = alive & linear & (weight < jnp.finfo(weight.dtype).tiny)

  def times_weight(x, product=jnp.multiply):  # m^γ·x, at the cost of an exp
    power_x = _power_times(m_safe, lm, gamma, jnp.where(scaled, x, 0))
    return jnp.where(scaled, power_x, product(weight, x))

  loss = ce * weight
  # ∂m^γ/∂z = γ m^(γ-1) (1 - 2y) σ(z)σ(-z) and ∂m^γ/∂y = γ m^(γ-1) (σ(-z) - σ(z)). In the
  # linear regime m^γ is factored out: w·(∂ce + ce·γ·(∂m)/m), so that a small second term
  # is added before the product with w, not lost as a subnormal after it.
  r_z = _core.ratio(s_pos * s_neg, m_safe)
  # ce is inf only at z = ±inf, where σ(z)σ(-z) = 0 multiplies it: that product's limit is
  # 0 (|z|·e^{-|z|}), not inf·0.
  ce_fin = jnp.minimum(ce, jnp.finfo(ce.dtype).max)
  # σ(-z) - σ(z) = -tanh(z/2): the difference of two rounded sigmoids cancels near z = 0
  # (0 for |z| below an ulp of ½; ∂FL/∂y at z = 1e-8 was 58% off). ce·(σ(-z) - σ(z))/m is
  # one ratio: ce/m ≤ |z| + 1, while the derivative of 1/m alone, 1/m², overflows from
  # m = 5e-20 (float32, z = 44; ∂²FL/∂y² was -inf at z = 45-69 with y = 1).
  ce_r_y = _core.ratio(-ce * jnp.tanh(z / 2), m_safe)
  # σ(z)σ(-z)/m ≤ 1 (m ≥ σ(z)σ(-z)): below the linear regime in log space, and m^γ is
  # factored out there too (the term γ·ce·m^(γ-1)·σ(z)σ(-z) alone is about m^(γ+1), below
  # the normal range where the sum is not: ∂²FL/∂y∂z came out 0 at z = 355 in float64).
  r_z_log = jnp.exp(log_sig + log_sig_neg - lm)
  # |∂FL/∂z| ≤ 2(1 + γ)(|z| + 1)·m^(γ+1) (and FL ≤ 2(|z| + 1)·m^(γ+1)): below the normal
  # range with m^γ unless |z| is of the order of 1/m (a soft label next to 1 at logits
  # beyond 1e6). Its derivative in y is not: the product is plain, its JVP scaled.
  scaled_f = scaled.astype(weight.dtype)
  grad_z = jnp.where(
    linear,
    _weight_times(weight, m_safe, lm, gamma, scaled_f, ce_z + ce_fin * r_z * ((1 - 2 * y) * gamma)),
    _weight_times(
      weight, m_safe, lm, gamma, scaled_f, ce_z + ce_fin * r_z_log * ((1 - 2 * y) * gamma)
    ),
  )
  grad_y = jnp.where(
    linear,
    times_weight(ce_y + gamma * ce_r_y, _core.mul0),
    _core.mul0(weight, ce_y) + ce * (from_logs(log_sig_neg) - from_logs(log_sig)),
  )
  # ∂/∂γ = ce · m^γ · log m. At z = ±inf, ce = inf where σ(∓z) = 0 multiplies it: the
  # products with ce are 0 there (their limits, e.g. |z|·e^{-|z|} at m = 1), not inf·0.
  grad_gamma = times_weight(_core.mul0(lm, ce), _core.mul0)
  return loss, (grad_z, grad_y, grad_gamma), ()


_focal = _normalizer.custom_jvp_from_partials(lambda *args: _focal_parts(*args)[0], _focal_parts)


def _weighted_focal_parts(logits, labels, gamma, alpha):
  # α_t·FL with α_t = α y + (1 - α)(1 - y); α_t = 0 gives 0 whatever FL is (inf at z = ±inf).
  z, y = logits, labels
  fl, (fl_z, fl_y, fl_gamma), _ = _focal_parts(z, y, gamma)
  a_t = alpha * y + (1 - alpha) * (1 - y)
  # ∂/∂y = α_t ∂FL/∂y + (2α - 1) FL. At z = ±inf both terms may be infinite with opposite
  # signs; there FL ≈ |z| m^(γ+1) and ∂FL/∂y ≈ -sign(z) (1 + γ) |z| m^γ (m = 1 - p_t, the
  # limit y or 1 - y), so the sum is |z| m^γ · b, b = (2α - 1) m - sign(z) (1 + γ) α_t:
  # ±inf by the sign of b, 0 if b = 0.
  grad_y = _core.mul0(a_t, fl_y) + (2 * alpha - 1) * fl
  at_limit = jnp.isinf(z) & jnp.isnan(grad_y)
  # double where: at a finite z with a hard label, m = 0 and 0^γ has an infinite derivative
  # for γ < 1, which reverse over reverse multiplied by the zero cotangent (NaN)
  m = jnp.where(at_limit, jnp.where(z > 0, 1 - y, y), 1)
  b = (2 * alpha - 1) * m - jnp.sign(z) * (1 + gamma) * a_t
  limit = _core.mul0(m**gamma * b, jnp.abs(z))  # its derivatives are the limits' too
  grad_y = jnp.where(at_limit, limit, grad_y)
  partials = (_core.mul0(a_t, fl_z), grad_y, _core.mul0(a_t, fl_gamma), _core.mul0(2 * y - 1, fl))
  return _core.mul0(a_t, fl), partials, ()


_weighted_focal = _normalizer.custom_jvp_from_partials(
  lambda *args: _weighted_focal_parts(*args)[0], _weighted_focal_parts
)


def _check_real_scalar_range(value, name, fn, low, high):
  """A Python-number option must lie in [low, high]; arrays are accepted as given."""
  if isinstance(value, bool) or value is None:
    raise TypeError(f"{fn}: `{name}` must be a number, got {value!r}.")
  if isinstance(value, int | float) and not low <= value <= high:
    raise ValueError(f"{fn}: `{name}` must be in [{low}, {high}], got {value}.")


def _broadcast_option(value, name, fn, logits):
  """An array option as ``logits``' dtype, broadcast to its shape (else a one-line error)."""
  value = _core.as_float(value, name, fn).astype(logits.dtype)
  try:
    return jnp.broadcast_to(value, logits.shape)
  except ValueError:
    raise ValueError(
      f"{fn}: `{name}` of shape {value.shape} does not broadcast to `logits` {logits.shape}."
    ) from None


@measure(logits=Role.BINARY_LOGITS, labels=Role.PROBABILITY)
def sigmoid_focal_loss(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  alpha: ArrayLike | None = None,
  gamma: ArrayLike = 2.0,
  base: float | None = None,
) -> jax.Array:
  r"""Sigmoid focal loss (Lin et al. 2017), elementwise, exact in both tails.

  .. math::
    \mathrm{FL}(z, y) = \alpha_t\,(1 - p_t)^\gamma\, H(y, \sigma(z)),\qquad
    1 - p_t = y\,\sigma(-z) + (1 - y)\,\sigma(z),\quad
    \alpha_t = \alpha y + (1 - \alpha)(1 - y),

  with H(y, σ(z)) :func:`xent_jax.sigmoid_binary_cross_entropy`; for hard labels this is
  optax's ``sigmoid_focal_loss``. 1 - p_t is formed from σ(-z) (for y = 1) in log space, so
  at z = 20, y = 1, γ = 2 the loss is σ(-20)³ ≈ 8.8e-27 (optax: 0, its cross-entropy already
  rounds to 0), its gradient -σ(-z)^(γ+1) - γ·H·σ(-z)^γ·σ(z) ≈ -2.6e-26, never a rounded
  1 - p. Derivatives w.r.t. ``logits``, ``labels`` and ``gamma`` are exact (closed-form
  partials, as for every function of xent_jax).

  Args:
    logits: any shape.
    labels: probabilities of class 1 in [0, 1] (hard 0/1 or soft), same shape as ``logits``.
    alpha: optional weight α in [0, 1] of the positive class, a scalar or an array
      broadcastable to ``logits``; None: no weighting.
    gamma: focusing exponent γ ≥ 0 (γ = 0 is the cross-entropy), a scalar or an array
      broadcastable to ``logits``.
    base: logarithm base; None for nats.

  Returns:
    The loss, same shape as ``logits``.

  >>> float(sigmoid_focal_loss(0.0, 1.0, gamma=2.0))  # (1/2)^2 · log 2  # doctest: +ELLIPSIS
  0.1732...
  """
  fn = "sigmoid_focal_loss"
  logits = _core.as_float(logits, "logits", fn)
  labels = _core.as_array(labels, "labels", fn)
  if jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
    labels = labels.astype(logits.dtype)
  labels = _core.as_float(labels, "labels", fn)
  _core.check_same_shape(fn, logits=logits, labels=labels)
  logits, labels = _core.promote(fn, logits=logits, labels=labels)
  _check_real_scalar_range(gamma, "gamma", fn, 0.0, float("inf"))
  gamma = _broadcast_option(gamma, "gamma", fn, logits)
  scale = _core.log_scale(base, fn)
  if alpha is None:
    loss = _focal(logits, labels, gamma)
  else:
    _check_real_scalar_range(alpha, "alpha", fn, 0.0, 1.0)
    alpha = _broadcast_option(alpha, "alpha", fn, logits)
    loss = _weighted_focal(logits, labels, gamma, alpha)
  return _core.in_base(loss, scale)


# φ(v) = -log(1 - v) - v = Σ_{k≥2} v^k / k (v = 1 - q): its Taylor series below v = 0.3
# (Horner, enough terms for the dtype), the direct form above, where the cancellation
# costs at most a factor v / φ(v) ≤ 5.3 in relative error.
_SERIES_MAX = 0.3
_SERIES_TERMS = {jnp.dtype(jnp.float32): 15, jnp.dtype(jnp.float64): 31}


def _neg_log1m_minus(v, log_q):
  """φ(v) = -log q - v for v = 1 - q ∈ [0, 1], q = e^{log q}, without cancellation."""
  small = v < _SERIES_MAX
  vs = jnp.where(small, v, 0)
  series = jnp.zeros_like(v)
  for k in range(_SERIES_TERMS[v.dtype], 1, -1):
    series = series * vs + 1.0 / k
  return jnp.where(small, series * vs * vs, -log_q - v)


def _poly_parts(axes, logits, targets, epsilon, mask):
  # L = Σ_j t_j (-log q_j + ε v_j) = Σ_j t_j (φ(v_j) + (1 + ε) v_j), v = 1 - q: each term
  # ≥ 0 for ε ≥ -1, so the loss has no cancellation, also at ε = -1 where it is ≈ v²/2.
  z = _normalizer.masked_logits(logits, mask)
  t = _core.masked(targets, mask)
  c, lse = _normalizer.stats(z, axes)
  log_q = _normalizer.log_shift(z, c, axes) - lse
  q = _normalizer.softmax_from_log(log_q)
  v = -_core.expm1(log_q)  # 1 - q_j as the sum of the other classes
  eps = epsilon  # broadcast over the classes: ∂L/∂ε sums ∂L/∂ε_j = t_j v_j
  per_class = _neg_log1m_minus(v, log_q) + (1 + eps) * v  # = -log q_j + ε v_j
  loss = jnp.sum(_core.mul0(t, per_class), axis=axes, keepdims=True)
  u = jnp.sum(t * v, axis=axes, keepdims=True)  # 1 - p_t for Σt = 1
  # ∂L/∂z_k = (1+ε) q_k (r_k - u) + (q_k u - t_k v_k), r_k = Σ_{j≠k} t_j. The bracket is
  # formed as Σ_{j≠k} t_j v_j - v_k u where q_k is dominant (v_k < 1/2): e.g. -v_y² at the
  # label of a one-hot target, where -v_y + q_y v_y would cancel to 0.
  dominant = v < 0.5  # one class per row at most
  u_rest = u - t * v
  bracket = jnp.where(dominant, u_rest - v * u, q * u - t * v)
  # r_k - u = p_t - t_k, formed at a dominant class as Σ_{j≠k} t_j q_j - t_k v_k: with soft
  # targets r_k ≈ u there, and r_k - u cancelled (∂²/∂z_k∂ε was 0 at a class winning by 20,
  # exact q_k (p_t - t_k) = -2.7e-10 for t = [0.57, 0.43]; and Σt - t_k rounded a small r_k
  # next to a dominant target, t = [1 - 8e-5, 8e-5]: the gradient was 4e-4 off). Elsewhere
  # q_k ≤ 1/2 and r_k - u = Σt - t_k - u keeps its precision.
  t_sum = jnp.sum(t, axis=axes, keepdims=True)
  tq_rest = jnp.sum(jnp.where(dominant, 0, t * q), axis=axes, keepdims=True)
  r_minus_u = jnp.where(dominant, tq_rest - t * v, t_sum - t - u)
  grad_z = _core.masked((1 + eps) * q * r_minus_u + bracket, mask)
  # ∂L/∂t_j = -log q_j + ε v_j; on an impossible class (q_j = 0) with t_j = 0 the first
  # part is that of 0·log 0 = 0, a constant (as in softmax_cross_entropy): ε, not +inf.
  impossible = (t == 0) & (log_q == -jnp.inf)
  grad_t = _core.masked(jnp.where(impossible, eps * v, per_class), mask)
  grad_eps = _core.masked(t * v, mask)
  return jnp.squeeze(loss, axes), (grad_z, grad_t, grad_eps, None), axes


_poly = _normalizer.custom_jvp_from_partials(
  lambda *args: _poly_parts(*args)[0], _poly_parts, num_static=1
)


@measure(logits=Role.LOGITS, targets=Role.DISTRIBUTION)
def poly_loss_cross_entropy(
  logits: ArrayLike,
  targets: ArrayLike,
  axis: _core.Axis = -1,
  *,
  epsilon: ArrayLike = 2.0,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> jax.Array:
  r"""Poly-1 loss (Leng et al. 2022): softmax cross-entropy plus ε·(1 - p_t), tail-exact.

  .. math::
    L_{\text{Poly-1}} = H(t, \mathrm{softmax}(z)) + \varepsilon\,(1 - p_t),\qquad
    1 - p_t = \sum_j t_j\,(1 - q_j),\; q = \mathrm{softmax}(z),

  which is optax's ``1 - Σ_j t_j q_j`` for targets summing to 1. Each 1 - q_j is
  ``-expm1(log q_j)`` from a tail-accurate log-softmax: for a label that wins by 20 nats
  1 - p_t is 2.06e-9 (optax: 0), and the gradient of the ε term, q_k((Σ_{j≠k} t_j) - (1 -
  p_t)), is formed without 1 - q rounded. Same conventions as
  :func:`xent_jax.softmax_cross_entropy` (``axis``, ``where``, -inf logits).

  Args:
    logits: ``[..., C, ...]``.
    targets: target probabilities, same shape as ``logits`` (one-hot or soft).
    axis: the class axis (int or tuple of ints).
    epsilon: ε, the weight of the polynomial term (any real; the paper uses ε ∈ [-1, 5]).
    where: optional boolean mask broadcastable to ``logits``; False entries are excluded.
    base: logarithm base; None for nats (applies to the whole loss).

  Returns:
    Loss per example: ``logits`` with ``axis`` removed.

  >>> loss = poly_loss_cross_entropy([0.0, 0.0], [1.0, 0.0], epsilon=2.0)  # log 2 + 1
  >>> float(loss)  # doctest: +ELLIPSIS
  1.6931...
  """
  fn = "poly_loss_cross_entropy"
  logits = _core.as_float(logits, "logits", fn)
  targets = _core.as_float(targets, "targets", fn)
  _core.check_same_shape(fn, logits=logits, targets=targets)
  logits, targets = _core.promote(fn, logits=logits, targets=targets)
  axes = _core.normalize_axis(axis, logits.ndim, "logits", fn)
  _core.check_classes(logits, axes, "logits", fn)
  mask = _core.as_mask(where, logits.shape, fn)
  if isinstance(epsilon, bool) or epsilon is None:
    raise TypeError(f"{fn}: `epsilon` must be a number, got {epsilon!r}.")
  epsilon = _core.as_float(epsilon, "epsilon", fn).astype(logits.dtype)
  out_shape = tuple(n for i, n in enumerate(logits.shape) if i not in axes)
  try:
    epsilon = jnp.broadcast_to(epsilon, out_shape)
    epsilon = jnp.broadcast_to(jnp.expand_dims(epsilon, axes), logits.shape)
  except ValueError:
    raise ValueError(
      f"{fn}: `epsilon` of shape {epsilon.shape} does not broadcast to the per-example "
      f"loss shape {out_shape}."
    ) from None
  scale = _core.log_scale(base, fn)
  # Excluded entries masked before the custom_jvp, so that their tangents are 0 as well.
  logits, targets = _core.masked(logits, mask), _core.masked(targets, mask)
  return _core.in_base(_poly(axes, logits, targets, epsilon, mask), scale)
