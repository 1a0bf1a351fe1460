"""Fused linear + softmax cross-entropy: a language model's output layer and loss (SPEC §7).

The loss of ``logits = hidden @ weight + bias`` over a vocabulary of V classes, computed
token chunk by token chunk, so that the ``[N, V]`` logits and their gradient are never
materialised. Exact like the rest of xent_jax: the log-normaliser of each row takes the
log1p of its non-maximal mass, and the gradient at the label class is formed as
``expm1(-nll)``, i.e. minus the mass of the other classes, never as a rounded p_y - 1.

How the derivatives are organised (nothing here is a ``custom_vjp``, so forward mode works):

* the public computation is a ``jax.custom_jvp``. Its rule runs one fused pass over the
  token chunks that computes, besides the loss, each token's gradient w.r.t. its hidden
  row (``[N, D]``) and the token-summed gradients w.r.t. ``weight`` and ``bias`` -- the
  three matmuls of the irreducible work, with no recompute (the Liger-Kernel idea);
* the tangent of the loss is ⟨dh_t, ∂ℓ_t/∂h_t⟩ (elementwise, transposed by JAX) plus the
  ``weight``/``bias`` part, a linear map bound as the primitive :data:`_weight_tangent_p`:
  in forward mode it recomputes the logits chunk by chunk; its transpose (reverse mode)
  is ``c · Σ_t ∂ℓ_t/∂W`` from the fused pass when the cotangent c is the same for every
  token (a mean or sum of the per-token losses, also of weighted ones: ``weights`` are
  folded into the fused pass), and an exact chunked recompute otherwise.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from xent_jax import _core, _normalizer
from xent_jax._measures import Role, measure

_FN = "linear_softmax_cross_entropy"
_LOG2 = math.log(2.0)
# Default token chunk: 2^39 / V² tokens, at most 2^24 / V (64 MiB of float32 logits): 1024
# tokens at V = 16384, 512 at V = 32768, 128 (32 MiB) at V = 65536. Measured on the
# 2-core CPU (value_and_grad, time over three plain matmuls): at N×D×V = 8192×512×32768,
# 256 / 512 tokens 1.16 / 1.07×; at 32768×256×65536, 32 / 64 / 128 / 256 tokens
# 2.2 / 1.5 / 1.2 / 1.6×. The [D, V] gradient is accumulated in its output buffer: no
# temporary.
_CHUNK_NUMERATOR = 2**39
_CHUNK_ELEMENTS = 2**24
# Vocabulary block of the gradient: about this many elements per [chunk, block] piece, and
# at most twice as many per [D, block] piece (its contribution to ∂/∂W; three such pieces
# are live at a time). At 32768×256×65536, 128-token chunks: 4096-class blocks 1.13× three
# matmuls, 2048-class blocks 1.24×.
_BLOCK_ELEMENTS = 2**19


class _Options(NamedTuple):
  """The static (hashable) options of one call."""

  chunk: int  # tokens per chunk
  block: int  # vocabulary classes per block of the gradient
  num_classes: int  # V of the whole vocabulary (the sum over vocab shards)
  eps: float  # label smoothing
  z_loss: float
  softcap: float | None
  precision: lax.Precision
  axis_name: Any  # the vocab-parallel mesh axis, or None
  lse_out: bool  # whether the caller gets (and may differentiate) lse
  strided: bool  # chunks of strided tokens (the token axis is sharded in the type)


# --------------------------------------------------------------------- per-chunk math


def _matmul(a, b, opts, contract, like=None):
  """A dot with the stated precision (SPEC §9), accumulating in the inputs' float type.

  ``like``: an array whose sharding the result takes, for a contraction over the token
  axis when it is sharded in the types (explicit mesh): the sum over devices is then
  replicated like the ``[D, V]`` accumulator.
  """
  out_sharding = jax.typeof(like).sharding if opts.strided and like is not None else None
  return lax.dot_general(
    a,
    b,
    (contract, ((), ())),
    precision=opts.precision,
    preferred_element_type=a.dtype,
    out_sharding=out_sharding,
  )


def _logits(opts, h_TxD, w_DxV, b_V):
  """(u, t): u = h·W + b, and t = tanh(u/c) with ``logit_softcap=c`` (else t = u).

  The soft-capped logits are z = c·t (:func:`_capped`). Differences of logits that must
  cancel exactly (z - max z at the maximum, m - z_y for a dominant label) are formed as
  c·(t - t'), never as c·t - c·t': XLA:CPU contracts c·t - m into a fused multiply-add in
  some passes and not in others, so that c·t rounded in the row max and unrounded in the
  mass pass missed by an ulp: the maximum's own term was counted as mass (0.69 nats off
  under vmap) and a dominant label's loss came out -1.5e-6 (exact 1.1e-21).
  """
  u = _matmul(h_TxD, w_DxV, opts, ((1,), (0,)))
  if b_V is not None:
    u = u + b_V[None, :]
  return u, (u if opts.softcap is None else jnp.tanh(u / opts.softcap))


def _capped(opts, t):
  """z = c·t for values t of the tanh scale (logits, or differences of them)."""
  return t if opts.softcap is None else opts.softcap * t


def _vocab_offset(opts, v_local):
  """Index of this device's first class: 0, or its slice of a vocab-parallel V."""
  if opts.axis_name is None:
    return 0
  return lax.axis_index(opts.axis_name) * v_local


def _psum(x, opts):
  return x if opts.axis_name is None else lax.psum(x, opts.axis_name)


def _label_logit(opts, z_TxV, y_T):
  """z_y (0 on devices that do not hold the label), the label's index on this device and
  whether this device holds it (``z_TxV`` on any scale: logits, or t of :func:`_logits`)."""
  v_local = z_TxV.shape[1]
  local = y_T - _vocab_offset(opts, v_local)
  here = (local >= 0) & (local < v_local)
  z_y = jnp.take_along_axis(z_TxV, jnp.clip(local, 0, v_local - 1)[:, None], axis=1)[:, 0]
  return jnp.where(here, z_y, 0), local, here


