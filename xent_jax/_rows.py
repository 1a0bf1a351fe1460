"""Row-wise fast paths: one cheap formula for every row, exact recomputation of the few others.

The softmax measures have a formula that is one fused pass over the logits and exact for
*most* rows (see :mod:`xent_jax.cross_entropy`), and an exact formula that costs several
passes. :func:`fix_rows` runs the exact one only on the rows a fast formula flags, K rows at
a time: gathered, recomputed, scattered back in place. It costs one prefix sum over the
batch when no row is flagged, and never more than one exact pass over the flagged rows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Rows per chunk: about this many elements (1 MiB of float32), so a chunk stays in cache.
_CHUNK_ELEMENTS = 2**18


def chunk_rows(num_rows: int, row_size: int) -> int:
  """K: how many rows of ``row_size`` elements one chunk of :func:`fix_rows` holds."""
  return max(1, min(num_rows, _CHUNK_ELEMENTS // max(row_size, 1)))


def fix_rows(
  flags_B: jax.Array,
  exact_fn: Callable[..., jax.Array],
  out,
  *rows: jax.Array,
  row_size: int,
) -> jax.Array:
  """``out`` with ``out[b] = exact_fn(*(r[b] for r in rows))`` wherever ``flags_B[b]``.

  Args:
    flags_B: which rows to recompute, boolean ``[B]``.
    exact_fn: maps ``[K, ...]`` slices of ``rows`` to ``[K, ...]`` slices of ``out`` (a
      pytree of arrays, like ``out``).
    out: the fast result, a pytree of ``[B, ...]`` arrays; updated in place (a
      ``while_loop`` carry).
    *rows: the inputs, each ``[B, ...]``.
    row_size: elements per row of the largest input (sets the chunk size K).

  Returns:
    ``out`` with the flagged rows replaced.
  """
  num_rows = flags_B.shape[0]
  k = chunk_rows(num_rows, row_size)
  count = jnp.sum(flags_B, dtype=jnp.int32)
  # Flagged rows first, then the out-of-range index B: gathered with clipping and dropped
  # on the way back, so a partial last chunk writes nothing it should not.
  (index,) = jnp.nonzero(flags_B, size=num_rows + k - 1, fill_value=num_rows)

  def body(state):
    start, out = state
    index_K = jax.lax.dynamic_slice_in_dim(index, start, k)
    values = exact_fn(*(jnp.take(r, index_K, axis=0, mode="clip") for r in rows))
    out = jax.tree.map(lambda o, v: o.at[index_K].set(v.astype(o.dtype), mode="drop"), out, values)
    return start + k, out

  _, out = jax.lax.while_loop(lambda state: state[0] < count, body, (jnp.int32(0), out))
  return out
