"""Tests for xent_jax.cross_entropy against the mpmath reference, identities and optax."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from jax.experimental import checkify
from jax.test_util import check_grads

import xent_jax as xj
from tests.library import _grids
from tests.library import _mp_reference as ref

jax.config.update("jax_numpy_rank_promotion", "raise")


def _jit_grad(fn, **kwargs):
  """jax.grad under jit (an eager grad compiles every primitive separately: slow)."""
  return jax.jit(jax.grad(fn, **kwargs))


def _labels(c, dtype) -> np.ndarray:
  """Integer labels for the logit grid: the dominant class on even rows, random on odd ones."""
  z = _grids.logits(c, dtype)
  rng = np.random.default_rng(c)
  return np.where(np.arange(len(z)) % 2 == 0, z.argmax(axis=1), rng.integers(0, c, len(z)))


def _dense_targets(c, dtype) -> np.ndarray:
  """Targets with exact 0/1 entries and tails, one row per logit row."""
  z = _grids.logits(c, dtype)
  return _grids.probs(c, dtype, seed=1)[np.arange(len(z)) % len(_grids.probs(c, dtype, seed=1))]


def _exactly_normalized_targets(c, dtype) -> np.ndarray:
  """The dense targets on a 2^-20 grid, summing to exactly 1 in every dtype.

  A gradient test needs Σt = 1 exactly: with targets that sum to 1 only up to rounding,
  ∂H/∂z = (Σt)·softmax - t differs from "softmax - targets" by (Σt - 1)·softmax.
  """
  t = np.round(_dense_targets(c, dtype).astype(np.float64) * 2**20) / 2**20
  top = t.argmax(axis=1)
  t[np.arange(len(t)), top] += 1 - t.sum(axis=1)  # exact: multiples of 2^-20 in [0, 1]
  assert np.all(t.astype(dtype).sum(axis=1, dtype=np.float64) == 1)
  return t.astype(dtype)


@functools.cache
def _sce_ref(c, dtype, smoothing=0.0, masked=False):
  z = _grids.logits(c, dtype)
  where = _grids.mask(z.shape, c) if masked else None
  return ref.softmax_cross_entropy(z, _dense_targets(c, dtype), where, smoothing)


@functools.cache
def _int_ref(c, dtype, smoothing=0.0, masked=False):
  z = _grids.logits(c, dtype)
  where = _grids.mask(z.shape, c) if masked else None
  return ref.softmax_cross_entropy_with_integer_labels(z, _labels(c, dtype), where, smoothing)


class SoftmaxCrossEntropyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=_grids.CLASS_COUNTS))
  def test_integer_labels_match_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    z = _grids.logits(c, dtype)
    got = self.variant(xj.softmax_cross_entropy_with_integer_labels)(z, _labels(c, dtype))
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(
      got, _int_ref(c, dtype), dtype, name="softmax_cross_entropy_with_integer_labels"
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10, 1000)))
  def test_dense_targets_match_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    z = _grids.logits(c, dtype)
    got = self.variant(xj.softmax_cross_entropy)(z, _dense_targets(c, dtype))
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(got, _sce_ref(c, dtype), dtype, name="softmax_cross_entropy")

  @chex.variants(with_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(smoothing=(0.1,), masked=(False, True)))
  def test_smoothing_and_where_match_mpmath(self, dtype, smoothing, masked):
    z = _grids.logits(10, dtype)
    where = _grids.mask(z.shape, 10) if masked else None
    dense = self.variant(
      lambda z, t: xj.softmax_cross_entropy(z, t, where=where, label_smoothing=smoothing)
    )(z, _dense_targets(10, dtype))
    ref.assert_accurate(
      dense, _sce_ref(10, dtype, smoothing, masked), dtype, name="softmax_cross_entropy"
    )
    labels = _labels(10, dtype)
    if masked:  # keep each label on a class that the mask keeps
      labels = np.argmax(np.where(where, z, -np.inf), axis=1)
      exact = ref.softmax_cross_entropy_with_integer_labels(z, labels, where, smoothing)
    else:
      exact = _int_ref(10, dtype, smoothing)
    sparse = self.variant(
      lambda z, y: xj.softmax_cross_entropy_with_integer_labels(
        z, y, where=where, label_smoothing=smoothing
      )
    )(z, labels)
    ref.assert_accurate(sparse, exact, dtype, name="softmax_cross_entropy_with_integer_labels")

  @parameterized.named_parameters(_grids.dtype_params(c=_grids.CLASS_COUNTS))
  def test_value_under_differentiation_matches_mpmath(self, dtype, c):
    # jax.vjp runs the fast path's forward rule, an implementation separate from the plain
    # call's (it materialises the exponentials for the backward pass).
    z, labels = _grids.logits(c, dtype), _labels(c, dtype)
    sparse = jax.jit(
      lambda z: jax.vjp(lambda z: xj.softmax_cross_entropy_with_integer_labels(z, labels), z)[0]
    )(z)
    ref.assert_accurate(
      sparse, _int_ref(c, dtype), dtype, name="softmax_cross_entropy_with_integer_labels under vjp"
    )
    if c <= 1000:
      t = _dense_targets(c, dtype)
      dense = jax.jit(lambda z, t: jax.vjp(xj.softmax_cross_entropy, z, t)[0])(z, t)
      ref.assert_accurate(dense, _sce_ref(c, dtype), dtype, name="softmax_cross_entropy under vjp")

  def test_dominant_one_hot_targets_under_differentiation(self):
    # -log q of a class that wins by 30 nats next to a large maximum (m + L would round L away).
    z = np.array([[80.0, 50.0, 45.0], [0.0, -30.0, -35.0]], np.float32)
    t = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    exact = ref.softmax_cross_entropy(z, t, None, 0.0)
    for got in (
      jax.jit(lambda z: jax.vjp(lambda z: xj.softmax_cross_entropy(z, t), z)[0])(z),
      _grids.JIT.softmax_cross_entropy(z, t),
      jax.jit(
        lambda z: jax.vjp(
          lambda z: xj.softmax_cross_entropy_with_integer_labels(z, np.array([0, 0])), z
        )[0]
      )(z),
    ):
      ref.assert_accurate(got, exact, np.float32, name="softmax_cross_entropy, dominant class")

  def test_issue_done_check(self):
    got = _grids.JIT.softmax_cross_entropy_with_integer_labels(
      jnp.array([[0.0, -30.0]]), jnp.array([0])
    )
    exact = ref.softmax_cross_entropy_with_integer_labels(
      np.array([[0.0, -30.0]], np.float32), np.array([0])
    )
    np.testing.assert_allclose(got, exact.value, rtol=1e-6)

  @parameterized.named_parameters(_grids.dtype_params(c=(10, 1000)))
  def test_integer_labels_equal_one_hot(self, dtype, c):
    z, labels = _grids.logits(c, dtype), _labels(c, dtype)
    dense = _grids.JIT.softmax_cross_entropy(z, ref.one_hot(labels, c, dtype))
    sparse = _grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels)
    np.testing.assert_allclose(
      sparse, dense, rtol=2 * ref.RTOL[np.dtype(dtype)], atol=np.finfo(dtype).tiny
    )
    smooth_dense = _grids.JIT.softmax_cross_entropy(
      z[:, :], ref.one_hot(labels, c, dtype) * 0.8 + 0.2 / c
    )
    np.testing.assert_allclose(
      _grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels, label_smoothing=0.2),
      smooth_dense,
      rtol=4 * ref.RTOL[np.dtype(dtype)],
    )

  def test_narrow_integer_labels_equal_int32_labels(self):
    # Labels of every integer dtype name the same classes: with 300 classes an int8 label
    # 100 or a uint8 label 5 must not wrap against the class count or the class iota
    # (a uint8 label 5 once matched class 261 too, and an int8 label 100 gave NaN).
    c = 300
    z = _grids.logits(c, _grids.DTYPES[0])[:3]
    q = np.asarray(jax.nn.softmax(z.astype(np.float64)), z.dtype)
    where = np.ones(z.shape, bool)

    @jax.jit  # one program per label dtype
    def outputs(y):
      out = []
      for options in ({}, {"where": where}, {"label_smoothing": 0.1}):
        total = lambda z, o=options: xj.softmax_cross_entropy_with_integer_labels(z, y, **o).sum()
        out.append(jax.value_and_grad(total)(z))
      out.append(xj.cross_entropy_with_integer_labels(y, q))
      # ignore_index=-100 skips no label (in uint8, -100 is 156)
      out.append(xj.softmax_cross_entropy_with_integer_labels(z, y, ignore_index=-100))
      out.append(xj.cross_entropy_with_integer_labels(y, q, ignore_index=-100))
      return out

    checked = xj.checked(jax.jit(xj.softmax_cross_entropy_with_integer_labels))
    for dtype, values in (
      (np.int8, [5, 100, 127]),
      (np.uint8, [5, 200, 156]),
      (np.int16, [5, 261, 299]),
      (np.uint16, [5, 261, 299]),
    ):
      narrow, wide = np.array(values, dtype), np.array(values, np.int32)
      chex.assert_trees_all_equal(outputs(narrow), outputs(wide), custom_message=dtype.__name__)
      np.testing.assert_array_equal(checked(z, narrow), checked(z, wide))  # valid labels pass

  def test_64_bit_host_labels_out_of_range_stay_out_of_range(self):
    # With x64 off, JAX wraps int64/uint64 host labels to int32: 2**32 + 1 became class 1
    # and -2**32 + 2 class 2, a finite loss for a label that names no class, also under
    # `checked`. Out of range must give what an out-of-range label gives (NaN, a CheckError
    # under `checked`) in both modes; the in-range label alongside is unaffected.
    z = _grids.logits(4, _grids.DTYPES[0])[:3]
    q = np.asarray(jax.nn.softmax(z.astype(np.float64)), z.dtype)
    for labels in (
      np.array([2**32 + 1, -(2**32) + 2, 1]),
      np.array([2**40 + 3, 2**33, 1], np.uint64),
    ):
      for got in (
        xj.softmax_cross_entropy_with_integer_labels(z, labels),
        xj.cross_entropy_with_integer_labels(labels, q),
      ):
        self.assertTrue(np.all(np.isnan(got[:2])), f"{labels.dtype}: {got}")
        self.assertTrue(np.isfinite(got[2]))
      with self.assertRaisesRegex(checkify.JaxRuntimeError, "`labels` must be in"):
        xj.checked(xj.softmax_cross_entropy_with_integer_labels)(z, labels)
    # A uint32 2**32 - 1 compared with ignore_index=-1 in uint32 equalled it: a label out of
    # range was skipped (loss 0) instead of giving NaN.
    wide = jnp.array([2**32 - 1, 0, 1], jnp.uint32)
    for got in (
      xj.softmax_cross_entropy_with_integer_labels(z, wide, ignore_index=-1),
      xj.cross_entropy_with_integer_labels(wide, q, ignore_index=-1),
    ):
      self.assertTrue(np.isnan(got[0]), f"uint32: {got}")
      self.assertTrue(np.all(np.isfinite(got[1:])))

  @parameterized.named_parameters(_grids.dtype_params())
  def test_label_smoothing_equals_smoothed_dense_targets(self, dtype):
    z = (np.random.default_rng(1).normal(size=(30, 5)) * 4).astype(dtype)
    t = _grids.softmax64(np.random.default_rng(2).normal(size=(30, 5)) * 3)
    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(
      _grids.JIT.softmax_cross_entropy(z, t.astype(dtype), label_smoothing=0.3),
      _grids.JIT.softmax_cross_entropy(z, (0.7 * t + 0.3 / 5).astype(dtype)),
      rtol=rtol,
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_where_equals_dropping_the_classes(self, dtype):
    z, t = _grids.logits(10, dtype), _dense_targets(10, dtype)
    keep = np.array([True, False, True, True, True, False, True, True, False, True])
    rtol = ref.RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(
      _grids.JIT.softmax_cross_entropy(z, t, where=keep),
      _grids.JIT.softmax_cross_entropy(z[:, keep], t[:, keep]),
      rtol=rtol,
    )
    np.testing.assert_allclose(
      _grids.JIT.softmax_cross_entropy(z, t, where=keep, label_smoothing=0.1),
      _grids.JIT.softmax_cross_entropy(z[:, keep], t[:, keep], label_smoothing=0.1),
      rtol=rtol,
    )
    labels = np.array([0, 2, 3, 4, 6, 7, 9])
    np.testing.assert_allclose(
      _grids.JIT.softmax_cross_entropy_with_integer_labels(z[: len(labels)], labels, where=keep),
      _grids.JIT.softmax_cross_entropy_with_integer_labels(z[: len(labels), keep], np.arange(7)),
      rtol=rtol,
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_out_of_range_labels_are_nan_unless_masked(self, dtype):
    z = _grids.logits(3, dtype)[:4]
    labels = np.array([-1, 3, 100, 1])
    got = np.asarray(_grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels))
    self.assertTrue(np.all(np.isnan(got[:3])), got)
    self.assertTrue(np.isfinite(got[3]))
    nothing = np.zeros(z.shape, bool)
    np.testing.assert_array_equal(
      _grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels, where=nothing), 0
    )
    np.testing.assert_array_equal(_grids.JIT.softmax_cross_entropy(z, np.abs(z), where=nothing), 0)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_padding_labelled_minus_one_masked_after_the_loss(self, dtype):
    """A NaN loss with zero partials: a where after the loss leaves the gradient of the
    kept examples alone, finite (the usual padding idiom)."""
    z = _grids.logits(3, dtype)[:4]
    labels = np.array([1, -1, 2, 3])
    keep = labels >= 0

    def masked_loss(z):
      loss = xj.softmax_cross_entropy_with_integer_labels(z, labels)
      return jnp.sum(jnp.where(keep, loss, 0))

    grad = np.asarray(jax.jit(jax.grad(masked_loss))(z))
    # Oracle: the gradient of the kept examples alone, computed without the padded ones.
    kept = jax.grad(
      lambda z: jnp.sum(xj.softmax_cross_entropy_with_integer_labels(z, labels[keep]))
    )(z[keep])
    np.testing.assert_array_equal(grad[~keep], 0)
    np.testing.assert_allclose(grad[keep], kept, rtol=ref.RTOL[np.dtype(dtype)])

  @parameterized.named_parameters(_grids.dtype_params())
  def test_base_2(self, dtype):
    z, labels = _grids.logits(10, dtype), _labels(10, dtype)
    exact = ref.softmax_cross_entropy_with_integer_labels(z, labels, base=2)
    ref.assert_accurate(
      _grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels, base=2),
      exact,
      dtype,
      name="softmax_cross_entropy_with_integer_labels",
    )
    np.testing.assert_allclose(
      _grids.JIT.softmax_cross_entropy(z, _dense_targets(10, dtype), base=2),
      _grids.JIT.softmax_cross_entropy(z, _dense_targets(10, dtype)) / math.log(2),
      rtol=2 * ref.RTOL[np.dtype(dtype)],
    )

  def test_no_retracing(self):
    f = jax.jit(
      chex.assert_max_traces(
        lambda z, y: _grids.JIT.softmax_cross_entropy_with_integer_labels(
          z, y, label_smoothing=0.1
        ),
        n=1,
      )
    )
    rng = np.random.default_rng(0)
    for _ in range(3):
      loss = f(rng.normal(size=(4, 5)).astype(np.float32), rng.integers(0, 5, 4))
      self.assertTrue(np.all(loss > 0))


class SoftmaxCrossEntropyGradientTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10)))
  def test_integer_label_gradient_is_softmax_minus_one_hot(self, dtype, c):
    z, labels = _grids.logits(c, dtype), _labels(c, dtype)
    grad = _jit_grad(
      lambda z: jnp.sum(_grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels))
    )(z)
    chex.assert_tree_all_finite(grad)
    exact = ref.softmax_cross_entropy_grad(z, ref.one_hot(labels, c, dtype), exact_targets=True)
    ref.assert_accurate(grad, exact, dtype, name="grad softmax_cross_entropy_with_integer_labels")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_a_few_dominant_labels_in_an_untrained_batch(self, dtype):
    # Under differentiation the fast path takes log1p of the non-maximal mass only in rows
    # whose label is the maximum, and here too few rows are such for a pass over all of
    # them: each goes to the exact row fallback. log(total) would round the loss
    # 7·e^{-margin} to 0 (float32) or to 1e-8 relative (float64), and ∂/∂z_label with it.
    rng = np.random.default_rng(3)
    z = (3 * rng.normal(size=(64, 8))).astype(dtype)
    labels = (np.argmax(z, axis=1) + rng.integers(1, 8, 64)) % 8  # never the maximum
    margin = {np.dtype(np.float32): 20.0, np.dtype(np.float64): 40.0}[np.dtype(dtype)]
    for row, label in ((5, 2), (40, 7)):
      z[row] = 0
      z[row, label], labels[row] = margin, label
    loss = lambda z: _grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels)
    grad = jax.grad(lambda z: jnp.sum(loss(z)))(z)
    values, vjp = jax.vjp(loss, z)  # the values as value_and_grad computes them
    exact = ref.softmax_cross_entropy_with_integer_labels(z, labels)
    ref.assert_accurate(values, exact, dtype, name="loss under jax.vjp")
    one_hot = ref.one_hot(labels, 8, dtype)
    exact_grad = ref.softmax_cross_entropy_grad(z, one_hot, exact_targets=True)
    ref.assert_accurate(grad, exact_grad, dtype, name="grad")
    ref.assert_accurate(vjp(np.ones(64, dtype))[0], exact_grad, dtype, name="vjp")
    self.assertLess(grad[5, 2], 0)  # -(1 - q_y) = -7e^{-margin}: a normal number, not 0

  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10), masked=(False, True)))
  def test_dense_gradient_is_softmax_minus_targets(self, dtype, c, masked):
    z, t = _grids.logits(c, dtype), _exactly_normalized_targets(c, dtype)
    where = _grids.mask(z.shape, c) if masked else None
    if masked:  # targets supported on the kept classes only, still summing to exactly 1
      t = np.where(where, t, 0).astype(dtype)
      t[np.arange(len(t)), np.argmax(np.where(where, z, -np.inf), axis=1)] += 1 - t.sum(axis=1)
    grad = _jit_grad(lambda z: jnp.sum(_grids.JIT.softmax_cross_entropy(z, t, where=where)))(z)
    chex.assert_tree_all_finite(grad)
    ref.assert_accurate(
      grad, ref.softmax_cross_entropy_grad(z, t, where), dtype, name="grad softmax_cross_entropy"
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_gradient_finite_at_extremes(self, dtype):
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    z = np.array([[big, -big, -np.inf], [-np.inf, 0.0, -big], [0.0, -np.inf, -np.inf]], dtype)
    t = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype)
    chex.assert_tree_all_finite(
      _jit_grad(lambda z: jnp.sum(_grids.JIT.softmax_cross_entropy(z, t)))(z)
    )
    chex.assert_tree_all_finite(
      _jit_grad(
        lambda z: jnp.sum(
          _grids.JIT.softmax_cross_entropy_with_integer_labels(z, np.array([1, 2, 0]))
        )
      )(z)
    )

  # A JVP applied forward runs its own one-pass formula (Σ_j q_j (dz_j - dz_y) for integer
  # labels, Σ_j (T q_j - t_j)(dz_j - dz_k) + Σ_j (L - d_j) dt_j for dense targets), with the
  # rows it cannot do (infinite logits or losses, NaN) recomputed from the exact partials;
  # reverse mode multiplies the partials. Identity: jvp = Σ_j (∂ℓ/∂x_j) dx_j row by row,
  # here on rows that take every branch.

  @parameterized.named_parameters(_grids.dtype_params())
  def test_forward_mode_is_the_transpose_of_reverse_mode_integer_labels(self, dtype):
    z = _grids.edge_rows(dtype)
    labels = np.array([1, 1, 2, 0, 1, -1, 5, 2, 4, 0, 0])
    rng = np.random.default_rng(0)
    dz = rng.uniform(0.5, 2, z.shape).astype(dtype)
    dz[np.arange(len(z)), np.clip(labels, 0, 4)] *= -1  # every term of the exact JVP > 0
    loss = lambda z: xj.softmax_cross_entropy_with_integer_labels(z, labels)
    expected = _grids.assert_forward_is_transpose(loss, (z,), (dz,), dtype)
    self.assertTrue(np.all(np.isfinite(expected[[0, 3, 4, 5, 6, 7, 8, 10]])))
    self.assertGreater(expected[3], 0)  # a normal number, not flushed

  @parameterized.named_parameters(_grids.dtype_params())
  def test_forward_mode_is_the_transpose_of_reverse_mode_dense_targets(self, dtype):
    z = _grids.edge_rows(dtype)
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 1, z.shape)
    t[0, 1] = 0  # no mass on the impossible class: a finite loss
    t[3] = [1 - 4 * 2**-20] + [2**-20] * 4  # next to one-hot at the dominant class
    t[4] = [0, 1, 0, 0, 0]
    t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    t[3] = [1 - 4 * 2**-20] + [2**-20] * 4
    dz, dt = (rng.uniform(-2, 2, z.shape).astype(dtype) for _ in range(2))
    expected = _grids.assert_forward_is_transpose(xj.softmax_cross_entropy, (z, t), (dz, dt), dtype)
    self.assertTrue(np.all(np.isfinite(expected[[0, 3, 4, 5, 6, 7, 8, 10]])))
    for i in range(2):  # one argument's tangent alone (the other a symbolic zero)
      fixed = lambda x, i=i: xj.softmax_cross_entropy(*((x, t) if i == 0 else (z, x)))
      _grids.assert_forward_is_transpose(fixed, ((z, t)[i],), ((dz, dt)[i],), dtype)

  def test_check_grads_float64(self):
    if not jax.config.jax_enable_x64:
      self.skipTest("float64 needs JAX_ENABLE_X64=1")
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4, 5)) * 3
    # Probabilities bounded away from 0: the finite differences step by ±1e-4 or so.
    t = _grids.softmax64(rng.uniform(-1, 1, size=(4, 5)))
    check_grads(_grids.JIT.softmax_cross_entropy, (z, t), order=1, modes=["rev"])
    check_grads(
      lambda z: _grids.JIT.softmax_cross_entropy_with_integer_labels(
        z, np.array([0, 4, 2, 2]), label_smoothing=0.1
      ),
      (z,),
      order=1,
      modes=["rev"],
    )
    check_grads(
      _grids.JIT.cross_entropy,
      (t, _grids.softmax64(rng.uniform(-1, 1, size=(4, 5)))),
      order=1,
      modes=["rev"],
    )
    check_grads(
      _grids.JIT.sigmoid_binary_cross_entropy, (z, rng.random((4, 5))), order=1, modes=["rev"]
    )
    check_grads(
      _grids.JIT.binary_cross_entropy,
      (rng.random(6), rng.uniform(0.05, 0.95, 6)),
      order=1,
      modes=["rev"],
    )


def _torch_nll(z64, labels, smoothing=0.0):
  """torch's documented per-example loss, numpy float64: (1-ε)(-log p_y) + (ε/C) Σ_j -log p_j."""
  m = z64.max(axis=1, keepdims=True)
  log_p = z64 - m - np.log(np.sum(np.exp(z64 - m), axis=1, keepdims=True))
  nll = -log_p[np.arange(len(z64)), labels]
  return (1 - smoothing) * nll - smoothing * log_p.mean(axis=1) if smoothing else nll