def _stats(opts, t_TxV, y_T):
  """Row statistics of the logits z = c·t (:func:`_logits`): (m, L, m - z_y, m - mean z)
  with lse = m + L, exact in the tails (the last None without label smoothing).

  m is the row max and L = log S, S = Σ_j e^{z_j - m} = 1 + r with r the non-maximal mass.
  Where S < 2 the maximum is unique (a tie would add exactly 1) and L = log1p(r) with
  r = Σ_{j ≠ max} e_j (``_normalizer.frac_mass``: in a raised exponent, so that terms that
  are each subnormal still add up), a sum of non-negative terms that keeps the relative
  precision of a tiny L (log S would round 1 + r to 1 and a dominant label's loss to 0).
  That second pass runs only for chunks that hold such a row; each pass is one fused
  reduction (XLA:CPU materialises the exponentials, [chunk, V], when two reductions share
  them). Across vocab shards the maxima are combined with a pmax and the masses rescaled to
  it (Megatron's vocab-parallel cross-entropy); a shard whose logits are all -inf
  contributes 0.
  """
  # (maxima and differences on the scale of t: see _logits)
  m_local = jnp.max(t_TxV, axis=1)
  shift = jnp.where(m_local == -jnp.inf, 0, m_local)[:, None]  # all -inf: e = 0, not NaN
  s_local = jnp.sum(jnp.exp(_capped(opts, t_TxV - shift)), axis=1)

  def frac_mass():  # subnormal terms kept where they can add up to a normal mass
    d_fn = lambda: _capped(opts, t_TxV - shift)
    return _normalizer.frac_mass(d_fn, (1,), s_local[:, None])[:, 0]

  r_local = lax.cond(_normalizer.is_any(s_local < 2), frac_mass, lambda: jnp.zeros_like(s_local))
  if opts.axis_name is None:
    m, s, r = m_local, s_local, r_local
  else:
    m = lax.pmax(m_local, opts.axis_name)
    top = m_local == m
    d = jnp.where(top, 0, _capped(opts, m_local - jnp.where(m == -jnp.inf, 0, m)))
    s = _psum(s_local * jnp.exp(d), opts)
    # S < 2: one shard holds the unique maximum (its S_k < 2 too, so it formed r_k). The
    # others' masses S_k·e^{m_k - m} are summed in a raised exponent: e^{m_k - m} alone
    # may be subnormal (flushed to 0 on CPU) where a product, or their sum, is a normal r.
    rest = _normalizer.raised_terms(d, jnp.where(top, 0, s_local))
    r_top, rest = _psum((jnp.where(top, r_local, 0), rest), opts)
    r = r_top + rest * math.exp(-_normalizer.MASS_RAISE)
  lse_rest = jnp.where(s < 2, jnp.log1p(r), jnp.log(s))
  t_y, _, _ = _label_logit(opts, t_TxV, y_T)
  gap_y = _capped(opts, m - _psum(t_y, opts))
  gap_mean = None
  if opts.eps:
    gap_mean = _capped(opts, m - _psum(jnp.sum(t_TxV, axis=1), opts) / opts.num_classes)
  return _capped(opts, m), lse_rest, gap_y, gap_mean


def _token_loss(opts, m, lse_rest, gap_y, gap_mean):
  """(ℓ, nll, lse) per token, unit weight: every term of ℓ is ≥ 0 (nothing cancels).

  nll = -log p_y = L + (m - z_y); the smoothing term ε·(lse - mean z) = ε·(L + (m - mean z)).
  """
  nll = lse_rest + gap_y
  loss = (1 - opts.eps) * nll if opts.eps < 1 else jnp.zeros_like(nll)
  if opts.eps:
    loss = loss + opts.eps * (lse_rest + gap_mean)
  lse = m + lse_rest
  if opts.z_loss:
    loss = loss + opts.z_loss * lse**2
  return loss, nll, lse


def _grad_logits(opts, u, t, offset, y_T, lse, nll, a_T, b_T):
  """∂(Σ_t a_t ℓ_t + b_t lse_t)/∂u for a block of logits whose first class is ``offset``.

  u are the logits before the soft-cap, z = c·t after (:func:`_logits`). ∂ℓ/∂z_j =
  κ p_j - ε/V - (1-ε)[j = y] with κ = 1 + 2ζ·lse, and ∂lse/∂z_j = p_j. At the label
  p_y - 1 = expm1(-nll): minus the mass of the other classes, exact when the label
  dominates (p_y = 1 - 1e-7 gives -1e-7, not a rounded 0). ``b_T`` may be None.
  """
  p = jnp.exp(_capped(opts, t) - lse[:, None])
  kappa = 1 + 2 * opts.z_loss * lse if opts.z_loss else jnp.ones_like(lse)
  eps_k = opts.eps / opts.num_classes
  dominant = nll < _LOG2
  safe_nll = jnp.where(dominant, nll, 0)  # double where: no expm1 of a NaN or inf nll
  at_label = jnp.where(
    dominant,
    kappa * _core.expm1(-safe_nll) + (kappa - 1) + (opts.eps - eps_k),
    kappa * jnp.exp(-nll) - (1 - opts.eps + eps_k),
  )
  g = (a_T * kappa)[:, None] * p
  if opts.eps:
    g = g - (a_T * eps_k)[:, None]
  label_g = a_T * at_label
  if b_T is not None:
    g = g + b_T[:, None] * p
    label_g = label_g + b_T * jnp.exp(-nll)
  is_label = lax.broadcasted_iota(y_T.dtype, t.shape, 1) == (y_T - offset)[:, None]
  g = jnp.where(is_label, label_g[:, None], g)
  if opts.softcap is not None:
    # d/du c·tanh(u/c) = 1/cosh²(u/c): no 1 - tanh² that cancels for large |u|.
    g = g / jnp.cosh(u / opts.softcap) ** 2
  return g


