"""The softmax log-normaliser, exact and fast, and the derivative rules built on it.

Every softmax measure of xent_jax (log_softmax, entropy_from_logits, the softmax
cross-entropies, kl_divergence_from_logits) is a formula in two row statistics: a shift c
(the row max, or for integer labels the label's own logit) and the log-normaliser

.. math::
  L = \\log \\sum_j e^{z_j - c} .

This module computes (c, L) -- accurately, and on the fast path in fused passes -- and turns
a measure's closed-form derivatives into a ``jax.custom_jvp``. Nothing here is public API.

Accuracy: the log1p trick. With c = z_k one of the logits, the term j = k of Σ e^{z_j - c}
is exactly 1. When the total S is below 2, z_k is the strict maximum (any other class at
least as large would add ≥ 1), every other term is < 1, and the non-maximal mass
Σ_{j ≠ k} e_j is summed on its own, so L = log1p(mass) keeps the relative precision of a
tiny L. ``log(S)`` would round 1 + mass to 1 and return log p_max = 0. For S ≥ 2, log S ≥
log 2 is accurate. :func:`plain_mass`, :func:`frac_mass` and :func:`log_total` are the
trick, written once. Terms that are each subnormal (flushed to 0 on the CPU) can add up to
a normal mass (z = [90, 5, 0, ..., 0] with 1000 classes in float32: L = 9.4e-37, of which
the 998 terms e^{-90} make 87%): where the plain mass is small enough for that to matter
(below C·tiny/eps), it is summed again with its exponent raised by :data:`MASS_RAISE` and
scaled back after the sum (5-10x the cost of the plain pass, so only there).

Speed (XLA:CPU in jax 0.10). XLA hands a reduction whose inputs are computed by arithmetic
only (exp, log1p, floor, subtract, multiply, max, min, iota; no compare, no select) to
YNNPACK, which fuses the whole chain -- even a row max, the exp-sum that uses it and a
second reduction -- into one cache-blocked pass (max + Σ exp at 3x a read pass, where the
same two passes run separately at 4x). A compare or select inside the chain, two
reductions that are both outputs, or a materialised [B, C] temporary split it. Each
elementwise op in such a pass costs about a third of a read pass; a fresh [B, C] output
costs 3x a read pass with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` and 10x without.
Hence the fast statistics (class axis last, no mask or smoothing): the fused passes
compute c and L for almost every row, and :func:`fix_rows` recomputes the few others (±inf,
NaN, overflow) with the general, exact statistics, K rows at a time.

Derivatives. :func:`log_normalizer` is a ``custom_jvp``: dc is the tangent of the logit c
is (:func:`shift_tangent`) and dL = Σ_j softmax_j (dz_j - dc), so that d(z_k - c - L) of the
class c is keeps its tail (the measures depend on z - c - L only, which any dc leaves
exact in first derivatives; this dc keeps the second ones exact too, and
:func:`zero_at_shift` makes d(z_k - c) an exact 0 at that class, so that their transpose,
reverse over reverse, keeps them as well). Each measure is then a ``custom_jvp`` made by
:func:`custom_jvp_from_partials` from its closed-form partial derivatives, written from the
statistics with the precision of the tails (1 - q of a dominant class as the sum of the
others, never as 1 - q): forward mode contracts them with the tangents, reverse mode is the
transpose (the cotangent times the same arrays, one elementwise pass), and higher orders
differentiate the closed forms, whose only non-elementary part is L again. A fast path may
also give a one-pass formula for the JVP applied forward (:func:`_contract`); it is only
ever evaluated. No derivative ever goes through the fast passes, their ``lax.cond`` or the
``while_loop`` of :func:`fix_rows`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

# -------------------------------------------------------------------- fused-pass helpers


def _fence(x: jax.Array) -> jax.Array:
  """The identity (NaN stays NaN), as a select XLA cannot fold: it ends the fusion."""
  return jnp.where(x == x, x, jnp.nan)


def row_sum(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Σ over ``axes`` (kept as size 1) as its own, fast, reduction pass."""
  return _fence(jnp.sum(x, axis=axes, keepdims=True))