class IgnoreIndexAndWeightsTest(chex.TestCase):
  """torch's ``ignore_index`` and weighted means, against its documented formulas in numpy."""

  def _batch(self, dtype):
    rng = np.random.default_rng(7)
    z = (rng.normal(size=(6, 5)) * 4).astype(dtype)
    labels = np.array([0, -100, 3, 4, -100, 1])
    garbage = z.copy()
    garbage[1] = np.nan  # padding rows hold anything
    garbage[4] = [np.inf, -np.inf, np.nan, 1e30, -1]
    return z, garbage, labels

  @parameterized.named_parameters(_grids.dtype_params(smoothing=(0.0, 0.2)))
  def test_ignored_examples_are_skipped_like_torch(self, dtype, smoothing):
    z, garbage, labels = self._batch(dtype)
    keep = labels != -100
    f = jax.jit(
      lambda z: xj.softmax_cross_entropy_with_integer_labels(
        z, labels, ignore_index=-100, label_smoothing=smoothing
      )
    )
    loss = np.asarray(f(garbage))
    np.testing.assert_array_equal(loss[~keep], 0)
    exact = _torch_nll(z[keep].astype(np.float64), labels[keep], smoothing)
    np.testing.assert_allclose(loss[keep], exact, rtol=2 * ref.RTOL[np.dtype(dtype)])
    # torch's reduction="mean": the mean over the included examples.
    np.testing.assert_allclose(
      loss.sum() / keep.sum(), exact.mean(), rtol=4 * ref.RTOL[np.dtype(dtype)]
    )
    # Gradient and JVP: exactly 0 on the skipped rows, softmax - target on the others.
    grad = np.asarray(jax.jit(jax.grad(lambda z: jnp.sum(f(z))))(garbage))
    np.testing.assert_array_equal(grad[~keep], 0)
    p = _grids.softmax64(z[keep].astype(np.float64))
    target = (1 - smoothing) * np.eye(5)[labels[keep]] + smoothing / 5
    np.testing.assert_allclose(grad[keep], p - target, atol=4 * ref.RTOL[np.dtype(dtype)])
    tangent = np.ones_like(z)
    _, jvp = jax.jvp(f, (garbage,), (tangent,))
    np.testing.assert_array_equal(np.asarray(jvp)[~keep], 0)
    self.assertTrue(np.all(np.isfinite(np.asarray(jvp))))

  @parameterized.named_parameters(_grids.dtype_params())
  def test_ignore_index_with_where_and_out_of_range_labels(self, dtype):
    z, garbage, labels = self._batch(dtype)
    where = np.ones(z.shape, bool)
    where[:, 0] = False  # class 0 excluded everywhere: the skipped rows must not need it
    labels = labels.copy()
    labels[0] = 7  # out of range and not ignored: NaN, as without ignore_index
    loss = np.asarray(
      jax.jit(
        lambda z: xj.softmax_cross_entropy_with_integer_labels(
          z, labels, where=where, ignore_index=-100
        )
      )(garbage)
    )
    self.assertTrue(np.isnan(loss[0]))
    np.testing.assert_array_equal(loss[[1, 4]], 0)
    z_kept = np.where(where, z, -np.inf).astype(np.float64)
    np.testing.assert_allclose(
      loss[[2, 3, 5]],
      _torch_nll(z_kept[[2, 3, 5]], labels[[2, 3, 5]]),
      rtol=2 * ref.RTOL[np.dtype(dtype)],
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_class_weighted_mean_like_torch(self, dtype):
    # torch's CrossEntropyLoss(weight=w, ignore_index=-100): Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i} over
    # the included examples; here through per-example weights w_{y_i}.
    z, garbage, labels = self._batch(dtype)
    keep = labels != -100
    class_weight = np.array([0.5, 2.0, 1.0, 3.0, 0.25])
    w = np.where(keep, class_weight[np.where(keep, labels, 0)], 0).astype(dtype)
    loss = np.asarray(
      jax.jit(
        lambda z, w: xj.softmax_cross_entropy_with_integer_labels(
          z, labels, ignore_index=-100, weights=w
        )
      )(garbage, w)
    )
    nll = _torch_nll(z[keep].astype(np.float64), labels[keep])
    wk = class_weight[labels[keep]]
    np.testing.assert_allclose(
      loss.sum() / w.sum(), np.sum(wk * nll) / np.sum(wk), rtol=4 * ref.RTOL[np.dtype(dtype)]
    )
    # d/dw of the per-example loss is the unweighted loss.
    dw = jax.jit(
      jax.grad(
        lambda w: jnp.sum(
          xj.softmax_cross_entropy_with_integer_labels(z, labels, ignore_index=-100, weights=w)
        )
      )
    )(w)
    np.testing.assert_allclose(np.asarray(dw)[keep], nll, rtol=2 * ref.RTOL[np.dtype(dtype)])
    np.testing.assert_array_equal(np.asarray(dw)[~keep], 0)

  def test_skipped_examples_cost_zero_whatever_their_weight(self):
    # A weight 1/length is inf on an empty, padded row: the skipped example (ignore_index,
    # or every class excluded by `where`) once cost 0·inf = NaN, in the value and in the
    # gradient. It costs exactly 0; the included ones cost w times their unweighted loss.
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.5, -1.0, 2.0]], np.float32)
    t = np.asarray(jax.nn.softmax(z), np.float32)
    labels, w = np.array([0, -100, 2]), np.array([2.0, np.inf, 0.5], np.float32)
    rows = np.array([[True], [False], [True]])
    calls = {
      "integer, ignore_index": lambda z, w: xj.softmax_cross_entropy_with_integer_labels(
        z, labels, ignore_index=-100, weights=w
      ),
      "integer, where": lambda z, w: xj.softmax_cross_entropy_with_integer_labels(
        z, np.maximum(labels, 0), where=rows, weights=w
      ),
      "probabilities, ignore_index": lambda q, w: xj.cross_entropy_with_integer_labels(
        labels, q, ignore_index=-100, weights=w
      ),
      "dense, where": lambda z, w: xj.softmax_cross_entropy(z, t, where=rows, weights=w),
    }

    @jax.jit  # one program: every call's value and gradients
    def outputs(z, t, w):
      return {
        name: jax.value_and_grad(lambda x, w, f=f: f(x, w).sum(), argnums=(0, 1))(
          t if name.startswith("prob") else z, w
        )
        for name, f in calls.items()
      }

    for name, (total, (dx, dw)) in outputs(z, t, w).items():
      unweighted = calls[name](t if name.startswith("prob") else z, np.ones(3, np.float32))
      keep = np.array([True, False, True])
      np.testing.assert_allclose(total, np.sum(w[keep] * unweighted[keep]), rtol=1e-6, err_msg=name)
      np.testing.assert_allclose(dw, np.where(keep, unweighted, 0), rtol=1e-6, err_msg=name)
      np.testing.assert_array_equal(dx[1], 0, err_msg=name)
      self.assertTrue(np.all(np.isfinite(dx)), name)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_dense_weights_scale_each_example(self, dtype):
    z, _, _ = self._batch(dtype)
    t = _grids.softmax64(np.random.default_rng(2).normal(size=z.shape)).astype(dtype)
    w = np.array([1.0, 0.0, 2.5, 0.5, 3.0, 1.0], dtype)
    got = jax.jit(lambda z, w: xj.softmax_cross_entropy(z, t, weights=w))(z, w)
    z64 = z.astype(np.float64)
    log_p = np.log(_grids.softmax64(z64))
    np.testing.assert_allclose(
      got, w * -np.sum(t * log_p, axis=1), rtol=2 * ref.RTOL[np.dtype(dtype)], atol=0
    )
    grad = jax.jit(jax.grad(lambda z: jnp.sum(xj.softmax_cross_entropy(z, t, weights=w))))(z)
    np.testing.assert_allclose(
      grad, w[:, None] * (_grids.softmax64(z64) - t), atol=4 * ref.RTOL[np.dtype(dtype)]
    )

  def test_bad_ignore_index_and_weights(self):
    z, labels = np.zeros((2, 3), np.float32), np.array([0, 1])
    fn = xj.softmax_cross_entropy_with_integer_labels
    with self.assertRaisesRegex(TypeError, "ignore_index"):
      fn(z, labels, ignore_index=1.5)
    with self.assertRaisesRegex(ValueError, "weights"):
      fn(z, labels, weights=np.ones(3))
    with self.assertRaisesRegex(TypeError, "weights"):
      fn(z, labels, weights=np.ones(2, complex))
    with self.assertRaisesRegex(ValueError, "weights"):
      xj.softmax_cross_entropy(z, z, weights=np.ones((2, 2)))


class CrossEntropyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10, 1000)))
  def test_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    p, q = _grids.probs(c, dtype), _grids.probs(c, dtype, seed=2)
    q = np.where((q == 0) & (p > 0), np.finfo(dtype).tiny, q)  # finite H(p, q)
    got = self.variant(xj.cross_entropy)(p, q)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(got, ref.cross_entropy(p, q), dtype, name="cross_entropy")
    where = _grids.mask(p.shape, c + 1)
    got = self.variant(lambda p, q: xj.cross_entropy(p, q, where=where, base=2))(p, q)
    ref.assert_accurate(got, ref.cross_entropy(p, q, where, base=2), dtype, name="cross_entropy")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_a_certain_prediction_costs_plus_zero(self, dtype):
    # H(p, p) = 0 for a point mass, and it prints as 0.0, not -0.0 (a sum over one class
    # returned -(1·log 1) = -0; so did -log q_y with the other classes at -inf).
    one = np.ones((2, 1), dtype)
    logits = np.array([[0.0, -np.inf], [0.0, -np.inf]], dtype)
    label = np.zeros(2, np.int32)
    int_ce = xj.softmax_cross_entropy_with_integer_labels
    values = {
      "entropy": jax.jit(xj.entropy)(one),
      "entropy_from_logits, one class": jax.jit(xj.entropy_from_logits)(one),
      "entropy_from_logits, general path": jax.jit(
        lambda z: xj.entropy_from_logits(z, where=np.ones(z.shape, bool))
      )(one),
      "cross_entropy": jax.jit(xj.cross_entropy)(one, one),
      "binary_cross_entropy": jax.jit(xj.binary_cross_entropy)(one, one),
      "integer labels, one class": jax.jit(int_ce)(one * 0, label),
      "integer labels, others -inf": jax.jit(int_ce)(logits, label),
      "integer labels, general path": jax.jit(
        lambda z, y: int_ce(z, y, where=np.ones(z.shape, bool))
      )(logits, label),
    }
    for name, value in values.items():
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
      self.assertFalse(np.any(np.signbit(value)), name)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_zero_q_under_positive_p_is_infinite(self, dtype):
    p = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], dtype)
    q = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype)
    exact = ref.cross_entropy(p, q)
    self.assertEqual(exact.value[0], np.inf)
    ref.assert_accurate(_grids.JIT.cross_entropy(p, q), exact, dtype, name="cross_entropy")

  @parameterized.named_parameters(_grids.dtype_params(c=(3, 10, 1000)))
  def test_cross_entropy_with_itself_is_entropy(self, dtype, c):
    p = _grids.probs(c, dtype)
    np.testing.assert_allclose(
      _grids.JIT.cross_entropy(p, p),
      _grids.JIT.entropy(p),
      rtol=2 * ref.RTOL[np.dtype(dtype)],
      atol=np.finfo(dtype).tiny,
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_gradient_zero_for_zero_probability_target(self, dtype):
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype)
    q = np.array([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]], dtype)
    gp, gq = _jit_grad(lambda p, q: jnp.sum(_grids.JIT.cross_entropy(p, q)), argnums=(0, 1))(p, q)
    self.assertFalse(np.isnan(gp).any() or np.isnan(gq).any())
    np.testing.assert_array_equal(np.asarray(gq)[p == 0], 0)
    np.testing.assert_allclose(
      np.asarray(gq)[p > 0], -(p / np.where(q > 0, q, 1))[p > 0], rtol=2 * ref.RTOL[np.dtype(dtype)]
    )