def _tied(w, t):
  """(W, t) behind an optimisation barrier: W tied to this chunk's logits t (:func:`_logits`).

  Otherwise XLA hoists the gradient's ``[D, block]`` slices of W out of the token loop,
  and a blocked copy of W (``[D, V]``) stays live through the whole pass.
  """
  return lax.optimization_barrier((w, t))


def _chunks(x, opts):
  """``[N, ...]`` as ``[N / chunk, chunk, ...]``, the scanned axis first.

  Chunk c holds tokens c·chunk ... (c+1)·chunk - 1; with ``opts.strided`` (the token axis
  is sharded in the array's type, under an explicit mesh) it holds the tokens
  c, c + N/chunk, c + 2N/chunk, ... so that every device keeps its own tokens and the
  scanned axis is not the sharded one.
  """
  if opts.strided:
    return x.reshape(opts.chunk, x.shape[0] // opts.chunk, *x.shape[1:]).swapaxes(0, 1)
  return x.reshape(x.shape[0] // opts.chunk, opts.chunk, *x.shape[1:])


def _unchunk(x, opts):
  """The inverse of :func:`_chunks`: ``[N / chunk, chunk, ...]`` back to ``[N, ...]``."""
  if opts.strided:
    x = x.swapaxes(0, 1)
  return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])  # (not -1: D = 0 is ambiguous)


def _vocab_blocks(opts, num_local, fn, carry):
  """``carry = fn(start, size, carry)`` over blocks of the local vocabulary.

  The gradient of a token chunk is formed block by block, so that besides the chunk's
  logits only ``[chunk, block]`` and ``[D, block]`` pieces are live: the ``[D, V]``
  accumulator is updated in place, slice by slice. Full blocks run in a ``fori_loop``; a
  last, shorter block (V not a multiple of the block) after it.
  """
  size = min(opts.block, num_local)
  full, tail = divmod(num_local, size)
  if full == 1:
    carry = fn(0, size, carry)
  elif full > 1:
    carry = lax.fori_loop(0, full, lambda j, c: fn(j * size, size, c), carry)
  if tail:
    carry = fn(full * size, tail, carry)
  return carry


def _chunk_grads(opts, h_c, u, t, w, b, y_c, lse, nll, a, bcoef, carry, need_h):
  """Adds one token chunk's Σ_t ∂/∂W and Σ_t ∂/∂b to ``carry = (gw, gb)``; returns
  (gw, gb, gh) with gh the chunk's per-token ∂/∂h (None unless ``need_h``)."""
  offset = _vocab_offset(opts, w.shape[1])

  def block(start, size, carry):
    gw, gb, gh = carry
    cols = lambda x: lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)
    g = _grad_logits(opts, cols(u), cols(t), offset + start, y_c, lse, nll, a, bcoef)
    gw_block = cols(gw)
    gw_block = gw_block + _matmul(h_c, g, opts, ((0,), (0,)), like=gw_block)
    gw = lax.dynamic_update_slice_in_dim(gw, gw_block, start, axis=1)
    if gb is not None:
      gb = lax.dynamic_update_slice_in_dim(gb, cols(gb) + jnp.sum(g, axis=0), start, axis=0)
    if gh is not None:
      gh = gh + _matmul(g, cols(w), opts, ((1,), (1,)))
    return gw, gb, gh

  # Inside shard_map the sums over a vocab block vary over the vocab axis too, like the
  # chunk's logits u: a loop carry must have that type from the start.
  gh = _vary_like(jnp.zeros_like(h_c), u) if need_h else None
  gw, gb, gh = _vocab_blocks(opts, w.shape[1], block, (*carry, gh))
  return gw, gb, None if gh is None else _psum(gh, opts)


# ----------------------------------------------------------------------- fused passes


def _token_values(opts, loss, lse, y, active):
  """Masks the per-token outputs: NaN for an out-of-range label, 0 for excluded tokens."""
  in_range = (y >= 0) & (y < opts.num_classes)
  loss = jnp.where(active, jnp.where(in_range, loss, jnp.nan), 0)
  return loss, jnp.where(active, lse, 0)


def _forward(opts, h, w, b, y, a=None):
  """One pass over the token chunks: (ℓ, nll, lse) per token and, given token weights a,
  the per-token ∂(a_t ℓ_t)/∂h_t and the sums Σ_t a_t ∂ℓ_t/∂W and Σ_t a_t ∂ℓ_t/∂b."""
  with_grads = a is not None

  def body(carry, xs):
    h_c, y_c, a_c = xs
    u, t = _logits(opts, h_c, w, b)
    loss, nll, lse = _token_loss(opts, *_stats(opts, t, y_c))
    if not with_grads:
      return carry, (loss, nll, lse, None)
    w_c, t = _tied(w, t)
    gw, gb, gh = _chunk_grads(opts, h_c, u, t, w_c, b, y_c, lse, nll, a_c, None, carry, True)
    return (gw, gb), (loss, nll, lse, gh)

  init = (None, None)
  if with_grads:
    init = (jnp.zeros_like(w), None if b is None else jnp.zeros_like(b))
  a_chunks = None if a is None else _chunks(a, opts)
  xs = (_chunks(h, opts), _chunks(y, opts), a_chunks)
  (gw, gb), (loss, nll, lse, gh) = lax.scan(jax.checkpoint(body), init, xs)
  loss, nll, lse = _unchunk(loss, opts), _unchunk(nll, opts), _unchunk(lse, opts)
  if not with_grads:
    return loss, nll, lse
  return loss, nll, lse, _unchunk(gh, opts), gw, gb


