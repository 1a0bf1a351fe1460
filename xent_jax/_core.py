"""Shared building blocks: argument checking, dtype policy and tail-accurate primitives.

Nothing here is public API. Every public function of xent_jax funnels its inputs through
:func:`as_float`, :func:`as_mask` and :func:`log_scale` so that the conventions of SPEC §1
(dtype policy, trace-time errors naming the argument, ``base``) hold in one place.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from xent_jax import _normalizer

Axis = int | Sequence[int]
# The `precision=` of a function with matmuls: a lax.Precision, one of its names
# ("highest", "tensorfloat32", "default", ...), or None for HIGHEST.
PrecisionLike = lax.Precision | str | None

# Low-precision floats are computed in float32: their 8- or 11-bit mantissa cannot hold the
# tail of a log-probability, and the result is returned as float32 (documented per function).
LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_precision(precision: PrecisionLike, fn: str) -> lax.Precision:
  """The ``lax.Precision`` of a ``precision=`` argument; None means ``HIGHEST`` (SPEC §9)."""
  if precision is None:
    return lax.Precision.HIGHEST
  if isinstance(precision, lax.Precision):
    return precision
  if not isinstance(precision, str):
    raise TypeError(
      f"{fn}: `precision` must be a jax.lax.Precision, one of its names or None; "
      f"got precision={precision!r:.80}."
    )
  try:
    return lax.Precision(precision)
  except ValueError:
    raise ValueError(
      f"{fn}: `precision` must name a jax.lax.Precision ('highest', 'float32', 'high', "
      f"'tensorfloat32', 'bfloat16_3x', 'default', 'bfloat16', 'fastest'); got "
      f"precision={precision!r:.80}."
    ) from None


def matmul(a: jax.Array, b: jax.Array, precision: lax.Precision) -> jax.Array:
  """``a @ b`` with its precision stated, never left to the backend (SPEC §9).

  JAX's default precision lets the backend choose: TF32 for float32 on recent NVIDIA GPUs,
  bfloat16 passes on TPUs. ``HIGHEST`` is true float32 there (the CPU computes float32
  either way). Low-precision operands (both bfloat16 or float16) multiply in their own
  type, whose products are exact in float32, and accumulate in float32
  (``preferred_element_type``): the result is float32, as for every measure of the library.
  """
  low = jnp.result_type(a, b) in LOW_PRECISION
  return jnp.matmul(a, b, precision=precision, preferred_element_type=jnp.float32 if low else None)


def has_cpu_backend() -> bool:
  """Whether JAX's CPU backend is up: host callbacks (``jax.debug.callback``) run on it."""
  try:
    return bool(jax.local_devices(backend="cpu"))
  except RuntimeError:  # e.g. JAX_PLATFORMS=cuda: only the accelerator was initialised
    return False


def check_host_callbacks(fn: str, what: str) -> None:
  """One clear line, instead of JAX's error from inside a running program, when ``what``
  needs a host callback and JAX runs without its CPU backend (``JAX_PLATFORMS=cuda``)."""
  if has_cpu_backend():
    return
  platforms = jax.config.jax_platforms or jax.default_backend()
  raise RuntimeError(
    f"{fn}: {what} in a host callback (jax.debug.callback), which needs JAX's CPU backend, "
    f"and JAX_PLATFORMS={platforms!r} leaves it out: run with JAX_PLATFORMS={platforms},cpu "
    "(or with JAX_PLATFORMS unset)."
  )


def as_array(x: ArrayLike, name: str, fn: str) -> jax.Array:
  """jnp.asarray, with an error naming the argument for strings, objects or ragged lists."""
  try:
    return jnp.asarray(x)
  except (TypeError, ValueError) as e:
    raise TypeError(
      f"{fn}: `{name}` must be an array of numbers, got {type(x).__name__} ({e})."
    ) from None


def as_float(x: ArrayLike, name: str, fn: str) -> jax.Array:
  """Returns ``x`` as a float32/float64 array; integer, bool or complex input is an error."""
  x = as_array(x, name, fn)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"{fn}: `{name}` must be a floating-point array, got dtype {x.dtype} with shape {x.shape}."
    )
  if x.dtype in LOW_PRECISION:
    x = x.astype(jnp.float32)
  return x


