"""The fast paths' row repair (xent_jax._normalizer.fix_rows) over several chunks.

A fast path hands the rows it cannot finish (±inf or NaN logits, a dominant class whose
normaliser needs the log1p of the non-maximal mass) to an exact recomputation, K rows at a
time (K = 2^18 / C). Here about 70% of 300 rows of 4096 classes are flagged: five chunks of
K = 64, the last one partial. Each loss must equal the general path's (a ``where`` mask of
all True takes it: the same formulas from the general statistics, no repair), and at the
rows with a +inf logit equal the limit the docstrings promise.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

import xent_jax as xj
from xent_jax import _normalizer

_B, _C = 300, 4096
_RTOL = {jnp.float32: 1e-6, jnp.float64: 1e-13}  # SPEC §2


def _flagged_logits(dtype):
  rng = np.random.default_rng(7)
  z = rng.normal(0.0, 2.0, (_B, _C))
  labels = rng.integers(0, _C, _B)
  kind = rng.integers(0, 4, _B)  # 0: plain, 1: +inf logit, 2: dominant label, 3: dominant other
  z[kind == 1, 5] = np.inf
  z[kind == 2, labels[kind == 2]] += 40.0
  z[kind == 3, 9] += 40.0
  return jnp.asarray(z, dtype), jnp.asarray(labels, jnp.int32), kind


class RowRepairTest(chex.TestCase):
  def test_many_flagged_rows_equal_the_general_path(self):
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    z, y, kind = _flagged_logits(dtype)
    everything = jnp.ones(z.shape, bool)
    t = jax.nn.one_hot(y, _C, dtype=dtype)
    pairs = {
      "entropy_from_logits": (xj.entropy_from_logits, ()),
      "softmax_cross_entropy": (xj.softmax_cross_entropy, (t,)),
      "softmax_cross_entropy_with_integer_labels": (
        xj.softmax_cross_entropy_with_integer_labels,
        (y,),
      ),
    }
    for name, (fn, extra) in pairs.items():
      fast = np.asarray(jax.jit(fn)(z, *extra))
      general = np.asarray(jax.jit(lambda z, *a, fn=fn: fn(z, *a, where=everything))(z, *extra))
      finite = np.isfinite(general)
      np.testing.assert_array_equal(np.isfinite(fast), finite, err_msg=name)
      np.testing.assert_allclose(fast[finite], general[finite], rtol=_RTOL[dtype], err_msg=name)
      np.testing.assert_array_equal(fast[~finite], general[~finite], err_msg=name)
    # A +inf logit takes all the mass: entropy 0; the label's loss 0 at the +inf class and
    # +inf elsewhere.
    inf_rows = kind == 1
    h = np.asarray(jax.jit(xj.entropy_from_logits)(z))
    np.testing.assert_array_equal(h[inf_rows], 0.0)
    loss = np.asarray(jax.jit(xj.softmax_cross_entropy_with_integer_labels)(z, y))
    at_inf = inf_rows & (np.asarray(y) == 5)
    np.testing.assert_array_equal(loss[inf_rows & ~at_inf], np.inf)
    np.testing.assert_array_equal(loss[at_inf], 0.0)
    # Dominant label rows (the label wins by 40 nats): loss = log1p(Σ_{j≠y} e^{z_j - z_y}),
    # tiny but normal, from a float64 numpy recomputation.
    dom = kind == 2
    z64 = np.asarray(z, np.float64)[dom]
    zy = z64[np.arange(dom.sum()), np.asarray(y)[dom]]
    not_label = np.arange(_C) != np.asarray(y)[dom][:, None]
    others = np.where(not_label, np.exp(z64 - zy[:, None]), 0.0).sum(axis=1)
    np.testing.assert_allclose(loss[dom], np.log1p(others), rtol=_RTOL[dtype])
    self.assertTrue(np.all(loss[dom] > 0))

  def test_every_flag_count_around_the_chunk_size(self):
    # K = 2^18 / row_size = 8 rows per chunk: no flag, one, a partial chunk, exactly one
    # and two full chunks, one more, all.
    # Each flagged row gets exact_fn's value, every other row keeps its own.
    rows = jnp.asarray(np.random.default_rng(0).normal(size=(50, 3)), jnp.float32)
    keep = jnp.arange(50, dtype=jnp.float32) - 100

    @jax.jit
    @chex.assert_max_traces(n=1)  # flags are an argument: one program for every count
    def repaired(flags):
      return _normalizer.fix_rows(flags, lambda r: r.sum(1) + 1, keep, rows, row_size=2**15)

    rng = np.random.default_rng(1)
    for count in (0, 1, 7, 8, 9, 16, 17, 50):
      flags = np.zeros(50, bool)
      flags[rng.choice(50, count, replace=False)] = True
      want = np.where(flags, np.asarray(rows).sum(1) + 1, np.asarray(keep))
      np.testing.assert_allclose(repaired(flags), want, rtol=1e-6, err_msg=f"{count} flagged")


if __name__ == "__main__":
  absltest.main()