def _chunked_grads(opts, h, w, b, y, lse, nll, a, bcoef, need_h, init=None):
  """(∂/∂h rows, ∂/∂W, ∂/∂b) of Σ_t a_t ℓ_t + b_t lse_t, recomputing the logits chunk-wise."""

  def body(carry, xs):
    h_c, y_c, lse_c, nll_c, a_c, b_c = xs
    u, t = _logits(opts, h_c, w, b)
    w_c, t = _tied(w, t)
    gw, gb, gh = _chunk_grads(opts, h_c, u, t, w_c, b, y_c, lse_c, nll_c, a_c, b_c, carry, need_h)
    return (gw, gb), gh

  b_chunks = None if bcoef is None else _chunks(bcoef, opts)
  xs = tuple(_chunks(x, opts) for x in (h, y, lse, nll, a)) + (b_chunks,)
  if init is None:
    init = (jnp.zeros_like(w), None if b is None else jnp.zeros_like(b))
  (gw, gb), gh = lax.scan(jax.checkpoint(body), init, xs)
  return (None if gh is None else _unchunk(gh, opts)), gw, gb


# The weight/bias part of the tangent, dℓ_t = Σ_j ∂(a_t ℓ_t)/∂u_tj · (h_t·dW_j + db_j), as a
# primitive: JAX cannot transpose a custom_vjp, and a plain chunked scan would be transposed
# into a recompute every time. Its arguments: the residuals (h, w, [b], y, lse, nll, a,
# active, gw, [gb]), then the tangents (dw, [db], [dh]); dh (with ``opts.lse_out``) feeds
# the tangent of lse, dlse_t = Σ_j p_tj s'_tj (dh_t·W_j + h_t·dW_j + db_j).


def _unpack(args, has_b, lse_out):
  """(h, w, b, y, lse, nll, a, active, gw, gb, dw, db, dh) from the primitive's arguments."""
  args = list(args)
  take = lambda present=True: args.pop(0) if present else None
  h, w, b = take(), take(), take(has_b)
  y, lse, nll, a, active, gw = (take() for _ in range(6))
  gb, dw, db, dh = take(has_b), take(), take(has_b), take(lse_out)
  return h, w, b, y, lse, nll, a, active, gw, gb, dw, db, dh


def _tangent_impl(*args, opts, has_b):
  """The forward application of the linear map: recomputes the logits chunk by chunk."""
  h, w, b, y, lse, nll, a, active, _, _, dw, db, dh = _unpack(args, has_b, opts.lse_out)
  offset = _vocab_offset(opts, w.shape[1])

  def body(_, xs):
    h_c, y_c, lse_c, nll_c, a_c, dh_c = xs
    u, t = _logits(opts, h_c, w, b)

    def block(start, size, acc):
      cols = lambda x: lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)
      du = _matmul(h_c, cols(dw), opts, ((1,), (0,)))
      if db is not None:
        du = du + cols(db)[None, :]
      g = _grad_logits(opts, cols(u), cols(t), offset + start, y_c, lse_c, nll_c, a_c, None)
      acc = (acc[0] + jnp.sum(g * du, axis=1), acc[1])
      if dh_c is None:
        return acc
      du = du + _matmul(dh_c, cols(w), opts, ((1,), (0,)))
      zeros, ones = jnp.zeros_like(a_c), jnp.ones_like(a_c)
      p = _grad_logits(opts, cols(u), cols(t), offset + start, y_c, lse_c, nll_c, zeros, ones)
      return acc[0], acc[1] + jnp.sum(p * du, axis=1)

    zero = _vary_like(jnp.zeros_like(lse_c), u)  # varying like the block sums (shard_map)
    acc = (zero, None if dh_c is None else zero)
    d_loss, d_lse = _vocab_blocks(opts, w.shape[1], block, acc)
    return None, (_psum(d_loss, opts), None if d_lse is None else _psum(d_lse, opts))

  dh_chunks = None if dh is None else _chunks(dh, opts)
  xs = tuple(_chunks(x, opts) for x in (h, y, lse, nll, a)) + (dh_chunks,)
  _, (d_loss, d_lse) = lax.scan(jax.checkpoint(body), None, xs)
  if dh is None:
    return [_unchunk(d_loss, opts)]
  return [_unchunk(d_loss, opts), jnp.where(active, _unchunk(d_lse, opts), 0)]


_weight_tangent_p = Primitive("linear_softmax_cross_entropy_tangent")
_weight_tangent_p.multiple_results = True
_weight_tangent_p.def_impl(_tangent_impl)
mlir.register_lowering(_weight_tangent_p, mlir.lower_fun(_tangent_impl, multiple_results=True))


@_weight_tangent_p.def_abstract_eval
def _tangent_abstract_eval(*avals, opts, has_b):
  # Inside shard_map: varying over the inputs' mesh axes, except the vocab axis the
  # tangent is summed over.
  lse = avals[4 if has_b else 3]  # a [N] residual: shape, dtype and token sharding
  varying = frozenset().union(*(_varying(a) for a in avals)) - {opts.axis_name}
  out = lse.update(manual_axis_type=type(lse.manual_axis_type)(varying=varying))
  return [out, out] if opts.lse_out else [out]


def _varying(aval) -> frozenset:
  """The mesh axes a value varies over inside shard_map (empty outside)."""
  return aval.manual_axis_type.varying


def _recompute_sums(opts, operands, sums):
  """(∂/∂W, ∂/∂b) of Σ_t a_t ℓ_t, recomputing the logits; ``sums`` give the shapes."""
  h, w, b, y, lse, nll, a = operands
  init = jax.tree.map(jnp.zeros_like, sums)
  return _chunked_grads(opts, h, w, b, y, lse, nll, a, None, False, init)[1:]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _recompute_unless(skip, opts, operands, sums):
  """``sums`` if ``skip`` (a traced bool), else :func:`_recompute_sums`.

  A loop of zero or one trips: its carry can be the output buffer itself, where a
  conditional's result cannot (a second [D, V] buffer). Differentiated as a conditional,
  which reverse mode can transpose (a while loop it cannot: grad of grad).
  """

  def once(state):
    done, sums = state
    return jnp.ones_like(done), _recompute_sums(opts, operands, sums)  # varying like done

  return lax.while_loop(lambda state: ~state[0], once, (skip, sums))[1]