def clip_host_labels(labels: ArrayLike) -> ArrayLike:
  """64-bit host integer labels clipped to the int32 range when x64 is off; else as given.

  JAX would wrap them to int32 (a label 2**32 + 1 becoming class 1, silently): clipped, one
  out of range stays out of range. JAX arrays (and tracers) are int32 already.
  """
  if jax.config.jax_enable_x64 or isinstance(labels, jax.Array):
    return labels
  try:
    host = np.asarray(labels)
  except ValueError:
    return labels  # ragged: as_array names the argument
  if host.dtype.kind not in "iu" or host.dtype.itemsize != 8:
    return labels
  info = np.iinfo(np.int32)
  clipped = (
    np.minimum(host, info.max) if host.dtype.kind == "u" else np.clip(host, info.min, info.max)
  )
  return clipped.astype(np.int32)


def as_labels(labels: ArrayLike, name: str, fn: str) -> jax.Array:
  """Returns integer class labels; float or bool labels are an error (they would truncate).

  Labels narrower than 32 bits (int8, uint8, int16, uint16) are widened to int32, and
  unsigned ones of 32 or 64 bits made signed (values above the signed maximum clipped, still
  out of range, never equal to a negative ``ignore_index``): class
  indices are compared with iotas and class counts in the labels' dtype, which would wrap
  (an int8 label 100 against 200 classes, or a uint8 label 5 matching class 261). 64-bit
  host labels with x64 off: see :func:`clip_host_labels`.
  """
  labels = clip_host_labels(labels)
  labels = as_array(labels, name, fn)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
      f"{fn}: `{name}` must hold integer class indices, got dtype {labels.dtype} "
      f"with shape {labels.shape}."
    )
  if labels.dtype.itemsize < 4:
    labels = labels.astype(jnp.int32)
  elif jnp.issubdtype(labels.dtype, jnp.unsignedinteger):
    # Signed, clipped: a uint32 2**32 - 1 compared with ignore_index=-1 equalled it.
    signed = jnp.int32 if labels.dtype.itemsize == 4 else jnp.int64
    labels = jnp.minimum(labels, jnp.iinfo(signed).max).astype(signed)
  return labels


def promote(fn: str, **arrays: jax.Array) -> list[jax.Array]:
  """Casts float arrays to their common float dtype (float64 wins over float32)."""
  dtype = jnp.result_type(*arrays.values())
  return [a.astype(dtype) for a in arrays.values()]


def normalize_axis(axis: Axis, ndim: int, name: str, fn: str) -> tuple[int, ...]:
  """Returns ``axis`` as a sorted tuple of non-negative ints, checked against ``ndim``."""
  try:
    axes = [_as_int(a) for a in (axis if isinstance(axis, Sequence) else (axis,))]
  except TypeError:
    raise TypeError(f"{fn}: `axis` must be an int or a tuple of ints, got {axis!r}.") from None
  if not axes:
    raise ValueError(f"{fn}: `axis` must name at least one axis, got {axis!r}.")
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(f"{fn}: `axis`={axis!r} is out of range for `{name}` of rank {ndim}.")
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"{fn}: `axis`={axis!r} repeats an axis.")
  return tuple(sorted(out))


def check_classes(x: jax.Array, axes: tuple[int, ...], name: str, fn: str) -> None:
  """A softmax needs at least one class: a zero-size class axis is a clear ValueError."""
  if any(x.shape[a] == 0 for a in axes):
    raise ValueError(
      f"{fn}: `{name}` of shape {x.shape} has no classes along axis {axes}; a softmax "
      "needs at least one."
    )


def _as_int(a) -> int:
  """A Python int from any integer scalar (NumPy and concrete JAX ints too; not bools)."""
  if isinstance(a, bool | str | bytes):
    raise TypeError(a)
  return operator.index(a)


def check_same_shape(fn: str, **arrays: jax.Array) -> None:
  """Raises a ValueError naming both arguments when shapes differ (no silent broadcasting)."""
  (n1, a1), (n2, a2) = arrays.items()
  if a1.shape != a2.shape:
    raise ValueError(
      f"{fn}: `{n1}` and `{n2}` must have the same shape, got {a1.shape} and {a2.shape}."
    )


def as_mask(where: ArrayLike | None, shape: tuple[int, ...], fn: str) -> jax.Array | None:
  """Checks that ``where`` is boolean and broadcastable to ``shape``; returns it broadcast."""
  if where is None:
    return None
  where = as_array(where, "where", fn)
  if where.dtype != jnp.bool_:
    raise TypeError(f"{fn}: `where` must be a boolean mask, got dtype {where.dtype}.")
  try:
    return jnp.broadcast_to(where, shape)
  except ValueError:
    raise ValueError(
      f"{fn}: `where` of shape {where.shape} does not broadcast to the input shape {shape}."
    ) from None


