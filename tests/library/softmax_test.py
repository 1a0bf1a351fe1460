"""Tests for xent_jax.softmax: log_softmax, sigmoid, log_sigmoid, tanh_probability (SPEC §2)."""

import functools

import chex
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
def _log_softmax_ref(c, dtype, masked=False):
  z = _grids.logits(c, dtype)
  return ref.log_softmax(z, where=_grids.mask(z.shape, c) if masked else None)


class LogSoftmaxTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=_grids.CLASS_COUNTS))
  def test_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    z = _grids.logits(c, dtype)
    got = self.variant(xj.log_softmax)(z)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(got, _log_softmax_ref(c, dtype), dtype, name="log_softmax")

  @chex.variants(with_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(3, 10, 1000)))
  def test_where_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    z = _grids.logits(c, dtype)
    where = _grids.mask(z.shape, c)
    got = self.variant(lambda z: xj.log_softmax(z, where=where))(z)
    ref.assert_accurate(got, _log_softmax_ref(c, dtype, True), dtype, name="log_softmax")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_where_equals_dropping_the_classes(self, dtype):
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(20, 6)) * 5).astype(dtype)
    keep = np.array([True, False, True, True, False, True])
    got = _grids.JIT.log_softmax(z, where=keep)
    np.testing.assert_array_equal(np.asarray(got)[:, ~keep], -np.inf)
    np.testing.assert_allclose(
      got[:, keep], _grids.JIT.log_softmax(z[:, keep]), rtol=ref.RTOL[np.dtype(dtype)]
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_axis(self, dtype):
    z = _grids.logits(10, dtype)
    expected = _grids.JIT.log_softmax(z)
    np.testing.assert_array_equal(_grids.JIT.log_softmax(z.T, axis=0), np.asarray(expected).T)
    # A tuple of axes reduces over their product: [N, 2, 5] over (1, 2) = [N, 10] over -1.
    got = _grids.JIT.log_softmax(z.reshape(-1, 2, 5), axis=(1, 2)).reshape(z.shape)
    np.testing.assert_allclose(got, expected, rtol=ref.RTOL[np.dtype(dtype)])

  @parameterized.named_parameters(_grids.dtype_params())
  def test_gradient_matches_analytic(self, dtype):
    # d/dz Σ_i c_i log p_i = c - p Σ c; small-integer c are exact in every dtype.
    z = _grids.logits(10, dtype)
    c = np.random.default_rng(5).integers(-3, 4, size=z.shape).astype(dtype)
    c = np.where(np.isinf(z), 0, c).astype(dtype)
    grad = _jit_grad(lambda z: jnp.sum(c * jnp.where(jnp.isinf(z), 0, _grids.JIT.log_softmax(z))))(
      z
    )
    chex.assert_tree_all_finite(grad)
    # c - p Σc is the softmax-cross-entropy gradient S p - t with targets t = -c.
    expected = ref.softmax_cross_entropy_grad(z, -c, exact_targets=True)
    ref.assert_accurate(grad, expected, dtype, name="grad log_softmax")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_gradient_finite_at_extremes(self, dtype):
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    z = np.array([[big, -big, -np.inf], [-np.inf, 0.0, -big], [0.0, -np.inf, -np.inf]], dtype)
    for j in range(3):
      grad = _jit_grad(
        lambda z, j=j: jnp.sum(_grids.JIT.log_softmax(z)[:, j] * jnp.isfinite(z[:, j]))
      )(z)
      chex.assert_tree_all_finite(grad)

  def test_check_grads_float64(self):
    if not jax.config.jax_enable_x64:
      self.skipTest("float64 needs JAX_ENABLE_X64=1")
    z = np.random.default_rng(8).normal(size=(4, 5)) * 3
    check_grads(_grids.JIT.log_softmax, (z,), order=1, modes=["rev"])
    where = _grids.mask(z.shape, 9)
    check_grads(
      lambda z: jnp.where(where, _grids.JIT.log_softmax(z, where=where), 0),
      (z,),
      order=1,
      modes=["rev"],
    )

  def test_jax_nn_loses_the_dominant_class_we_do_not(self):
    # log p_max of a class winning by 30 nats: jax.nn rounds it to 0 (relative error 1).
    z = np.array([[0.0, -30.0], [0.0, -20.0]], np.float32)
    exact = ref.log_softmax(z)
    theirs = np.asarray(jax.nn.log_softmax(z))
    rel = np.abs(theirs[:, 0] - exact.value[:, 0]) / np.abs(exact.value[:, 0])
    self.assertTrue(np.all(rel > 0.5), rel)
    ref.assert_accurate(_grids.JIT.log_softmax(z), exact, np.float32, name="log_softmax")

  def test_low_precision_computed_in_float32(self):
    z = np.random.default_rng(4).normal(size=(6, 7)) * 10
    for low in (jnp.bfloat16, jnp.float16):
      z_low = jnp.asarray(z, low)
      got = _grids.JIT.log_softmax(z_low)
      self.assertEqual(got.dtype, jnp.float32)
      np.testing.assert_array_equal(got, _grids.JIT.log_softmax(z_low.astype(jnp.float32)))

  def test_no_retracing(self):
    f = jax.jit(chex.assert_max_traces(xj.log_softmax, n=1))
    rng = np.random.default_rng(0)
    for _ in range(3):
      chex.assert_tree_all_finite(f(rng.normal(size=(4, 5)).astype(np.float32)))


class ElementwiseTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params())
  def test_tanh_probability_matches_mpmath(self, dtype):
    x = _grids.elementwise_logits(dtype) / 2
    got = self.variant(xj.tanh_probability)(x)
    self.assertEqual(got.dtype, np.dtype(dtype))
    ref.assert_accurate(got, ref.tanh_probability(x), dtype, name="tanh_probability")

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(fn=("sigmoid", "log_sigmoid")))
  def test_sigmoid_matches_mpmath(self, dtype, fn):
    if not hasattr(xj, fn):
      self.skipTest(f"xent_jax.{fn} is not exported")
    x = _grids.elementwise_logits(dtype)
    got = self.variant(getattr(xj, fn))(x)
    ref.assert_accurate(got, getattr(ref, fn)(x), dtype, name=fn)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_tanh_probability_is_sigmoid_of_2x(self, dtype):
    x = _grids.elementwise_logits(dtype) / 2  # 2x is exact
    # σ(2x) from the reference at the doubled (exact) argument.
    ref.assert_accurate(
      _grids.JIT.tanh_probability(x), ref.sigmoid(2 * x), dtype, name="tanh_probability"
    )
    if hasattr(xj, "sigmoid"):
      np.testing.assert_allclose(
        _grids.JIT.tanh_probability(x),
        _grids.JIT.sigmoid(2 * x),
        rtol=2 * ref.RTOL[np.dtype(dtype)],
        atol=0,
      )

  def test_tanh_probability_gradient(self):
    dtype = _grids.DTYPES[-1]
    x = _grids.elementwise_logits(dtype) / 2
    grad = jax.vmap(_jit_grad(xj.tanh_probability))(x)
    chex.assert_tree_all_finite(grad)
    ref.assert_accurate(grad, ref.tanh_probability_grad(x), dtype, name="grad tanh_probability")


if __name__ == "__main__":
  absltest.main()