def _prob_labels(c, dtype) -> np.ndarray:
  """Labels for the probability grid, by row mod 4: the most probable class (q_y next to 1),
  the least probable one (q_y tiny, or exactly 0: the loss is +inf), random ones."""
  q = _grids.probs(c, dtype)
  random = np.random.default_rng(c + 5).integers(0, c, len(q))
  kind = np.arange(len(q)) % 4
  return np.where(kind == 0, q.argmax(axis=1), np.where(kind == 1, q.argmin(axis=1), random))


class CrossEntropyWithIntegerLabelsTest(chex.TestCase):
  """-log q_y of probabilities (keras's sparse categorical cross-entropy on probabilities)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10, 1000)))
  def test_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    q, labels = _grids.probs(c, dtype), _prob_labels(c, dtype)
    got = self.variant(xj.cross_entropy_with_integer_labels)(labels, q)
    self.assertEqual(got.dtype, np.dtype(dtype))
    exact = ref.cross_entropy_with_integer_labels(labels, q)
    ref.assert_accurate(got, exact, dtype, name="cross_entropy_with_integer_labels")
    where = _grids.mask(q.shape, c + 3)
    got = self.variant(
      lambda y, q: xj.cross_entropy_with_integer_labels(y, q, where=where, base=2)
    )(labels, q)
    exact = ref.cross_entropy_with_integer_labels(labels, q, where, base=2)
    ref.assert_accurate(got, exact, dtype, name="cross_entropy_with_integer_labels where")

  @parameterized.named_parameters(_grids.dtype_params(c=(3, 1000)))
  def test_equals_cross_entropy_with_one_hot_targets(self, dtype, c):
    q, labels = _grids.probs(c, dtype), _prob_labels(c, dtype)
    np.testing.assert_array_equal(
      _grids.JIT.cross_entropy_with_integer_labels(labels, q),
      _grids.JIT.cross_entropy(ref.one_hot(labels, c, dtype), q),
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_derivatives_are_minus_one_over_q_at_the_label(self, dtype):
    # -1/q_y at the label and 0 elsewhere, through grad, jvp and the Hessian (1/q_y²);
    # q_y = 0 gives an honest -inf gradient, never NaN.
    q = _grids.probs(10, dtype)
    labels = _prob_labels(10, dtype)
    f = jax.jit(xj.cross_entropy_with_integer_labels)
    grad = np.asarray(_jit_grad(lambda q: jnp.sum(f(labels, q)))(q))
    rows = np.arange(len(q))
    q_y = q[rows, labels].astype(np.float64)
    self.assertTrue((q_y == 0).any() and (q_y > 1 - 1e-6).any())
    finite = q_y > 0
    with np.errstate(divide="ignore"):
      exact = -1 / q_y
    np.testing.assert_allclose(grad[rows, labels], exact, rtol=2 * ref.RTOL[np.dtype(dtype)])
    off_label = np.ones(q.shape, bool)
    off_label[rows, labels] = False
    np.testing.assert_array_equal(grad[off_label], 0)
    tangent = np.random.default_rng(0).normal(size=q.shape).astype(dtype)
    _, jvp = jax.jit(lambda q, t: jax.jvp(lambda q: f(labels, q), (q,), (t,)))(q, tangent)
    np.testing.assert_allclose(
      np.asarray(jvp)[finite],
      tangent[rows, labels][finite] / -q_y[finite],
      rtol=4 * ref.RTOL[np.dtype(dtype)],
    )
    normal = q_y > np.finfo(dtype).max ** -0.5  # 1/q_y² representable
    hess_diag = jax.jit(
      jax.vmap(jax.hessian(lambda q_row, y: xj.cross_entropy_with_integer_labels(y, q_row)))
    )(q[normal], labels[normal])
    np.testing.assert_allclose(
      hess_diag[np.arange(normal.sum()), labels[normal], labels[normal]],
      1 / q_y[normal] ** 2,
      rtol=4 * ref.RTOL[np.dtype(dtype)],
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_ignore_index_where_weights_and_bad_labels(self, dtype):
    # keras's ignore_class / torch's ignore_index: skipped examples cost 0 and have a zero
    # gradient whatever they hold; an out-of-range label is NaN unless `where` excludes the
    # whole example; torch's weighted mean is Σ w_y ℓ / Σ w_y over the included examples.
    q = _grids.softmax64(np.random.default_rng(3).normal(size=(6, 4))).astype(dtype)
    labels = np.array([0, -1, 3, 7, -1, 2])
    garbage = q.copy()
    garbage[1] = np.nan
    garbage[4] = [np.inf, -1.0, np.nan, 2.0]
    where = np.ones(q.shape, bool)
    where[3] = False  # the out-of-range label 7 sits in a fully excluded example: padding
    w = np.array([1.0, 5.0, 2.0, 3.0, 5.0, 0.5], dtype)
    f = jax.jit(
      lambda q, w: xj.cross_entropy_with_integer_labels(
        labels, q, where=where, ignore_index=-1, weights=w
      )
    )
    loss = np.asarray(f(garbage, w))
    kept = np.array([0, 2, 5])
    np.testing.assert_array_equal(loss[[1, 3, 4]], 0)
    q64 = q.astype(np.float64)
    exact = -np.log(q64[kept, labels[kept]])
    np.testing.assert_allclose(loss[kept], w[kept] * exact, rtol=2 * ref.RTOL[np.dtype(dtype)])
    grad = np.asarray(jax.jit(jax.grad(lambda q: jnp.sum(f(q, w))))(garbage))
    np.testing.assert_array_equal(grad[[1, 3, 4]], 0)
    np.testing.assert_allclose(
      grad[kept, labels[kept]],
      -w[kept] / q64[kept, labels[kept]],
      rtol=2 * ref.RTOL[np.dtype(dtype)],
    )
    bad = np.asarray(_grids.JIT.cross_entropy_with_integer_labels(np.array([0, 4, -2]), q[:3]))
    np.testing.assert_array_equal(np.isnan(bad), [False, True, True])
    # Several class axes: a label is a flat row-major index over them, in the order given
    # (the first the major one, as in optax); `checked` reads the labels the same way.
    q3, y3 = q.reshape(6, 2, 2), np.array([0, 3, 1, 2, 0, 1])
    flat = _grids.JIT.cross_entropy_with_integer_labels(y3, q)
    for axis, q_axes in (((1, 2), q3), ((2, 1), q3.transpose(0, 2, 1)), ((-2, 0), q3.T)):
      np.testing.assert_array_equal(xj.cross_entropy_with_integer_labels(y3, q_axes, axis), flat)
      np.testing.assert_array_equal(
        xj.checked(xj.cross_entropy_with_integer_labels)(y3, q_axes, axis), flat
      )
      z_axes = np.log(q_axes)
      np.testing.assert_array_equal(
        xj.checked(xj.softmax_cross_entropy_with_integer_labels)(z_axes, y3, axis),
        xj.softmax_cross_entropy_with_integer_labels(np.log(q), y3),
      )


class BinaryCrossEntropyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(base=(None, 2)))
  def test_binary_cross_entropy_matches_mpmath(self, dtype, base):
    probs = _grids.elementwise_probs(dtype)
    p, q = probs[:, None], probs[None, ::3]
    p, q = np.broadcast_arrays(p, q)
    got = self.variant(lambda p, q: xj.binary_cross_entropy(p, q, base=base))(p, q)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(
      got, ref.binary_cross_entropy(p, q, base=base), dtype, name="binary_cross_entropy"
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(smoothing=(0.0, 0.1)))
  def test_sigmoid_binary_cross_entropy_matches_mpmath(self, dtype, smoothing):
    z = _grids.elementwise_logits(dtype)
    y = np.array([0.0, 1.0, 0.5, 0.25, 1e-3], dtype)
    z, y = np.broadcast_arrays(z[:, None], y[None, :])
    got = self.variant(
      lambda z, y: xj.sigmoid_binary_cross_entropy(z, y, label_smoothing=smoothing)
    )(z, y)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(
      got,
      ref.sigmoid_binary_cross_entropy(z, y, smoothing),
      dtype,
      name="sigmoid_binary_cross_entropy",
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_sigmoid_gradient_is_sigmoid_minus_label(self, dtype):
    z = _grids.elementwise_logits(dtype)
    y = np.random.default_rng(9).integers(0, 2, z.shape).astype(dtype)
    grad = _jit_grad(lambda z: jnp.sum(_grids.JIT.sigmoid_binary_cross_entropy(z, y)))(z)
    chex.assert_tree_all_finite(grad)
    ref.assert_accurate(
      grad,
      ref.sigmoid_binary_cross_entropy_grad(z, y),
      dtype,
      name="grad sigmoid_binary_cross_entropy",
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_sigmoid_equals_binary_of_sigmoid(self, dtype):
    z = np.random.default_rng(5).normal(size=50).astype(dtype) * 3
    y = np.random.default_rng(6).random(50).astype(dtype)
    s = jax.nn.sigmoid(z)
    exact = ref.binary_cross_entropy(y, np.asarray(s))  # also absorbs the rounding of σ
    np.testing.assert_array_less(
      np.abs(_grids.JIT.sigmoid_binary_cross_entropy(z, y) - _grids.JIT.binary_cross_entropy(y, s)),
      2 * ref.RTOL[np.dtype(dtype)] * exact.value
      + 4 * exact.abs_cond
      + 4 * np.spacing(exact.value.astype(dtype)),
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_binary_gradients_finite_at_0_and_1(self, dtype):
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.5], dtype)
    q = np.array([0.0, 1.0, 0.5, 0.5, 0.5], dtype)
    gp, gq = _jit_grad(lambda p, q: jnp.sum(_grids.JIT.binary_cross_entropy(p, q)), argnums=(0, 1))(
      p, q
    )
    self.assertFalse(np.isnan(gp).any() or np.isnan(gq).any())
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    z = np.array([big, -big, np.inf, -np.inf], dtype)
    for y in (0.0, 1.0):
      g = _jit_grad(
        lambda z, y=y: jnp.sum(_grids.JIT.sigmoid_binary_cross_entropy(z, jnp.full_like(z, y)))
      )(z)
      chex.assert_tree_all_finite(g)


class OptaxComparisonTest(absltest.TestCase):
  """Same inputs: optax is measurably wrong (vs mpmath), xent_jax is within SPEC §2."""

  def test_dominant_label_class(self):
    z = np.array([[0.0, -20.0], [5.0, -17.0], [0.0, -30.0]], np.float32)
    labels = np.array([0, 0, 0])
    exact = ref.softmax_cross_entropy_with_integer_labels(z, labels)
    for theirs in (
      optax.softmax_cross_entropy_with_integer_labels(z, labels),
      optax.softmax_cross_entropy(z, ref.one_hot(labels, 2, np.float32)),
    ):
      rel = np.abs(np.asarray(theirs, np.float64) - exact.value) / exact.value
      self.assertTrue(np.all(rel > 0.5), rel)
    ref.assert_accurate(
      _grids.JIT.softmax_cross_entropy_with_integer_labels(z, labels),
      exact,
      np.float32,
      name="softmax_cross_entropy_with_integer_labels",
    )
    ref.assert_accurate(
      _grids.JIT.softmax_cross_entropy(z, ref.one_hot(labels, 2, np.float32)),
      exact,
      np.float32,
      name="softmax_cross_entropy",
    )

  def test_impossible_class_with_zero_target(self):
    z = np.array([[0.0, -np.inf], [-np.inf, 2.0]], np.float32)
    t = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    exact = ref.softmax_cross_entropy(z, t)
    self.assertTrue(np.all(np.isnan(optax.softmax_cross_entropy(z, t))))
    self.assertFalse(np.isnan(exact.value).any())
    ref.assert_accurate(
      _grids.JIT.softmax_cross_entropy(z, t), exact, np.float32, name="softmax_cross_entropy"
    )

  def test_sigmoid_at_infinite_logit(self):
    z = np.array([np.inf, -np.inf], np.float32)
    y = np.array([1.0, 0.0], np.float32)
    exact = ref.sigmoid_binary_cross_entropy(z, y)
    self.assertTrue(np.all(np.isnan(optax.sigmoid_binary_cross_entropy(z, y))))
    ref.assert_accurate(
      _grids.JIT.sigmoid_binary_cross_entropy(z, y),
      exact,
      np.float32,
      name="sigmoid_binary_cross_entropy",
    )

  def test_sigmoid_tail(self):
    # A confidently right logit: the loss is e^-z, not 0 (optax also gets this one right).
    z = np.array([20.0, 30.0, 50.0], np.float32)
    y = np.ones(3, np.float32)
    exact = ref.sigmoid_binary_cross_entropy(z, y)
    ref.assert_accurate(
      _grids.JIT.sigmoid_binary_cross_entropy(z, y),
      exact,
      np.float32,
      name="sigmoid_binary_cross_entropy",
    )


class ModerateMarginTest(chex.TestCase):
  """A dominant class whose log-probability is between -log 2 and -1/16.

  There L = log Σ e^{z_j - z_k} is small but not tiny, and the log of the rounded total is
  off by its absolute error, about 1.5e-7 in float32 (1.8e-6 relative at L = 0.085, row 18
  of _grids.logits(10)): the fast statistics took the log1p of the non-maximal mass only
  below L = 1/16. The integer-label loss (its forward, and its value under value_and_grad,
  which take different statistics) and log_softmax are checked against mpmath.
  """

  @parameterized.named_parameters(_grids.dtype_params())
  def test_values_match_mpmath(self, dtype):
    rng = np.random.default_rng(7)
    # z_0 wins by s nats over 9 classes near 0: L = log(1 + Σ e^{-s + noise}) ∈ (0.06, 0.7);
    # each row shifted by a random offset, so that the maximum is not 0.
    s = np.linspace(2.6, 4.9, 24)[:, None]
    z = np.concatenate([s, rng.normal(0, 0.3, (24, 9))], axis=1) + rng.normal(0, 3, (24, 1))
    z = np.concatenate([z.astype(dtype), np.asarray(_grids.logits(10, dtype))[18:19]])
    labels = np.argmax(z, axis=1)
    exact = ref.log_softmax(z)
    want = -np.take_along_axis(np.asarray(exact.value, np.float64), labels[:, None], axis=1)[:, 0]

    def loss(z):
      return xj.softmax_cross_entropy_with_integer_labels(z, labels)

    rtol = ref.RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(jax.jit(loss)(z), want, rtol=rtol, err_msg="forward")
    under_grad, _ = jax.jit(jax.value_and_grad(lambda z: loss(z).sum(), has_aux=False))(z)
    per_row, _ = jax.jit(lambda z: jax.vjp(loss, z))(z)
    np.testing.assert_allclose(per_row, want, rtol=rtol, err_msg="value under vjp")
    np.testing.assert_allclose(under_grad, want.sum(), rtol=rtol, err_msg="value under grad")
    ref.assert_accurate(jax.jit(xj.log_softmax)(z), exact, dtype, name="log_softmax")


if __name__ == "__main__":
  absltest.main()