def log_scale(base: float | None, fn: str) -> float | None:
  """Returns 1/ln(base) (the factor turning nats into the unit of ``base``), None for nats."""
  if base is None:
    return None
  try:
    if isinstance(base, str | bytes):
      raise TypeError
    base = float(base)
  except TypeError:
    raise TypeError(
      f"{fn}: `base` must be a Python number or None (a traced value cannot be checked); "
      f"got {type(base).__name__}."
    ) from None
  if not base > 0 or base == 1 or math.isinf(base):
    raise ValueError(f"{fn}: `base` must be finite, > 0 and != 1, got {base}.")
  return 1.0 / math.log(base)


def in_base(x: jax.Array, scale: float | None) -> jax.Array:
  """Converts a value in nats to the requested base (a no-op for nats)."""
  return x if scale is None else x * jnp.asarray(scale, x.dtype)


def check_smoothing(label_smoothing: float, fn: str) -> float:
  """Label smoothing must be a Python float in [0, 1]."""
  try:
    if isinstance(label_smoothing, str | bytes):
      raise TypeError
    eps = float(label_smoothing)
  except TypeError:
    raise TypeError(
      f"{fn}: `label_smoothing` must be a Python number, got {type(label_smoothing).__name__}."
    ) from None
  if not 0.0 <= eps <= 1.0:
    raise ValueError(f"{fn}: `label_smoothing` must be in [0, 1], got {eps}.")
  return eps


def as_weights(weights: ArrayLike | None, shape: tuple[int, ...], dtype, fn: str):
  """Per-example ``weights``: real, broadcastable to the per-example loss ``shape``."""
  if weights is None:
    return None
  weights = as_array(weights, "weights", fn)
  if not jnp.issubdtype(weights.dtype, jnp.floating) and not jnp.issubdtype(
    weights.dtype, jnp.integer
  ):
    raise TypeError(f"{fn}: `weights` must be real numbers, got dtype {weights.dtype}.")
  try:
    return jnp.broadcast_to(weights, shape).astype(dtype)
  except ValueError:
    raise ValueError(
      f"{fn}: `weights` of shape {weights.shape} does not broadcast to the per-example "
      f"loss shape {shape}."
    ) from None


def weigh(loss: jax.Array, weights: jax.Array | None, included: jax.Array | None) -> jax.Array:
  """``loss · weights``, where an example not ``included`` (skipped by ``ignore_index`` or
  fully excluded by ``where``; its loss is 0) costs exactly 0 whatever its weight holds.

  Its weight is replaced by 0 first: 0·inf (a weight 1/length of an empty, padded row)
  would be NaN in the value, and the same product in the VJP NaN in the gradient.
  """
  if weights is None:
    return loss
  if included is not None:
    weights = jnp.where(included, weights, jnp.zeros((), weights.dtype))
  return loss * weights


def check_ignore_index(ignore_index, fn: str) -> int | None:
  """``ignore_index`` must be None or a Python integer (a static label value)."""
  if ignore_index is None:
    return None
  if isinstance(ignore_index, bool) or not isinstance(ignore_index, int | np.integer):
    raise TypeError(
      f"{fn}: `ignore_index` must be a Python int or None, got {type(ignore_index).__name__}."
    )
  info = np.iinfo(np.int64 if jax.config.jax_enable_x64 else np.int32)
  if not info.min <= ignore_index <= info.max:
    raise ValueError(
      f"{fn}: `ignore_index`={ignore_index} is outside the range of the labels' integer type "
      f"[{info.min}, {info.max}]" + ("" if jax.config.jax_enable_x64 else " (x64 is off).")
    )
  return int(ignore_index)


def distribution_pair(fn, p, q, axis, where, base, names=("p", "q")):
  """Checks and canonicalises a (p, q) pair of distributions; returns (p, q, axes, mask, scale)."""
  p, q = as_float(p, names[0], fn), as_float(q, names[1], fn)
  check_same_shape(fn, **{names[0]: p, names[1]: q})
  p, q = promote(fn, p=p, q=q)
  axes = normalize_axis(axis, p.ndim, names[0], fn)
  mask = as_mask(where, p.shape, fn)
  return p, q, axes, mask, log_scale(base, fn)


def masked_pair(p: jax.Array, q: jax.Array, mask: jax.Array | None):
  """Excluded entries of a (target, model) pair as p = 0, q = 1: a term of exactly 0."""
  return masked(p, mask), masked(q, mask, fill=1)