def row_max(z: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """max over ``axes`` (kept); an all -inf row gets 0, so that its z - m is all -inf."""
  m = jnp.max(z, axis=axes, keepdims=True)
  return jnp.where(m == -jnp.inf, jnp.zeros((), z.dtype), m)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def shift(z: jax.Array, c: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """d = z - c for probabilities e^{d - L}: arithmetic only, no NaN at z = c = +inf.

  Both are clamped to fmax first: in a row whose maximum c is +inf the +inf logits get
  d = 0 (they share the mass) and the finite ones d ≈ -fmax (probability e^d = 0);
  elsewhere the clamp changes nothing. No compare or select, so the passes that use it
  stay fused. For log-probabilities use :func:`log_shift`. (The constant comes through a
  barrier: XLA would otherwise share its broadcast between passes by writing it out as a
  [B, C] temporary.) ``axes``, the class axes, serve the derivative (:func:`zero_at_shift`).
  """
  fmax = row_constant(c, jnp.finfo(z.dtype).max)
  return jnp.minimum(z, fmax) - jnp.minimum(c, fmax)


@shift.defjvp
def _shift_jvp(axes, primals, tangents):
  out, tangent = jax.jvp(functools.partial(shift.fun, axes=axes), primals, tangents)
  return out, zero_at_shift(*primals, tangent, axes)


def zero_at_shift(z: jax.Array, c: jax.Array, tangent: jax.Array, axes) -> jax.Array:
  """A tangent of z - c (c with the tangent :func:`shift_tangent` gives it), set to an exact
  0 at the class c is where that class is the only one (it is 0 there in value).

  Forward mode is unchanged. Reverse mode is the point: transposed, dz - dc sends the
  class c its own cotangent g_c directly and -Σ_j g_j through dc, and g_c - Σ_j g_j
  rounds away the tail Σ_{j≠c} g_j next to g_c ≈ 1 (grad of grad at a class winning by
  17+ nats was 0). With the zero it receives -Σ_{j≠c} g_j only. Tied maxima keep
  dz - dc (dc is their mean; no class dominates there). ``axes=None``: no zero.
  """
  if axes is None:
    return tangent
  return jnp.where(unique_shift(z, c, axes), jnp.zeros((), tangent.dtype), tangent)


def unique_shift(z: jax.Array, c: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Where z is c and no other class of its row is (a maximum that is not tied)."""
  at_c = z == c
  return at_c & (jnp.sum(at_c, axis=axes, keepdims=True) == 1)


def row_constant(row: jax.Array, value: float) -> jax.Array:
  """``value`` shaped like the row statistic ``row``, as arithmetic on it (sign(row)·0 + v).

  XLA shares the broadcast of a literal constant between fusions by writing it out as a
  [B, C] temporary (a barrier does not stop it: constants fold through). A row value is
  broadcast inside each fused pass instead. NaN rows stay NaN.
  """
  return jnp.sign(row) * 0 + jnp.asarray(value, row.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def log_shift(z: jax.Array, c: jax.Array, axes: tuple[int, ...] | None) -> jax.Array:
  """d = z - c for log-probabilities: 0 where z = c = ±inf, -inf for a finite z when c = +inf.

  A compare and a select (for values and the few rows the fast paths hand over); its
  derivative is dz - dc everywhere, the maximum included, with the exact zero of
  :func:`zero_at_shift` over the class ``axes`` (None: ``z`` is not the whole row).
  """
  return jnp.where(z == c, jnp.zeros((), z.dtype), z - c)


@log_shift.defjvp
def _log_shift_jvp(axes, primals, tangents):
  (z, c), (dz, dc) = primals, tangents
  return log_shift(z, c, axes), zero_at_shift(z, c, dz - dc, axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def label_log_prob(z: jax.Array, index: jax.Array, c: jax.Array, lse: jax.Array, axis: int):
  """log q_y = (z_y - c) - L at the classes ``index`` (``axis`` kept, size 1).

  Its derivative is formed as d log q_y = Σ_j q_j (dz_y - dz_j), whose label term is
  exactly 0: for a dominant label, ∂/∂z_y = 1 - q_y = Σ_{j≠y} q_j keeps its tail, where the
  plain dz_y - Σ_j q_j dz_j rounds it to 0 (the second derivatives of the integer-label
  losses differentiate it: their Hessian at the label was 0 for a label winning by 20).
  """
  return log_shift(jnp.take_along_axis(z, index, axis=axis), c, None) - lse


@label_log_prob.defjvp
def _label_log_prob_jvp(axis, primals, tangents):
  z, index, c, lse = primals
  dz = tangents[0]
  # The label's own term is 0; leaving it out of the sum (q_rest) makes the transpose exact
  # too: the label gets ct·Σ_{j≠y} q_j, not ct·Σ_j q_j - ct·q_y, which cancels (grad of grad).
  is_label = jax.lax.broadcasted_iota(index.dtype, z.shape, axis) == index
  q_rest = jnp.where(is_label, jnp.zeros((), z.dtype), softmax_from_log(shift(z, c, (axis,)) - lse))
  dz_label = jnp.take_along_axis(dz, index, axis=axis)
  out = label_log_prob(z, index, c, lse, axis)
  return out, jnp.sum(q_rest * (dz_label - dz), axis=axis, keepdims=True)


def separate(x: jax.Array, n: int) -> tuple[jax.Array, ...]:
  """``n`` references to ``x`` that XLA keeps apart (no copy is made).

  Without it XLA shares a subexpression of several passes over ``x`` (``x - max``, an
  ``exp``) by writing it out as a [B, C] temporary, which costs more than recomputing it
  inside each fused pass.
  """
  return jax.lax.optimization_barrier((x,) * n)


def clamp_neg_inf(d: jax.Array, row: jax.Array) -> jax.Array:
  """max(d, -√fmax): lets q · d be 0 where d = -inf and q = e^d = 0, with arithmetic only.

  √fmax rather than fmax: a second derivative multiplies the clamped value by cotangents
  and tangents, and fmax times 2 would overflow to inf (then inf · 0 = NaN). Any d below
  -√fmax has e^d = 0 anyway. ``row`` is a row statistic of the same rows (see
  :func:`row_constant`).
  """
  return jnp.maximum(d, row_constant(row, -math.sqrt(jnp.finfo(d.dtype).max)))


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Excluded classes become -inf logits: probability 0, no part in the normaliser."""
  return logits if mask is None else jnp.where(mask, logits, -jnp.inf)


# Where e^x is a normal number just above the underflow threshold, XLA's exp on the CPU
# flushes its subnormal intermediate to 0 (measured: q = 1.8e-38 returned as 0 in float32).
RAISE = 16.0
_UNDERFLOW = {jnp.dtype(jnp.float32): 80.0, jnp.dtype(jnp.float64): 700.0}


def softmax_from_log(log_q: jax.Array) -> jax.Array:
  """q = e^{log q} for log q ≤ 0, normal wherever the exact q is.

  Below log q = -81 (float32; -701 in float64; where :func:`raise_switch` is 1) it is
  e^{log q + 16}·e^{-16}; above, the plain e^{log q}, bit for bit. For elementwise passes
  (partial derivatives): the switch is a compare and two selects, half the operations of
  :func:`times_prob_switched`'s arithmetic one, which a reduction needs to stay fused.
  """
  dtype = log_q.dtype
  deep = log_q <= -(_UNDERFLOW[dtype] + 1)
  raised = jnp.exp(log_q + jnp.where(deep, jnp.asarray(RAISE, dtype), jnp.asarray(0, dtype)))
  return raised * jnp.where(deep, jnp.asarray(math.exp(-RAISE), dtype), jnp.asarray(1, dtype))


def raise_switch(log_q: jax.Array) -> jax.Array:
  """1 below log q = -80 (float32; -700 in float64), else 0, in arithmetic only."""
  return jnp.minimum(jnp.floor(jnp.maximum(-log_q - _UNDERFLOW[log_q.dtype], 0)), 1)


def times_prob_switched(log_q: jax.Array, x: jax.Array) -> jax.Array:
  """e^{log q}·x for log q ≤ 0: the plain product, bit for bit, above log q = -80 (float32;
  -700 in float64), and (e^{log q + 16}·x)·e^{-16} below (:func:`softmax_from_log` is x = 1).

  Unlike :func:`times_prob` it is exact where q ≈ 1 (e^{16}·e^{-16} is not 1 in floating
  point), so that a derivative formed from it cancels exactly against one formed from q.
  """
  s = raise_switch(log_q)
  return jnp.exp(log_q + RAISE * s) * x * (s * math.exp(-RAISE) + (1 - s))


def times_prob(log_q: jax.Array, x: jax.Array) -> jax.Array:
  """e^{log q}·x for log q ≤ 0, formed as (e^{log q + 16}·x)·e^{-16}.

  The product is a normal number wherever the exact one is, also where q alone would be
  subnormal (flushed to 0 on CPU) and |x| > 1 lifts it back (e.g. q·|log q| in entropies).
  """
  return jnp.exp(log_q + RAISE) * x * math.exp(-RAISE)


def is_fast_case(x: jax.Array, axes: tuple[int, ...], mask, smoothing: float = 0.0) -> bool:
  """Whether the fast path applies: class axis last, nothing masked or smoothed, B ≥ 1."""
  return axes == (x.ndim - 1,) and x.size > 0 and mask is None and smoothing == 0


def as_rows(x: jax.Array) -> jax.Array:
  """``[..., C]`` as ``[B, C]`` (a free reshape)."""
  return x.reshape(-1, x.shape[-1])


# ---------------------------------------------------------------------- the log1p trick


# Sums of terms e^{d}·x that may each be subnormal are formed ×e^{64} and scaled back after
# the sum: terms down to e^{-87-64} (float32; e^{-708-64} in float64) are kept.
MASS_RAISE = 64.0
_E_MASS = math.exp(MASS_RAISE)


def raised_terms(d: jax.Array, x: jax.Array, by: float = MASS_RAISE) -> jax.Array:
  """e^{d}·x·e^{64} (e^{by}) for d ≤ 0, normal also where e^{d} alone is subnormal.

  e^{d + 64} below d = -80 (float32; -700 in float64), where d + 64 is exact; e^{d} times
  the constant e^{64} above, where adding 64 would round away digits of d (up to 1e-6
  relative in float32 near d = 0). Arithmetic only (the pass stays fused). Their sum times
  e^{-64} is Σ e^{d}·x to two roundings. The tangents' sums take ``by`` = :data:`RAISE`
  (a tangent up to fmax·e^{-16} does not overflow).
  """
  s = raise_switch(d)
  return jnp.exp(d + by * s) * (s + (1 - s) * math.exp(by)) * x


def _raised_mass(d: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """e^{-64}·Σ_j :func:`raised_terms` (d_j, min(ceil(-d_j), 1)): the indicator of d_j < 0
  in arithmetic only, the maximum's term exactly 0, the terms that are each subnormal kept.
  """
  # ceil(0.0 - d): the maximum's indicator is +0, not -0 (a one-class row's L = log1p(-0))
  return row_sum(raised_terms(d, jnp.minimum(jnp.ceil(0.0 - d), 1)), axes) * math.exp(-MASS_RAISE)


def plain_mass(d: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Σ_j (e_j - floor(e_j)), e = e^{d}: the non-maximal mass in one fused pass (floor is 1
  at the maximum only). Terms that are each subnormal are flushed: where it is below
  :func:`flush_bound` they may matter (z = [90, 5, 0, ..., 0] in float32), and the caller
  hands the row to the exact statistics (:func:`_raised_mass`)."""
  e = jnp.exp(d)
  return row_sum(e - jnp.floor(e), axes)


def mass_flushed(mass: jax.Array, num_terms: int) -> jax.Array:
  """Whether a :func:`plain_mass` of ``num_terms`` terms may have lost flushed terms."""
  return mass < flush_bound(num_terms, mass.dtype)


def frac_mass(d_fn: Callable, axes: tuple[int, ...], total=None) -> jax.Array:
  """Σ_{j: d_j < 0} e^{d_j}: the non-maximal mass of a row shifted by its strict maximum.

  ``d_fn()`` forms the shifted rows d; it is called inside each pass, so that d is never a
  [B, C] operand. First :func:`plain_mass`, one fused pass; where a row that uses its mass
  (``total`` < 2; every row if None) may have lost flushed terms, the mass of every row is
  recomputed in a raised exponent (:func:`_raised_mass`), which keeps them. That pass costs
  5-10x the plain one on XLA:CPU (its switch and indicator; measured at [128, 65536]), so
  it is not the default: as the default it made the fused linear loss 1.7x slower. The
  fast paths use :func:`plain_mass` and hand such rows to :func:`fix_rows` instead (no
  second branch to compile).
  """
  d = d_fn()
  plain = plain_mass(d, axes)
  low = mass_flushed(plain, math.prod(d.shape[a] for a in axes))
  if total is not None:
    low = low & (total < 2)
  return jax.lax.cond(is_any(low), lambda: _raised_mass(d_fn(), axes), lambda: plain)


def flush_bound(num_classes: int, dtype, weight: float = 1.0) -> float:
  """C·weight·tiny/eps: a row value below it may have lost more than eps relative to C
  terms that are each below weight·tiny (flushed subnormal terms of a pass)."""
  finfo = jnp.finfo(dtype)
  return num_classes * weight * float(finfo.tiny) / float(finfo.eps)


def nan_if_flush_sensitive(lse: jax.Array, num_classes: int) -> jax.Array:
  """L, or NaN where L ≤ C·tiny/eps: there the terms of Σ_j e^{d_j} that a pass without the
  raised exponent flushes (each below tiny) could move L by more than eps relative, and the
  caller's check for non-finite rows hands the row to the exact statistics.

  ``L + 0·log(L - C·tiny/eps)``: arithmetic on the row value, so the pass that uses it stays
  fused (a compare on L, a second use of it, costs 6x the pass on XLA:CPU).
  """
  return lse + 0 * jnp.log(lse - flush_bound(num_classes, lse.dtype))


def log_total(total: jax.Array, mass: jax.Array) -> jax.Array:
  """L = log(total), as log1p(mass) where total < 2 (see the module docstring)."""
  return jnp.where(total < 2, jnp.log1p(mass), jnp.log(total))


def row_batched(fn: Callable) -> Callable:
  """``fn`` of ``[B, ...]`` rows (each row on its own), batched under ``vmap`` as one call
  on all V·B rows: vmapped as is, its ``lax.cond`` would run both branches and the
  ``while_loop`` of :func:`fix_rows` every example's (a per-example loss under ``vmap`` ran
  at 5x the batched call)."""
  f = jax.custom_batching.custom_vmap(fn)

  @f.def_vmap
  def _rule(axis_size, in_batched, *args):
    args = [
      a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
      for a, batched in zip(args, in_batched, strict=True)
    ]
    rows = args[0].shape[1]
    out = f(*(a.reshape(axis_size * rows, *a.shape[2:]) for a in args))
    out = jax.tree.map(lambda o: o.reshape(axis_size, rows, *o.shape[1:]), out)
    return out, jax.tree.map(lambda _: True, out)

  return f


# -------------------------------------------------------------------- row statistics


def _general_body(z, m, axes, branch_free=False):
  """L = log Σ e^{z - m}; the log1p pass runs only when some row needs it.

  Its non-maximal mass is :func:`frac_mass` (``branch_free``: the raised mass, which keeps
  the terms that are each below the underflow threshold). Where the total is < 2 the
  maximum is unique (d = 0 there only).
  """
  total = row_sum(jnp.exp(shift(z, m, axes)), axes)
  if branch_free:
    return log_total(total, _raised_mass(shift(z, m, axes), axes))

  def mass():
    return frac_mass(lambda: shift(z, m, axes), axes, total)

  return log_total(total, jax.lax.cond(is_any(total < 2), mass, lambda: jnp.zeros_like(total)))


def general_stats(z: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(m, L): the row max (0 for an all -inf row, which gets L = 0) and L = log Σ e^{z - m}.

  A +inf logit takes all the mass of its row (ties share it): the limit of a large logit.
  """
  m = row_max(z, axes)
  return m, _general_body(z, m, axes)


def exact_stats(z_KxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`general_stats` of ``[K, C]`` rows, branch-free, as ``[K]`` arrays.

  For the few rows a fast path hands over (:func:`fix_rows`): run time does not matter
  there and a single trace halves the compile time.
  """
  m = row_max(z_KxC, (1,))
  return m[:, 0], _general_body(z_KxC, m, (1,), branch_free=True)[:, 0]


def is_any(flags: jax.Array) -> jax.Array:
  """``jnp.any(flags)`` as a float sum: see :func:`is_many`."""
  return jnp.sum(flags, dtype=jnp.float32) > 0


def is_many(flags_B: jax.Array) -> jax.Array:
  """Whether more than 1/8 of the rows are flagged: a float sum (XLA:CPU compiles an integer
  sum as a cascade of four reduce-window fusions; its rounding beyond 2^24 rows does not
  matter to a threshold that only picks the faster of two exact passes)."""
  return jnp.sum(flags_B, dtype=jnp.float32) > flags_B.size // 8


# Totals below this take the log1p of the non-maximal mass (L < log 2), as log_total does.
# log(total) has an absolute error of about eps/2 from rounding 1 + mass, plus the sum's
# own: 1.5e-7 in float32 at total = 1.089 (L = 0.085, 1.8e-6 relative), so it is accurate
# to SPEC §2 only where L is not small; the threshold was 17/16 (L < 1/16).
_NEEDS_MASS = 2.0


@row_batched
def max_stats(z_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(m, L) of ``[B, C]`` rows in fused passes: max + Σe in one, the log1p mass if needed."""
  return _max_stats(z_BxC, None)


@row_batched
def max_stats_for_labels(z_BxC: jax.Array, y_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`max_stats` for the integer-label loss L + m - z_y and its partials.

  L needs the relative precision of the log1p mass only in rows whose label is the
  maximum: in the others the loss is L + (m - z_y) ≥ log(1 + e^{z_y - m}) + (m - z_y) ≥
  log 2, and the partials q_j = e^{z_j - m - L} need L to its absolute precision only,
  which log(total) has. An untrained model's rows then skip the mass pass.
  """
  return _max_stats(z_BxC, y_B)


def _max_stats(z_BxC, y_B):
  num_classes = z_BxC.shape[1]
  (z1,) = separate(z_BxC, 1)
  m = row_max(z1, (1,))
  total = row_sum(jnp.exp(z1 - m), (1,))

  def mass():  # the max is a [B, 1] operand: no second max pass
    (z2,) = separate(z_BxC, 1)
    return plain_mass(z2 - m, (1,))

  # log(total) has an absolute error of about eps/2, so the log1p of the mass is needed
  # where L itself is small (L < log 2): from one more pass over all rows when such rows
  # are many (a confident model), else row by row.
  need = total < _NEEDS_MASS
  if y_B is not None:
    y_clipped = jnp.clip(y_B, 0, num_classes - 1)[:, None]
    need = need & (jnp.take_along_axis(z_BxC, y_clipped, axis=1) == m)
  many = is_many(need)
  small = jax.lax.cond(many, mass, lambda: jnp.zeros_like(total))
  lse = jnp.where(many & need, jnp.log1p(small), jnp.log(total))
  # Rows with a small mass (flushed terms may matter) get the exact statistics, whose
  # raised mass keeps terms down to e^-151.
  bad = ~(total < jnp.inf) | (need & (~many | mass_flushed(small, num_classes)))
  m, lse = fix_rows(bad[:, 0], exact_stats, (m[:, 0], lse[:, 0]), z_BxC, row_size=num_classes)
  return m[:, None], lse[:, None]


@row_batched
def label_stats(z_BxC: jax.Array, y_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(c, L) of ``[B, C]`` rows shifted by the label's own logit, c = z_y, in fused passes.

  S = Σ_j e^{z_j - z_y} needs no max pass. L = log S has an absolute error of about eps/2,
  which is accurate enough unless L < log 2; where S < 2 the label is the strict maximum
  and L = log1p of the non-label mass: from one
  more pass over all rows when such rows are many (a confident model), else row by row.
  Rows where S is not finite (a class 88 nats above the label in float32, ±inf or NaN
  logits) get the general statistics, c = max. Out-of-range labels are clipped here (their
  loss is made NaN by the caller).
  """
  num_classes = z_BxC.shape[1]
  y_clipped = jnp.clip(y_B, 0, num_classes - 1)[:, None]

  def label_shifted():  # recomputed inside each pass: never a [B, C] operand
    return z_BxC - jnp.take_along_axis(z_BxC, y_clipped, axis=1)

  total = row_sum(jnp.exp(label_shifted()), (1,))[:, 0]
  dominant = total < _NEEDS_MASS  # NaN compares False; see max_stats
  many = is_many(dominant)

  def mass():
    return plain_mass(label_shifted(), (1,))[:, 0]

  small = jax.lax.cond(many, mass, lambda: jnp.zeros_like(total))
  lse = jnp.where(many & dominant, jnp.log1p(small), jnp.log(total))
  c = jnp.take_along_axis(z_BxC, y_clipped, axis=1)[:, 0]
  flagged = ~(total < jnp.inf) | (dominant & (~many | mass_flushed(small, num_classes)))
  c, lse = fix_rows(flagged, exact_stats, (c, lse), z_BxC, row_size=num_classes)
  return c[:, None], lse[:, None]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def log_normalizer(stats_fn: Callable, axes: tuple[int, ...], z: jax.Array, *extra):
  """``(c, L) = stats_fn(z, *extra)``, differentiable: dc = :func:`shift_tangent` and
  dL = Σ_j softmax_j (dz_j - dc).

  ``stats_fn`` is one of :func:`general_stats` (with ``extra = ()``; bind ``axes`` in),
  :func:`max_stats`, :func:`max_stats_for_labels` or :func:`label_stats`; ``axes`` are the
  class axes of ``z``.
  """
  return stats_fn(z, *extra)


@log_normalizer.defjvp
def _log_normalizer_jvp(stats_fn, axes, primals, tangents):
  z, dz = primals[0], tangents[0]
  c, lse = log_normalizer(stats_fn, axes, *primals)
  q = jnp.exp(shift(z, c, axes) - lse)
  dc = shift_tangent(z, c, dz, axes)
  d_lse = jnp.sum(q * zero_at_shift(z, c, dz - dc, axes), axis=axes, keepdims=True)
  return (c, lse), (dc, d_lse)


def shift_tangent(z: jax.Array, c: jax.Array, dz: jax.Array, axes: tuple[int, ...]):
  """dc: the tangent of the shift c as the logit it is (the mean over ties), else 0.

  The measures depend on z - c - L only, so any dc gives the same first derivatives, with
  dL = Σ_j q_j (dz_j - dc). This one makes d(z_k - c) exactly 0 at the class c is, so the
  derivative of a dominant class's log q_k = -Σ_{j≠k} q_j (dz_j - dz_k) keeps its tail
  where dz_k - Σ_j q_j dz_j cancels: second derivatives at a class winning by 20 nats were
  0 (exact q_k (1 - q_k) = 2e-9).
  """
  at_c = z == c
  count = jnp.maximum(jnp.sum(at_c, axis=axes, keepdims=True), 1).astype(dz.dtype)
  return jnp.sum(jnp.where(at_c, dz, 0), axis=axes, keepdims=True) / count


def stats(z: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """The general (m, L) of any ``z`` and class ``axes``, differentiable."""
  return log_normalizer(functools.partial(general_stats, axes=axes), axes, z)


# --------------------------------------------------------------------- row fallback

# Rows per chunk: about this many elements (1 MiB of float32), so a chunk stays in cache.
_CHUNK_ELEMENTS = 2**18


def chunk_rows(num_rows: int, row_size: int) -> int:
  """K: how many rows of ``row_size`` elements one chunk of :func:`fix_rows` holds."""
  return max(1, min(num_rows, _CHUNK_ELEMENTS // max(row_size, 1)))


def fix_rows(flags_B: jax.Array, exact_fn: Callable, out, *rows: jax.Array, row_size: int):
  """``out`` with ``out[b] = exact_fn(*(r[b] for r in rows))`` wherever ``flags_B[b]``.

  The exact function runs on ``[K, ...]`` chunks of the flagged rows only: gathered,
  recomputed, scattered back in place (``out``, a pytree of ``[B, ...]`` arrays, is a
  ``while_loop`` carry). Each chunk's rows are the first K still flagged, found by
  ``lax.top_k`` of the flags (it compiles and runs in a fraction of the time of
  ``jnp.nonzero``'s prefix sum and scatter, or of a sort). It costs one count over the
  batch when no row is flagged. Never differentiated: the derivative rules use the
  statistics it returns.
  """
  num_rows = flags_B.shape[0]
  k = chunk_rows(num_rows, row_size)
  count = jnp.sum(flags_B, dtype=jnp.int32)

  def body(state):
    start, todo_B, out = state
    flagged_K, index_K = jax.lax.top_k(todo_B, k)
    # Unflagged rows among the K (fewer than K left) get the out-of-range index B: gathered
    # with clipping, dropped on the way back.
    index_K = jnp.where(flagged_K > 0, index_K, num_rows)
    values = exact_fn(*(jnp.take(r, index_K, axis=0, mode="clip") for r in rows))
    out = jax.tree.map(lambda o, v: o.at[index_K].set(v.astype(o.dtype), mode="drop"), out, values)
    return start + k, todo_B.at[index_K].set(0, mode="drop"), out

  todo_B = flags_B.astype(jnp.float32)
  state = (jnp.int32(0), todo_B, out)
  return jax.lax.while_loop(lambda state: state[0] < count, body, state)[2]


# ------------------------------------------------------------- measures as custom_jvp


def custom_jvp_from_partials(
  value_fn: Callable, partials_fn: Callable, *, num_static: int = 0
) -> Callable:
  """A ``custom_jvp`` function from a value and its closed-form partial derivatives.

  Args:
    value_fn: ``value_fn(*static, *args)``, the value alone (what a call without
      differentiation runs: the fastest forward).
    partials_fn: ``partials_fn(*static, *args) -> (value, partials, axes[, fast])``:
      ``partials[i]`` is ∂value/∂args[i] elementwise (shaped like ``args[i]``), or None for
      an argument without a derivative (labels, masks); ``axes`` are the axes of ``args``
      reduced in the value (``()`` for an elementwise function). The optional ``fast`` is
      ``(tangent_fn, aux)``: ``tangent_fn(*aux, *tangents)`` (None for a zero tangent)
      returns Σ_axes partials[i] · tangents[i] from the arrays ``aux`` without forming the
      partials, for a JVP applied forward (see :func:`_contract`).
    num_static: how many leading arguments are static (hashable Python values).

  Returns:
    ``f(*static, *args)``. Its JVP is Σ_axes partials[i] · tangent[i]; its VJP, the
    transpose, is cotangent · partials[i]: one elementwise pass per argument. Zero tangents
    stay symbolic, so an argument that is not differentiated costs nothing.
  """
  f = jax.custom_jvp(value_fn, nondiff_argnums=tuple(range(num_static)))

  def rule(*args):
    static, (primals, tangents) = args[:num_static], args[num_static:]
    value, partials, axes, *fast = partials_fn(*static, *primals)
    present = tuple(
      p is not None and not isinstance(dx, SymbolicZero)
      for p, dx in zip(partials, tangents, strict=True)
    )
    if not any(present):
      return value, jnp.zeros_like(value)
    live = [(p, dx) for p, dx, ok in zip(partials, tangents, present, strict=True) if ok]
    partials, dxs = zip(*live, strict=True)
    if not fast:
      return value, _plain_contract(value, partials, dxs, axes=axes)
    tangent_fn, aux = fast[0]
    tangent_fn = functools.partial(_fast_apply, tangent_fn, present)
    return value, _contract(value, partials, aux, dxs, axes=axes, fast=tangent_fn)

  f.defjvp(rule, symbolic_zeros=True)
  return f


# -------------------------------------------------- a JVP applied forward, in one pass
#
# The tangent Σ_axes partials·dx is linear in dx; JAX transposes it into the VJP. Written
# as jnp code, a forward JVP forms every partial inside its reduction pass, and a partial
# exact in the tails (1 - q of a dominant class as the sum of the others, put in place at
# the label with an indicator) costs several times the reduction itself. ``_contract_p`` is
# that linear map as a primitive: applied forward it runs a measure's own fast formula
# (e.g. Σ_j q_j (dz_j - dz_y), whose label term is exactly 0 with no indicator); every
# other use (transpose, derivatives of the map itself, vmap) is the plain contraction of
# the exact partials, as JAX would derive it. Its operands: the value (for the output's
# type), the partials, the fast formula's arrays, the tangents.


def _plain_contract(value, partials, dxs, *, axes):
  """Σ_i Σ_axes partials[i]·dxs[i], shaped like ``value``."""
  tangent = None
  for partial, dx in zip(partials, dxs, strict=True):
    term = partial * dx
    term = jnp.sum(term, axis=axes) if axes else term
    tangent = term if tangent is None else tangent + term
  return jnp.broadcast_to(tangent, value.shape).astype(value.dtype)


def _fast_apply(tangent_fn, present, aux, dxs):
  """``tangent_fn(*aux, *tangents)`` with None at the tangents that are zero."""
  dxs = iter(dxs)
  return tangent_fn(*aux, *(next(dxs) if p else None for p in present))


def raised_row_sum(raised_BxC: jax.Array) -> jax.Array:
  """Σ_j of terms formed ×e^{16} (:func:`raised_terms` with ``by=RAISE``), scaled back by
  e^{-16}: ``[B, C]`` → ``[B]``."""
  return row_sum(raised_BxC, (1,))[:, 0] * math.exp(-RAISE)


def exact_unless_finite(tangent_B, value_B, parts_fn, args, dxs):
  """A fast path's one-pass JVP ``tangent_B``, with the rows where it or the value is not
  finite (±inf logits, NaN, overflow) recomputed as the plain contraction of the exact
  partials, ``parts_fn(*rows of args)``, with ``dxs`` (None for a zero tangent).
  """
  present = [dx is not None for dx in dxs]

  def exact_rows(*rows):
    value, partials, axes, *_ = parts_fn(*rows[: len(args)])
    tangents = iter(rows[len(args) :])
    pairs = [(p, next(tangents)) for p, ok in zip(partials, present, strict=True) if ok]
    return _plain_contract(value, *zip(*pairs, strict=True), axes=axes)

  flagged = ~jnp.isfinite(tangent_B + value_B)
  live = [dx for dx in dxs if dx is not None]
  return fix_rows(flagged, exact_rows, tangent_B, *args, *live, row_size=args[0].shape[1])


def _contract(value, partials, aux, dxs, *, axes, fast):
  n, m = len(partials), len(aux)
  return _contract_p.bind(value, *partials, *aux, *dxs, axes=axes, fast=fast, n=n, m=m)


def _split(args, n, m):
  return args[0], args[1 : 1 + n], args[1 + n : 1 + n + m], args[1 + n + m :]


def _contract_impl(*args, axes, fast, n, m):
  value, _, aux, dxs = _split(args, n, m)
  return fast(aux, dxs).astype(value.dtype)


def _contract_abstract_eval(*avals, axes, fast, n, m):
  del axes, fast, n, m
  value = avals[0]  # the tangent has the value's type; inside shard_map, varying as all inputs
  varying = frozenset().union(*(a.manual_axis_type.varying for a in avals))
  return value.update(manual_axis_type=type(value.manual_axis_type)(varying=varying))


def _contract_transpose(ct, *args, axes, fast, n, m):
  del fast
  value, partials, aux, dxs = _split(args, n, m)
  residual_cts = [None] * (1 + n + m)
  if type(ct) is ad.Zero:
    return residual_cts + [ad.Zero(dx.aval) for dx in dxs]
  ct = jnp.expand_dims(ct, axes) if axes else ct
  cts = [(ct * p).astype(dx.aval.dtype) for p, dx in zip(partials, dxs, strict=True)]
  return residual_cts + cts


def _contract_jvp(primals, tangents, *, axes, fast, n, m):
  """Derivatives of the map itself: in the partials, plain; in the tangents, the map."""
  value, partials, aux, dxs = _split(primals, n, m)
  _, d_partials, _, d_dxs = _split(tangents, n, m)
  out = _contract_p.bind(*primals, axes=axes, fast=fast, n=n, m=m)
  terms = [(dp, dx) for dp, dx in zip(d_partials, dxs, strict=True) if type(dp) is not ad.Zero]
  d_out = _plain_contract(value, *zip(*terms, strict=True), axes=axes) if terms else None
  if any(type(d) is not ad.Zero for d in d_dxs):
    d_dxs = [ad.instantiate_zeros(d) for d in d_dxs]
    term = _contract_p.bind(value, *partials, *aux, *d_dxs, axes=axes, fast=fast, n=n, m=m)
    d_out = term if d_out is None else d_out + term
  return out, jnp.zeros_like(out) if d_out is None else d_out


def _contract_batch(args, dims, *, axes, fast, n, m):
  """vmap: the same primitive on the rows of every example together.

  Every operand of a fast path's contraction is a stack of independent rows ([B] values,
  [B, C] partials and tangents, [B, ...] statistics), so a batch of V examples is one
  contraction over V·B rows: the one-pass formula still applies (the plain contraction of
  the partials is several times slower, and flushes terms the raised exponent keeps).
  """
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)

  def merge(a, d):
    a = jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
    return a.reshape((a.shape[0] * a.shape[1], *a.shape[2:]))

  value_shape = list(args[0].shape)
  if dims[0] is not None:
    del value_shape[dims[0]]
  merged = [merge(a, d) for a, d in zip(args, dims, strict=True)]
  out = _contract_p.bind(*merged, axes=axes, fast=fast, n=n, m=m)
  return out.reshape((size, *value_shape)), 0


_contract_p = Primitive("xent_jax_contract")
_contract_p.def_impl(_contract_impl)
_contract_p.def_abstract_eval(_contract_abstract_eval)
mlir.register_lowering(_contract_p, mlir.lower_fun(_contract_impl, multiple_results=False))
ad.primitive_transposes[_contract_p] = _contract_transpose
ad.primitive_jvps[_contract_p] = _contract_jvp
batching.primitive_batchers[_contract_p] = _contract_batch


# ------------------------------------------- a linear map, fast in both directions
#
# A custom_jvp's tangent is a linear map of dx; JAX transposes it into the VJP. Written as
# jnp code that keeps every tail exact in forward mode (a lax.cond between plain and raised
# sums, selects at the maximum), its transpose runs at several times the cost of the plain
# VJP: [B, C] residuals cross the cond, selects split the fused reductions. ``linear_map``
# makes the map a primitive and its transpose a second one, each evaluated by its own fast
# formula; derivatives in the residual arrays come from the plain formula (and from its
# transpose, by JAX), so every higher order is exactly what autodiff of the plain formula
# gives, while first-order forward and reverse mode each run one fast formula.


def linear_map(name: str, plain: Callable, fast_transpose: Callable) -> Callable:
  """``apply(*res, x, axes=axes)``: the map x ↦ ``plain(*res, x, axes=axes)``, linear in x.

  Args:
    name: the primitive's name (its transpose is ``name + "_transpose"``).
    plain: ``plain(*res, x, axes=axes)``, jnp code linear in ``x``: the forward formula and
      the source of every derivative in ``res``.
    fast_transpose: ``fast_transpose(*res, ct, axes=axes)``, the transposed map (the VJP),
      only ever evaluated. It must equal JAX's transpose of ``plain`` to the accuracy of
      the measure.

  ``x``, the output and the cotangent share a shape and dtype; ``axes`` (static, the class
  axes) are the only axes the map mixes, so a ``vmap`` is one call with a leading axis.
  """
  forward, backward = Primitive(name), Primitive(name + "_transpose")

  def plain_transpose(*args, axes):
    *res, ct = args
    return jax.linear_transpose(lambda x: plain(*res, x, axes=axes), ct)(ct)[0]

  for prim, impl, exact, other in (
    (forward, plain, plain, backward),
    (backward, fast_transpose, plain_transpose, forward),
  ):
    prim.def_impl(impl)
    prim.def_abstract_eval(_linear_abstract_eval)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=False))
    ad.primitive_jvps[prim] = functools.partial(_linear_jvp, prim, exact)
    ad.primitive_transposes[prim] = functools.partial(_linear_transpose, other)
    batching.primitive_batchers[prim] = functools.partial(_linear_batch, prim)
  return lambda *args, axes: forward.bind(*args, axes=axes)


def _linear_abstract_eval(*avals, axes):
  del axes
  x = avals[-1]  # the output has x's type; inside shard_map, varying as all inputs
  varying = frozenset().union(*(a.manual_axis_type.varying for a in avals))
  return x.update(manual_axis_type=type(x.manual_axis_type)(varying=varying))


def _linear_jvp(prim, exact, primals, tangents, *, axes):
  """In the residuals, the derivative of the exact formula; in x, the map itself."""
  *res, x = primals
  *d_res, dx = tangents
  out = prim.bind(*primals, axes=axes)
  d_out = None
  if any(type(d) is not ad.Zero for d in d_res):
    d_res = [ad.instantiate_zeros(d) for d in d_res]
    _, d_out = jax.jvp(lambda *r: exact(*r, x, axes=axes), tuple(res), tuple(d_res))
  if type(dx) is not ad.Zero:
    term = prim.bind(*res, ad.instantiate_zeros(dx), axes=axes)
    d_out = term if d_out is None else d_out + term
  return out, jnp.zeros_like(out) if d_out is None else d_out


def _linear_transpose(other, ct, *args, axes):
  *res, x = args
  if any(ad.is_undefined_primal(r) for r in res):
    raise NotImplementedError("linear_map is linear in its last operand only")
  if type(ct) is ad.Zero:
    return [None] * len(res) + [ad.Zero(x.aval)]
  return [None] * len(res) + [other.bind(*res, ct, axes=axes)]


def _linear_batch(prim, args, dims, *, axes):
  """vmap: the batch as a leading axis of every operand (the map mixes ``axes`` only)."""
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
  args = [
    jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
    for a, d in zip(args, dims, strict=True)
  ]
  return prim.bind(*args, axes=tuple(a + 1 for a in axes)), 0
