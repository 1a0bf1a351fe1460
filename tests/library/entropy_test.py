"""Tests for xent_jax.entropy against the mpmath reference, identities and distrax (SPEC §2)."""

import functools
import math

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.test_util import check_grads

import xent_jax as xj
from tests.library import _grids
from tests.library import _mp_reference as ref

jax.config.update("jax_numpy_rank_promotion", "raise")


def _jit_grad(fn, **kwargs):
  """jax.grad under jit (an eager grad compiles every primitive separately: slow)."""
  return jax.jit(jax.grad(fn, **kwargs))


@functools.cache
def _entropy_ref(c, dtype, masked=False, base=None):
  p = _grids.probs(c, dtype)
  return ref.entropy(p, where=_grids.mask(p.shape, c) if masked else None, base=base)


@functools.cache
def _entropy_from_logits_ref(c, dtype, masked=False, base=None):
  z = _grids.logits(c, dtype)
  return ref.entropy_from_logits(z, where=_grids.mask(z.shape, c) if masked else None, base=base)


class EntropyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=_grids.CLASS_COUNTS))
  def test_entropy_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    p = _grids.probs(c, dtype)
    got = self.variant(xj.entropy)(p)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(got, _entropy_ref(c, dtype), dtype, name="entropy")

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=_grids.CLASS_COUNTS))
  def test_entropy_from_logits_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    z = _grids.logits(c, dtype)
    got = self.variant(xj.entropy_from_logits)(z)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(got, _entropy_from_logits_ref(c, dtype), dtype, name="entropy_from_logits")

  @parameterized.named_parameters(_grids.dtype_params(c=_grids.CLASS_COUNTS))
  def test_entropy_from_logits_under_differentiation_matches_mpmath(self, dtype, c):
    # jax.vjp runs the fast path's forward rule, an implementation separate from the plain
    # call's.
    z = _grids.logits(c, dtype)
    got = jax.jit(lambda z: jax.vjp(xj.entropy_from_logits, z)[0])(z)
    ref.assert_accurate(
      got, _entropy_from_logits_ref(c, dtype), dtype, name="entropy_from_logits under vjp"
    )

  @chex.variants(with_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(3, 10)))
  def test_where_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    p, z = _grids.probs(c, dtype), _grids.logits(c, dtype)
    wp, wz = _grids.mask(p.shape, c), _grids.mask(z.shape, c)
    got_p = self.variant(lambda p: xj.entropy(p, where=wp))(p)
    got_z = self.variant(lambda z: xj.entropy_from_logits(z, where=wz))(z)
    ref.assert_accurate(got_p, _entropy_ref(c, dtype, True), dtype, name="entropy")
    ref.assert_accurate(
      got_z, _entropy_from_logits_ref(c, dtype, True), dtype, name="entropy_from_logits"
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_base_2(self, dtype):
    p, z = _grids.probs(10, dtype), _grids.logits(10, dtype)
    ref.assert_accurate(
      _grids.JIT.entropy(p, base=2), _entropy_ref(10, dtype, base=2), dtype, name="entropy"
    )
    ref.assert_accurate(
      _grids.JIT.entropy_from_logits(z, base=2),
      _entropy_from_logits_ref(10, dtype, base=2),
      dtype,
      name="entropy_from_logits",
    )
    rtol = 2 * ref.RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(
      _grids.JIT.entropy(p, base=2), _grids.JIT.entropy(p) / math.log(2), rtol=rtol
    )
    np.testing.assert_allclose(_grids.JIT.entropy(p, base=math.e), _grids.JIT.entropy(p), rtol=rtol)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_where_equals_dropping_the_classes(self, dtype):
    p = _grids.probs(10, dtype)
    z = _grids.logits(10, dtype)
    keep = np.array([True, True, False, True, True, False, True, True, True, False])
    rtol = ref.RTOL[np.dtype(dtype)]
    np.testing.assert_allclose(
      _grids.JIT.entropy(p, where=keep), _grids.JIT.entropy(p[:, keep]), rtol=rtol
    )
    np.testing.assert_allclose(
      _grids.JIT.entropy_from_logits(z, where=keep),
      _grids.JIT.entropy_from_logits(z[:, keep]),
      rtol=rtol,
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_empty_distribution_has_zero_entropy(self, dtype):
    z = _grids.logits(3, dtype)[:4]
    nothing = np.zeros(z.shape, bool)
    np.testing.assert_array_equal(_grids.JIT.entropy_from_logits(z, where=nothing), 0)
    np.testing.assert_array_equal(_grids.JIT.entropy(np.abs(z), where=nothing), 0)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_from_logits_equals_entropy_of_softmax(self, dtype):
    z = np.random.default_rng(2).normal(size=(50, 7)).astype(dtype) * 3
    p = np.asarray(jax.nn.softmax(z))
    # Both sides may err by rtol; entropy(p) also inherits the rounding of p to the dtype.
    exact_p = ref.entropy(p)
    np.testing.assert_array_less(
      np.abs(_grids.JIT.entropy_from_logits(z) - _grids.JIT.entropy(p)),
      2 * ref.RTOL[np.dtype(dtype)] * exact_p.value
      + 4 * exact_p.abs_cond
      + 4 * np.spacing(exact_p.value.astype(dtype)),
    )

  def test_axis(self):
    p = _grids.probs(10, np.float32)
    np.testing.assert_array_equal(_grids.JIT.entropy(p.T, axis=0), _grids.JIT.entropy(p))
    got = _grids.JIT.entropy_from_logits(
      _grids.logits(10, np.float32).reshape(-1, 5, 2), axis=(1, 2)
    )
    np.testing.assert_allclose(
      got, _grids.JIT.entropy_from_logits(_grids.logits(10, np.float32)), rtol=1e-6
    )

  def test_low_precision_computed_in_float32(self):
    z = np.random.default_rng(4).normal(size=(6, 7)) * 10
    for low in (jnp.bfloat16, jnp.float16):
      z_low = jnp.asarray(z, low)
      got = _grids.JIT.entropy_from_logits(z_low)
      self.assertEqual(got.dtype, jnp.float32)
      np.testing.assert_array_equal(got, _grids.JIT.entropy_from_logits(z_low.astype(jnp.float32)))

  def test_no_retracing(self):
    f = jax.jit(chex.assert_max_traces(lambda z: xj.entropy_from_logits(z, base=2), n=1))
    rng = np.random.default_rng(0)
    for _ in range(3):
      self.assertTrue(np.all(f(rng.normal(size=(4, 5)).astype(np.float32)) > 0))


class EntropyGradientTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10)))
  def test_entropy_from_logits_gradient_matches_analytic(self, dtype, c):
    z = _grids.logits(c, dtype)
    grad = _jit_grad(lambda z: jnp.sum(_grids.JIT.entropy_from_logits(z)))(z)
    chex.assert_tree_all_finite(grad)
    ref.assert_accurate(
      grad, ref.entropy_from_logits_grad(z), dtype, name="grad entropy_from_logits"
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_entropy_gradient_is_minus_log_p_minus_1_and_0_at_0(self, dtype):
    p = _grids.probs(10, dtype)
    grad = np.asarray(_jit_grad(lambda p: jnp.sum(_grids.JIT.entropy(p)))(p))
    chex.assert_tree_all_finite(grad)
    zero = p == 0
    np.testing.assert_array_equal(grad[zero], 0)
    with np.errstate(divide="ignore"):
      expected = -(np.log(p.astype(np.float64)) + 1)
    np.testing.assert_allclose(
      grad[~zero], expected[~zero], rtol=4 * ref.RTOL[np.dtype(dtype)], atol=4 * np.finfo(dtype).eps
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_binary_entropy_from_logits_gradient(self, dtype):
    z = _grids.elementwise_logits(dtype)
    grad = jax.vmap(_jit_grad(xj.binary_entropy_from_logits))(z)
    chex.assert_tree_all_finite(grad)
    ref.assert_accurate(
      grad, ref.binary_entropy_from_logits_grad(z), dtype, name="grad binary_entropy_from_logits"
    )

  def test_binary_entropy_gradient_not_nan_at_0_and_1(self):
    dtype = _grids.DTYPES[-1]
    p = _grids.elementwise_probs(dtype)
    grad = np.asarray(jax.vmap(_jit_grad(xj.binary_entropy))(p))
    self.assertFalse(np.isnan(grad).any())
    inner = (p > 0) & (p < 1)
    expected = np.log1p(-p[inner].astype(np.float64)) - np.log(p[inner].astype(np.float64))
    np.testing.assert_allclose(grad[inner], expected, rtol=1e-5, atol=1e-5)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_forward_mode_is_the_transpose_of_reverse_mode_at_the_edges(self, dtype):
    # A JVP applied forward runs its own one-pass formula -Σ_j q_j (d_j - d̄) dz_j, with
    # the rows it cannot do (infinite logits, NaN) recomputed from the exact partials.
    z = _grids.edge_rows(dtype)
    dz = np.random.default_rng(0).uniform(-2, 2, z.shape).astype(dtype)
    expected = _grids.assert_forward_is_transpose(xj.entropy_from_logits, (z,), (dz,), dtype)
    self.assertTrue(np.all(np.isfinite(expected[[0, 3, 4, 5, 6, 7, 8, 10]])))
    self.assertNotEqual(expected[3], 0)  # a normal number, not flushed

  def test_check_grads_float64(self):
    if not jax.config.jax_enable_x64:
      self.skipTest("float64 needs JAX_ENABLE_X64=1")
    rng = np.random.default_rng(6)
    z = rng.normal(size=(4, 5)) * 3
    check_grads(_grids.JIT.entropy_from_logits, (z,), order=1, modes=["rev"])
    check_grads(
      lambda z: _grids.JIT.entropy_from_logits(z, where=_grids.mask(z.shape, 1)),
      (z,),
      order=1,
      modes=["rev"],
    )
    check_grads(_grids.JIT.entropy, (rng.uniform(0.05, 1, size=(4, 5)),), order=1, modes=["rev"])
    check_grads(
      _grids.JIT.binary_entropy, (rng.uniform(0.05, 0.95, size=7),), order=1, modes=["rev"]
    )
    check_grads(
      _grids.JIT.binary_entropy_from_logits, (rng.normal(size=7) * 4,), order=1, modes=["rev"]
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_gradient_finite_at_extremes(self, dtype):
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    z = np.array([[big, -big, -np.inf], [-np.inf, 0.0, -big], [0.0, -np.inf, -np.inf]], dtype)
    chex.assert_tree_all_finite(_jit_grad(lambda z: jnp.sum(_grids.JIT.entropy_from_logits(z)))(z))
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype)
    chex.assert_tree_all_finite(_jit_grad(lambda p: jnp.sum(_grids.JIT.entropy(p)))(p))


class BinaryEntropyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(base=(None, 2)))
  def test_binary_entropy_matches_mpmath(self, dtype, base):
    p = _grids.elementwise_probs(dtype)
    got = self.variant(lambda p: xj.binary_entropy(p, base=base))(p)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(got, ref.binary_entropy(p, base=base), dtype, name="binary_entropy")

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(base=(None, 2)))
  def test_binary_entropy_from_logits_matches_mpmath(self, dtype, base):
    z = _grids.elementwise_logits(dtype)
    got = self.variant(lambda z: xj.binary_entropy_from_logits(z, base=base))(z)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(
      got, ref.binary_entropy_from_logits(z, base=base), dtype, name="binary_entropy_from_logits"
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_binary_is_two_class_entropy(self, dtype):
    z = _grids.elementwise_logits(dtype)
    z = z[np.isfinite(z)]
    two_class = np.stack([z, np.zeros_like(z)], axis=-1)
    np.testing.assert_allclose(
      _grids.JIT.binary_entropy_from_logits(z),
      _grids.JIT.entropy_from_logits(two_class),
      rtol=2 * ref.RTOL[np.dtype(dtype)],
      atol=np.finfo(dtype).tiny,
    )

  def test_maximum_is_log_2_at_one_half(self):
    self.assertAlmostEqual(float(_grids.JIT.binary_entropy(np.float32(0.5))), math.log(2), places=6)
    self.assertAlmostEqual(
      float(_grids.JIT.binary_entropy_from_logits(np.float32(0))), math.log(2), places=6
    )


class DistraxComparisonTest(absltest.TestCase):
  def test_distrax_categorical_entropy_loses_the_tail_we_do_not(self):
    # Logits [0, -d]: distrax drops the log1p(e^-d) term, a relative error of 1/(1+d).
    d = np.array([17.0, 20.0, 30.0, 50.0], np.float32)
    z = np.stack([np.zeros_like(d), -d], axis=-1)
    exact = ref.entropy_from_logits(z)
    theirs = np.asarray(distrax.Categorical(logits=z).entropy(), np.float64)
    their_rel = np.abs(theirs - exact.value) / exact.value
    self.assertTrue(np.all(their_rel > 0.01), their_rel)
    ref.assert_accurate(
      _grids.JIT.entropy_from_logits(z), exact, np.float32, name="entropy_from_logits"
    )


if __name__ == "__main__":
  absltest.main()