def log_accurate(p: jax.Array) -> jax.Array:
  """log(p) with full relative precision also for p close to 1.

  For p > 1/2, p - 1 is exact (Sterbenz) and log1p keeps the relative precision of the
  small result; a plain log near 1 may lose it depending on the backend's implementation.
  Each branch sees only the inputs it is chosen for (double where), so the unused one
  never puts log1p(-1) or log 0 into a derivative.
  """
  big = p > 0.5
  return jnp.where(big, jnp.log1p(jnp.where(big, p, 1) - 1), jnp.log(jnp.where(big, 1, p)))


def log1m_accurate(p: jax.Array) -> jax.Array:
  """log(1 - p) with full relative precision for every p in [0, 1].

  For p < 1/2 log1p(-p) is accurate; for p >= 1/2, 1 - p is exact (Sterbenz) so log is.
  Double where, as in :func:`log_accurate`.
  """
  small = p < 0.5
  return jnp.where(small, jnp.log1p(-jnp.where(small, p, 0)), jnp.log(1 - jnp.where(small, 0, p)))


# Beyond a = 64, e^{-a} is below working precision next to 1 in float32 and float64 alike.
EXP_TAIL = 64.0
_TAIL_RAISE = 16.0


def times_exp_neg(a: jax.Array, x: jax.Array) -> jax.Array:
  """x·e^{-a} for a ≥ 0, a normal number wherever the exact product is.

  e^{-a} alone is subnormal (flushed to 0 on CPU) beyond a = 87.3 in float32 (708 in
  float64) while x·e^{-a} can still be normal: 88·e^{-88} = 5.4e-37 in an entropy, or a
  positive weight 1e10 times e^{-100} = 3.7e-34 in a weighted loss. Beyond a = 64 the
  product is formed as e^{t + 16 - a}·(x·e^{-t})·e^{-16} with the integer t = ⌊log |x|⌋
  clipped to [0, -log(tiny) - 8]: t + 16 - a is exact, and no factor underflows before
  the product does (none overflows either). Below, the plain x·e^{-a}. No derivative
  flows through t.
  """
  tail = a > EXP_TAIL
  a_tail = jnp.where(tail, a, EXP_TAIL)
  top = math.floor(-math.log(float(jnp.finfo(a.dtype).tiny))) - 8
  t = lax.stop_gradient(jnp.clip(jnp.floor(jnp.log(jnp.abs(x))), 0, top))
  lifted = jnp.exp(t + _TAIL_RAISE - a_tail) * (x * jnp.exp(-t)) * math.exp(-_TAIL_RAISE)
  return jnp.where(tail, lifted, x * jnp.exp(-a))


@jax.custom_jvp
def expm1(x: jax.Array) -> jax.Array:
  """e^x - 1, whose derivative is e^x itself.

  JAX's rule forms it as expm1(x) + 1, which is 0 for x < -17 in float32 (expm1(-20)
  rounds to -1): the Hessian of a misclassified example's cross-entropy at its label,
  q_y (1 - q_y) = 2.1e-9, came out 0.
  """
  return jnp.expm1(x)


@expm1.defjvp
def _expm1_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return expm1(x), jnp.exp(x) * dx


def mul0(a: jax.Array, b: jax.Array) -> jax.Array:
  """a * b with 0 * anything = 0 (the 0·log 0 = 0 convention, also for 0 · inf)."""
  a = jnp.asarray(a)
  return _mul0(a, jnp.asarray(b))