@_recompute_unless.defjvp
def _recompute_unless_jvp(opts, primals, tangents):
  skip, operands, sums = primals
  _, d_operands, d_sums = tangents

  def recompute(operands, d_operands, sums, _):
    fn = lambda operands: _recompute_sums(opts, operands, sums)
    return jax.jvp(fn, (operands,), (d_operands,))

  keep = lambda operands, d_operands, sums, d_sums: (sums, d_sums)
  return lax.cond(skip, keep, recompute, operands, d_operands, sums, d_sums)


@jax.custom_batching.custom_vmap
def _for_every_example(flag):
  """``flag``, a bool scalar; under vmap, whether it holds for every example (unbatched).

  The conditional of :func:`_recompute_unless` then keeps an unbatched predicate: a
  batched one turns it into a select of both branches whose operands JAX wraps in
  stop_gradient, which reverse mode cannot transpose (jacrev of jacrev raised).
  """
  return flag


@_for_every_example.def_vmap
def _for_every_example_vmap(axis_size, in_batched, flag):
  del axis_size
  return (jnp.all(flag) if in_batched[0] else flag), False


def _tangent_transpose(cts, *args, opts, has_b):
  """Reverse mode: the cotangents of (dW, [db], [dh]) from those of (dℓ, [dlse]).

  With no lse cotangent and one cotangent c shared by every token that counts (a_t ≠ 0:
  the caller took a mean or a sum, also of weighted losses), it is c times the sums the
  fused forward pass already formed: no recompute. Otherwise the logits are recomputed
  chunk by chunk; exact either way.
  """
  h, w, b, y, lse, nll, a, active, gw, gb, _, _, _ = _unpack(args, has_b, opts.lse_out)
  ct_loss = jnp.zeros_like(lse) if type(cts[0]) is ad.Zero else cts[0]
  ct_lse = cts[1] if opts.lse_out and type(cts[1]) is not ad.Zero else None
  if ct_lse is None:
    counts = a != 0
    hi = jnp.max(jnp.where(counts, ct_loss, -jnp.inf))
    lo = jnp.min(jnp.where(counts, ct_loss, jnp.inf))

    c = jnp.where(jnp.any(counts), hi, 0)
    uniform = _for_every_example(lax.stop_gradient((hi == lo) | ~jnp.any(counts)))
    sums = jax.tree.map(lambda x: c * x, (gw, gb))  # scaled in place
    operands = (h, w, b, y, lse, nll, ct_loss * a)
    ct_w, ct_b = _recompute_unless(uniform, opts, operands, sums)
    ct_h = None if not opts.lse_out else jnp.zeros_like(h)
  else:
    ct_lse = jnp.where(active, ct_lse, 0)
    ct_h = _chunked_grads(opts, h, w, b, y, lse, nll, jnp.zeros_like(a), ct_lse, True)[0]
    _, ct_w, ct_b = _chunked_grads(opts, h, w, b, y, lse, nll, ct_loss * a, ct_lse, False)
  residual_cts = [None] * (10 if has_b else 8)
  return residual_cts + [ct_w] + ([ct_b] if has_b else []) + ([ct_h] if opts.lse_out else [])


ad.primitive_transposes[_weight_tangent_p] = _tangent_transpose


def _tangent_jvp(primals, tangents, *, opts, has_b):
  """Derivatives of the tangent map itself (forward or reverse over forward mode): through
  the plain map."""
  tangents = tuple(ad.instantiate_zeros(t) for t in tangents)  # a tuple like the primals
  fn = functools.partial(_tangent_impl, opts=opts, has_b=has_b)
  return jax.jvp(lambda *args: fn(*args), tuple(primals), tangents)


ad.primitive_jvps[_weight_tangent_p] = _tangent_jvp


def _tangent_batch(args, dims, *, opts, has_b):
  """vmap: the plain map, vmapped (its transpose is then derived by JAX)."""
  fn = functools.partial(_tangent_impl, opts=opts, has_b=has_b)
  out = jax.vmap(lambda *a: fn(*a), in_axes=dims)(*args)
  return out, [0] * len(out)


batching.primitive_batchers[_weight_tangent_p] = _tangent_batch


# -------------------------------------------------------------------- custom_jvp core


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fused(opts, h, w, b, scale, y, active):
  """(scale·ℓ, lse) per token, ℓ masked; the value alone costs one matmul per chunk."""
  loss, _, lse = _forward(opts, h, w, b, y)
  loss, lse = _token_values(opts, loss, lse, y, active)
  return scale * loss, lse


def _is_zero(t):
  return isinstance(t, SymbolicZero)


def _fused_jvp(opts, primals, tangents):
  h, w, b, scale, y, active = primals
  dh, dw, db, dscale, _, _ = tangents
  has_b = b is not None
  # a_t: the weight of token t in ∂/∂W (0 for excluded tokens and out-of-range labels).
  in_range = (y >= 0) & (y < opts.num_classes)
  a = jnp.where(active & in_range, scale, 0)
  # Under checkpoint (and its scan body too): a derivative of this rule (grad of grad, grad
  # of jvp) recomputes the pass chunk by chunk instead of keeping every chunk's [chunk, V]
  # logits. Measured at N, D, V = 16384, 32, 8192 (2048-token chunks): grad of grad held
  # 7850 MiB of temporaries (15x the [N, V] logits), now 551 MiB, and 559 MiB at twice N.
  # A first derivative evaluates the pass once, as before.
  loss, nll, lse, gh, gw, gb = jax.checkpoint(functools.partial(_forward, opts))(h, w, b, y, a)
  loss, lse_val = _token_values(opts, loss, lse, y, active)
  d_loss = jnp.zeros_like(loss)
  if not _is_zero(dh):
    d_loss = d_loss + jnp.sum(gh * dh, axis=1)  # ∂(a_t ℓ_t)/∂h_t: exact for any cotangent
  if not _is_zero(dscale):
    d_loss = d_loss + dscale * loss
  d_lse = jnp.zeros_like(lse)
  need_w = not (_is_zero(dw) and (not has_b or _is_zero(db)))
  if need_w or (opts.lse_out and not _is_zero(dh)):
    residuals = [h, w] + ([b] if has_b else []) + [y, lse, nll, a, active, gw]
    residuals += [gb] if has_b else []
    tangents = [dw] + ([db] if has_b else []) + ([dh] if opts.lse_out else [])
    tangents = [jnp.zeros(t.shape, t.dtype) if _is_zero(t) else t for t in tangents]
    out = _weight_tangent_p.bind(*residuals, *tangents, opts=opts, has_b=has_b)
    d_loss = d_loss + out[0]
    if opts.lse_out:
      d_lse = out[1]
  return (scale * loss, lse_val), (d_loss, d_lse)