@jax.custom_jvp
def _mul0(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.where(a == 0, jnp.zeros((), a.dtype), a * b)


def _mul0_jvp(primals, tangents):
  # d(a·b) = b·da + a·db, with 0·db = 0 at a = 0 (db may be inf there: d log q at q = 0) and
  # the coefficient of da taken as 0 only where a = 0 and b is infinite (the convention's
  # own point). The guard's select alone would drop b·da at a = 0, where b·da is the
  # derivative: ∂²/∂p∂q of p·log q at p = 0 is 1/q, and it came out 0 (an asymmetric Hessian).
  # A zero tangent adds no term (b = -inf times it would be NaN), as in JAX's own product.
  (a, b), (da, db) = primals, tangents
  out = _mul0(a, b)
  zero = jnp.zeros((), out.dtype)
  tangent = jnp.zeros_like(out)
  if not isinstance(da, SymbolicZero):
    tangent = tangent + jnp.where((a == 0) & ~jnp.isfinite(b), zero, b) * da
  if not isinstance(db, SymbolicZero):
    tangent = tangent + jnp.where(a == 0, zero, a * db)
  return out, tangent


_mul0.defjvp(_mul0_jvp, symbolic_zeros=True)


@jax.custom_jvp
def ratio(x: jax.Array, y: jax.Array) -> jax.Array:
  """x / y, whose derivative is formed as dx/y - (x/y)·(dy/y).

  JAX's own rule for x / y forms y⁻² (integer_pow): at y = 1e-20 in float32 that overflows
  (1e40) and a second derivative of x·log y became inf where it is -x/y² = -1e20 (and the
  focal loss's Hessian 0·inf = NaN, its 1 - p_t below 1e-19 at a margin of 44 nats).
  """
  return x / y


@ratio.defjvp
def _ratio_jvp(primals, tangents):
  (x, y), (dx, dy) = primals, tangents
  r = ratio(x, y)
  return r, dx / y - r * (dy / y)


def _xlogy_parts(x, y):
  # Only the point x = 0, y = 0 is special: there y is replaced by 1 inside the log (the
  # "double where" idiom), so that the value and both partials are 0 instead of 0·inf. The
  # partials are formed from the primal values (∂/∂y = x/y, not (ct·x)/y, whose product
  # can underflow at y = tiny): ∂/∂x = log y, ∂/∂y = x/y (0 where x = 0, +inf at y = 0 < x).
  safe_y = jnp.where((x == 0) & (y == 0), jnp.ones((), y.dtype), y)
  log_y = log_accurate(safe_y)
  # (x/y is 0 at x = 0 < y, with the x-derivative 1/y: no select on x, which would drop it)
  d_y = jnp.where((x == 0) & (y == 0), jnp.zeros((), x.dtype), ratio(x, safe_y))
  return x * log_y, (log_y, d_y), ()


def _xlog1my_parts(x, y):
  # x · log(1 - y), the same convention at y = 1; ∂/∂x = log(1 - y), ∂/∂y = -x/(1 - y).
  safe_y = jnp.where((x == 0) & (y == 1), jnp.zeros((), y.dtype), y)
  log_1my = log1m_accurate(safe_y)
  d_y = jnp.where((x == 0) & (y == 1), jnp.zeros((), x.dtype), -ratio(x, 1 - safe_y))
  return x * log_1my, (log_1my, d_y), ()


xlogy = _normalizer.custom_jvp_from_partials(lambda x, y: _xlogy_parts(x, y)[0], _xlogy_parts)
xlogy.__doc__ = """x · log(y) with 0 · log 0 = 0 in the value and in both partial derivatives."""
xlog1my = _normalizer.custom_jvp_from_partials(lambda x, y: _xlog1my_parts(x, y)[0], _xlog1my_parts)
xlog1my.__doc__ = """x · log(1 - y) with the same 0 · log 0 = 0 convention as :func:`xlogy`."""


def masked(x: jax.Array, mask: jax.Array | None, fill: float = 0) -> jax.Array:
  """Replaces the entries excluded by ``mask`` by ``fill`` (value and derivative).

  Applied to an *input* before any arithmetic, this is the first half of the double-where
  pattern: whatever an excluded entry holds (NaN, ±inf, -1), no operation downstream sees
  it, so it contributes exactly 0 to the value, the VJP and the JVP.
  """
  return x if mask is None else jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def nonnegative_within_rounding(total: jax.Array, magnitude: jax.Array) -> jax.Array:
  """``total`` moved to 0 where it is negative by less than its rounding error, else as is.

  For a sum whose exact value is ≥ 0 when the inputs are valid (a KL divergence of two
  distributions) and whose rounding error is at most ``8·eps·magnitude`` (``magnitude``:
  the sum of the absolute values of the parts that cancel). Beyond that bound a negative
  total is the formula's value for invalid input (e.g. unnormalised measures) and is
  returned as it is, never clamped to a silent 0. The derivative is the identity.
  """
  tol = 8 * jnp.finfo(total.dtype).eps * magnitude
  rounded = (total < 0) & (total >= -tol)
  return jnp.where(rounded, total - jax.lax.stop_gradient(total), total)


def straight_through_nonnegative(x: jax.Array) -> jax.Array:
  """max(x, 0) in value, the identity in the derivative.

  For a divergence whose exact value is ≥ 0 (Gibbs) but whose rounded sum can come out at
  -1 ulp: the value is moved towards the truth, and the gradient is not zeroed there.
  """
  return jnp.where(x < 0, x - jax.lax.stop_gradient(x), x)