_fused.defjvp(_fused_jvp, symbolic_zeros=True)


# ------------------------------------------------------------------------- public API


def _num_classes(arguments) -> int:
  """V of the whole vocabulary, for ``checked``: weight's classes times the vocab shards."""
  num_local = jnp.shape(arguments["weight"])[1]
  axis_name = arguments["vocab_axis_name"]
  return num_local if axis_name is None else num_local * lax.axis_size(axis_name)


# Under `checked`: labels in [0, V) and finite hidden rows and token weights ≥ 0, for the
# tokens included; finite weight and bias. The class axis is implicit: nothing [N, V].
@measure(
  hidden=Role.FEATURES,
  weight=Role.PARAMETER,
  labels=Role.LABELS,
  bias=Role.PARAMETER,
  weights=Role.WEIGHTS,
  allow_padding=True,
  num_classes=_num_classes,
)
def linear_softmax_cross_entropy(
  hidden: ArrayLike,
  weight: ArrayLike,
  labels: ArrayLike,
  *,
  bias: ArrayLike | None = None,
  where: ArrayLike | None = None,
  weights: ArrayLike | None = None,
  ignore_index: int | None = None,
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
  logit_softcap: float | None = None,
  chunk_size: int | None = None,
  vocab_chunk_size: int | None = None,
  return_lse: bool = False,
  base: float | None = None,
  precision: _core.PrecisionLike = None,
  vocab_axis_name: Any = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  r"""Softmax cross-entropy of the logits ``hidden @ weight + bias``, never materialised.

  The output layer and loss of a language model in one function (SPEC §7): for each token
  t with hidden state h_t and label y_t,

  .. math::
    z_t = s(h_t W + b), \qquad
    \ell_t = w_t \big[ H(y_\varepsilon, \mathrm{softmax}(z_t))
      + \zeta \, \mathrm{lse}(z_t)^2 \big],

  with s(u) = c·tanh(u/c) for ``logit_softcap=c`` (else the identity), y_ε the label
  smoothed to (1-ε)·onehot(y) + ε/V, ζ = ``z_loss`` and w_t the token's ``weights``. As
  :func:`xent_jax.softmax_cross_entropy_with_integer_labels` of the materialised logits,
  to float precision also in the tails: lse = m + log1p(r) with r the non-maximal mass,
  so a label with p_y = 1 - 1e-7 gets its loss 1e-7 (not 0) and its gradient
  p_y - 1 = -(Σ_{j≠y} p_j) = -1e-7.

  Memory: the tokens are processed ``chunk_size`` at a time, so the temporaries are one
  ``[chunk_size, V]`` block of logits, smaller pieces of its gradient and the ``[N, D]``
  per-token gradients, never ``[N, V]``; ∂/∂W is accumulated in its output buffer.

  Time: under ``jax.grad`` the gradients w.r.t. ``hidden``, ``weight`` and ``bias`` are
  formed in the same pass as the loss (three matmuls in all, no recompute) whenever every
  token's loss gets the same cotangent -- a ``.mean()`` or ``.sum()`` of the returned
  losses, weighted through ``weights`` or not. Any other cotangent (the caller
  weighting the losses after the call) recomputes the logits once more for ∂/∂W, exactly.
  Forward mode (``jax.jvp``, ``jax.linearize``, Hessian-vector products) is supported.

  Vocab-parallel: inside a ``jax.shard_map`` in which ``weight`` (and ``bias``) hold this
  device's slice of the vocabulary, in order along the mesh axis ``vocab_axis_name``, the
  row max, the non-maximal mass, the label logit and Σz are combined over that axis with
  ``pmax``/``psum`` (Megatron's vocab-parallel cross-entropy); ``labels`` are global class
  indices. Every device then holds the whole per-token loss.

  Args:
    hidden: ``[..., D]`` hidden states (float; bfloat16/float16 are computed in float32).
    weight: ``[D, V]`` output projection (a tied embedding ``[V, D]`` is passed as
      ``emb.T``).
    labels: integer ``[...]`` (``hidden.shape[:-1]``); a label outside ``[0, V)`` gives a
      NaN loss unless the token is excluded, and no gradient (a ``jnp.where`` applied to
      the loss afterwards masks it).
    bias: optional ``[V]``.
    where: optional boolean ``[...]``; False excludes the token (padding, prompt): its loss
      and every gradient from it are exactly 0, whatever its hidden row holds.
    weights: optional float ``[...]``, each token's loss is multiplied by it.
    ignore_index: optional int; tokens whose label equals it are excluded (as torch).
    label_smoothing: ε in [0, 1].
    z_loss: ζ ≥ 0, the coefficient of lse² (PaLM's auxiliary loss).
    logit_softcap: c > 0 for Gemma 2's soft-capping s(u) = c·tanh(u/c), or None.
    chunk_size: tokens per chunk; None picks 2^39 / V², at most 2^24 / V and at least 8
      (1024 at V = 16384, 512 at V = 32768, 128 at V = 65536). Where the tokens are split
      over k devices in the arrays' types (a mesh with explicit axes; any batch axes of
      ``hidden``, e.g. the positions of [B, T, D]), it is rounded up to a multiple of k,
      and each device runs 1/k of every chunk on its own tokens. Any number of tokens: a
      last, partial chunk is padded.
    vocab_chunk_size: classes per block of the gradient pass; None picks about
      2^19 / ``chunk_size``, at most 2^20 / D, at least 128.
    return_lse: also return lse = log Σ_j e^{z_j} per token (in nats; 0 where excluded).
    base: logarithm base of the loss; None for nats.
    precision: of every matmul (forward and gradients), a ``jax.lax.Precision`` or its
      name; None means ``HIGHEST`` (true float32 on accelerators, SPEC §9).
    vocab_axis_name: the mesh axis over which ``weight`` is split on V (inside
      ``shard_map``), or None. With None, a ``weight`` (and ``bias``) split on V in its type
      (a mesh with explicit axes) is gathered whole on every device first.

  Returns:
    The loss per token, shape ``labels.shape``, float32 (float64 for float64 inputs); with
    ``return_lse`` the pair (loss, lse).

  >>> import jax, jax.numpy as jnp
  >>> h = jnp.ones((4, 8)) / 8
  >>> w = jnp.zeros((8, 16))
  >>> loss = linear_softmax_cross_entropy(h, w, jnp.array([0, 1, 2, 3]))
  >>> [round(float(x), 4) for x in loss]  # uniform over 16 classes: log 16
  [2.7726, 2.7726, 2.7726, 2.7726]
  """
  fn = _FN
  h = _core.as_float(hidden, "hidden", fn)
  w = _core.as_float(weight, "weight", fn)
  if h.ndim < 1:
    raise ValueError(f"{fn}: `hidden` must have shape [..., D], got a scalar.")
  if w.ndim != 2:
    raise ValueError(f"{fn}: `weight` must have shape [D, V], got {w.shape}.")
  if h.shape[-1] != w.shape[0]:
    raise ValueError(
      f"{fn}: `hidden` [..., D] and `weight` [D, V] disagree on D: hidden {h.shape}, "
      f"weight {w.shape} (a tied embedding [V, D] is passed as emb.T)."
    )
  num_local = w.shape[1]
  if num_local == 0:
    raise ValueError(f"{fn}: `weight` of shape {w.shape} has no classes (V = 0).")
  arrays = {"hidden": h, "weight": w}
  if bias is not None:
    arrays["bias"] = _core.as_float(bias, "bias", fn)
    if arrays["bias"].shape != (num_local,):
      raise ValueError(
        f"{fn}: `bias` must have shape [V] = ({num_local},), got {arrays['bias'].shape}."
      )
  promoted = _core.promote(fn, **arrays)
  h, w = promoted[:2]
  b = promoted[2] if bias is not None else None
  if vocab_axis_name is None:  # (vocab parallelism outside shard_map: gathered, see below)
    w, b = _vocab_replicated(w, 1), None if b is None else _vocab_replicated(b, 0)
  dtype = h.dtype
  labels = _core.as_labels(labels, "labels", fn)
  batch_shape = h.shape[:-1]
  if labels.shape != batch_shape:
    raise ValueError(
      f"{fn}: `labels` must have shape hidden.shape[:-1] = {batch_shape}, got {labels.shape}."
    )
  mask = _core.as_mask(where, batch_shape, fn)
  if weights is not None:
    weights = _core.as_float(weights, "weights", fn).astype(dtype)
    try:
      weights = jnp.broadcast_to(weights, batch_shape)
    except ValueError:
      raise ValueError(
        f"{fn}: `weights` of shape {weights.shape} does not broadcast to the token shape "
        f"{batch_shape}."
      ) from None
  if ignore_index is not None:
    ignore_index = _check_int(ignore_index, "ignore_index")
  eps = _core.check_smoothing(label_smoothing, fn)
  zeta = _check_number(z_loss, "z_loss", lambda x: x >= 0, "≥ 0")
  cap = None
  if logit_softcap is not None:
    cap = _check_number(logit_softcap, "logit_softcap", lambda x: x > 0, "> 0")
  scale = _core.log_scale(base, fn)

  num_tokens = math.prod(batch_shape)
  num_classes = num_local
  if vocab_axis_name is not None:
    num_classes = num_local * lax.axis_size(vocab_axis_name)
  if chunk_size is None:
    chunk = max(8, min(_CHUNK_NUMERATOR // num_classes**2, _CHUNK_ELEMENTS // num_classes))
  else:
    chunk = _check_int(chunk_size, "chunk_size")
    if chunk < 1:
      raise ValueError(f"{fn}: `chunk_size` must be a positive int, got {chunk_size}.")
  chunk = max(1, min(chunk, num_tokens))
  if vocab_chunk_size is None:
    block = max(128, min(_BLOCK_ELEMENTS // chunk, 2 * _BLOCK_ELEMENTS // max(1, h.shape[-1])))
  else:
    block = _check_int(vocab_chunk_size, "vocab_chunk_size")
    if block < 1:
      raise ValueError(f"{fn}: `vocab_chunk_size` must be a positive int, got {block}.")
  opts = _Options(
    chunk=chunk,
    block=block,
    num_classes=num_classes,
    eps=eps,
    z_loss=zeta,
    softcap=cap,
    precision=_core.check_precision(precision, fn),
    axis_name=vocab_axis_name,
    lse_out=bool(return_lse),
    strided=False,
  )
  if num_tokens == 0:
    loss = jnp.zeros(batch_shape, dtype)
    return (loss, loss) if return_lse else loss

  # Explicit mesh: the batch axes split in the types go first (sequence parallel:
  # [B, T@axis] as [T@axis, B]), so that the flattened token axis is split in contiguous
  # pieces, one per device, and no data moves.
  order = _sharded_axes_first(h)
  if order is not None:
    h, labels = h.transpose(*order, h.ndim - 1), labels.transpose(order)
    mask = None if mask is None else mask.transpose(order)
    weights = None if weights is None else weights.transpose(order)
  token_shape = labels.shape
  h = h.reshape(num_tokens, h.shape[-1])
  y = labels.reshape(num_tokens)
  active = jnp.ones((num_tokens,), bool)
  if mask is not None:
    active = mask.reshape(num_tokens)
  if ignore_index is not None:
    active = active & (y != ignore_index)
  # Double where: an excluded token's row is replaced before any arithmetic, so that NaN
  # or inf there reaches neither the value nor any derivative.
  h = jnp.where(active[:, None], h, 0)
  if h.shape[1] == 1:
    # D = 1: XLA:CPU rewrites a contraction over one element into multiplies fused into
    # the passes that read the logits, and the compiled loss came out inexact (a dominant
    # label's loss 8.7e-4 relative and gradients up to 50% off, measured; the same
    # computation run op by op was exact). A zero second feature keeps it a contraction.
    h, w = jnp.pad(h, ((0, 0), (0, 1))), jnp.pad(w, ((0, 1), (0, 0)))
  token_scale = jnp.ones((num_tokens,), dtype) if weights is None else weights.reshape(-1)
  token_scale = jnp.where(active, token_scale, 0)
  # Tokens split over `shards` devices in the types (explicit mesh): each device runs
  # chunk / shards of its own tokens per step (strided chunks), and its piece of the token
  # axis is padded on its own (no data moves between devices).
  strided, shards = _token_sharding(h)
  chunk = -(-chunk // shards) * shards
  pad = -(num_tokens // shards) % (chunk // shards)
  if pad:  # a last, partial chunk: padded with excluded tokens
    h, y, active, token_scale = (_pad_tokens(x, pad, shards) for x in (h, y, active, token_scale))
  # Inside shard_map, weight and bias vary over the token axes too (their cotangents are
  # then summed over those axes by the transpose of the cast; hidden is not cast to the
  # vocab axis, whose gradient is complete on every device after the psum).
  w, b = _vary_like(w, h), None if b is None else _vary_like(b, h)
  opts = opts._replace(chunk=chunk, strided=strided)
  loss, lse = _fused(opts, h, w, b, token_scale, y, active)

  def per_token(x):  # [N + padding] back to the batch shape
    x = (_unpad_tokens(x, num_tokens, shards) if pad else x).reshape(token_shape)
    return x if order is None else x.transpose([order.index(i) for i in range(len(order))])

  loss = _core.in_base(per_token(loss), scale)
  if return_lse:
    return loss, per_token(lse)
  return loss


def _vocab_replicated(x, axis: int):
  """``x`` with its vocabulary ``axis`` whole on every device, if its type (a mesh with
  explicit axes) splits it: outside shard_map the chunked passes read whole rows of logits
  (XLA's gather of the label logit raised a sharding error). Vocabulary parallelism
  without that all-gather is :func:`linear_softmax_cross_entropy` inside ``shard_map``
  with ``vocab_axis_name``."""
  sharding = jax.typeof(x).sharding
  spec = tuple(getattr(sharding, "spec", ()))
  if axis >= len(spec) or spec[axis] is None:
    return x
  spec = P(*(None if i == axis else a for i, a in enumerate(spec)))
  return jax.sharding.reshard(x, NamedSharding(sharding.mesh, spec))


def _sharded_axes_first(x) -> tuple[int, ...] | None:
  """The batch axes of ``x`` ``[..., D]``, those split in its type first; None if they are."""
  spec = tuple(getattr(jax.typeof(x).sharding, "spec", ()))
  spec += (None,) * (x.ndim - len(spec))
  order = sorted(range(x.ndim - 1), key=lambda axis: spec[axis] is None)  # stable
  return None if order == sorted(order) else tuple(order)


def _token_sharding(x) -> tuple[bool, int]:
  """Whether the token (first) axis of ``x`` is sharded in its type, and in how many pieces.

  (False, 1) unless ``x`` lives on a mesh with explicit axes and its first axis is split.
  """
  sharding = jax.typeof(x).sharding
  spec = getattr(sharding, "spec", ())
  if not spec or spec[0] is None:
    return False, 1
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  return True, math.prod(sharding.mesh.shape[axis] for axis in axes)


def _pad_tokens(x, pad, shards):
  """``[N, ...]`` with ``pad`` zeros after each of its ``shards`` equal pieces of tokens."""
  widths = ((0, pad),) + ((0, 0),) * (x.ndim - 1)
  if shards == 1:
    return jnp.pad(x, widths)
  x = x.reshape(shards, -1, *x.shape[1:])  # one row per device: padded where it lives
  return jnp.pad(x, ((0, 0), *widths)).reshape(-1, *x.shape[2:])


def _unpad_tokens(x, num_tokens, shards):
  """The inverse of :func:`_pad_tokens`: the first ``num_tokens`` tokens of ``x``."""
  if shards == 1:
    return x[:num_tokens]
  x = x.reshape(shards, -1, *x.shape[1:])
  return x[:, : num_tokens // shards].reshape(-1, *x.shape[2:])


def _vary_like(x, like):
  """``x`` cast to vary over the mesh axes ``like`` varies over (a no-op outside shard_map)."""
  missing = tuple(sorted(_varying(jax.typeof(like)) - _varying(jax.typeof(x)), key=str))
  return lax.pcast(x, missing, to="varying") if missing else x


def _check_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    try:
      return int(value.__index__())
    except (AttributeError, TypeError):
      raise TypeError(f"{_FN}: `{name}` must be a Python int, got {value!r}.") from None
  return value


def _check_number(value, name: str, ok, requirement: str) -> float:
  if isinstance(value, bool | str | bytes) or not isinstance(value, int | float):
    raise TypeError(f"{_FN}: `{name}` must be a Python number, got {type(value).__name__}.")
  value = float(value)
  if not (ok(value) and math.isfinite(value)):
    raise ValueError(f"{_FN}: `{name}` must be finite and {requirement}, got {value}.")
  return value
