"""Tests for xent_jax.fit: L-BFGS reaches the independent float64 optimum (xent_jax.optimum)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from xent_jax import data, fit, optimum

jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = jax.config.jax_enable_x64
# The objective is evaluated in float64 at the returned parameters: the gap to the float64
# optimum reflects how far the iteration went, not the float32 round-off of J.
GAP_RTOL = 1e-7


def _logistic_problem(seed, num_examples, num_features, dtype=np.float32, bias=0.5):
  """Labels from a known logistic model (non-separable), features N(0, 1) in ``dtype``."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=num_features) / np.sqrt(num_features)
  x = rng.normal(size=(num_examples, num_features)).astype(dtype)
  p = 1 / (1 + np.exp(-(x.astype(np.float64) @ w + bias)))
  return x, (rng.random(num_examples) < p).astype(np.int32)


def _gap(result, x, y, l2, reference):
  value = optimum.logistic_regression_objective(result.params, x, y, l2=l2)
  return (value - reference.value) / reference.value


class FitLogisticRegressionTest(chex.TestCase):
  @parameterized.named_parameters(
    ("unpenalised", 0.0, 3000),
    ("l2", 1e-2, 3000),
    ("warm_started", 0.0, 40000),
    ("warm_started_l2", 1e-3, 40000),
  )
  def test_reaches_the_float64_optimum(self, l2, num_examples):
    x, y = _logistic_problem(0, num_examples, 12)
    reference = optimum.logistic_regression_optimum(x, y, l2=l2)
    result = fit.fit_logistic_regression(x, y, l2=l2, warm_start=16384)
    self.assertTrue(result.converged)
    gap = _gap(result, x, y, l2, reference)
    self.assertGreaterEqual(gap, -1e-12)  # J* is the minimum
    self.assertLessEqual(gap, GAP_RTOL)
    np.testing.assert_allclose(result.params["w"], reference.params["w"], atol=2e-3)
    self.assertGreaterEqual(result.num_gradients, result.num_iterations + 1)
    self.assertLessEqual(result.gap_estimate, 1e-9)

  def test_features_of_any_scale_reach_the_optimum(self):
    # J(w/s, b) on s·X is J(w, b) on X (λ = 0): the same optimum value at every scale s.
    # (With an unscaled first guess of the curvature, s = 1e-4 stopped at once, "converged"
    # 6% above it, and s = 1e4 2% above it.)
    x, y = _logistic_problem(4, 5000, 8)
    reference = optimum.logistic_regression_optimum(x, y)
    for scale in (1e-4, 1e4):
      result = fit.fit_logistic_regression(x * np.float32(scale), y)
      self.assertTrue(result.converged)
      value = optimum.logistic_regression_objective(result.params, x * np.float32(scale), y)
      self.assertBetween((value - reference.value) / reference.value, -1e-9, GAP_RTOL)

  def test_uncentred_features_reach_the_optimum(self):
    # J(w, b) on X + c is J(w, b + c·Σw) on X: the same optimum value. Features on a grid
    # of 2^-10, so that X + 1000 is exact in float32 too. (Uncentred, the fit stopped
    # "converged" 1.3e-3 above it: each weight was tied to the bias.)
    x, y = _logistic_problem(5, 2000, 8)
    x = np.round(x * 1024) / np.float32(1024)
    reference = optimum.logistic_regression_optimum(x, y, l2=1e-3)
    result = fit.fit_logistic_regression(x + np.float32(1000), y, l2=1e-3)
    self.assertTrue(result.converged)
    value = optimum.logistic_regression_objective(result.params, x + np.float32(1000), y, l2=1e-3)
    self.assertBetween((value - reference.value) / reference.value, -1e-9, GAP_RTOL)
    np.testing.assert_allclose(result.params["w"], reference.params["w"], atol=2e-3)

  def test_misaligned_numpy_rows_equal_an_aligned_copy(self):
    # A float32 array whose data starts 4 bytes past a 64-byte boundary: the first rows are
    # split off and summed on the host, the rest is read in place by XLA.
    x, y = _logistic_problem(1, 2001, 7)
    buffer = np.empty(x.size + 32, np.float32)
    start = (-buffer.ctypes.data % 64) // 4 + 1
    shifted = buffer[start : start + x.size].reshape(x.shape)
    shifted[...] = x
    self.assertNotEqual(shifted.ctypes.data % 64, 0)
    self.assertGreater(fit._aligned_split(shifted), 0)
    a = fit.fit_logistic_regression(shifted, y)
    b = fit.fit_logistic_regression(jnp.asarray(x), y)  # a JAX array: nothing split off
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-4, atol=1e-5)
    self.assertEqual(a.num_iterations, b.num_iterations)

  def test_integer_features_as_numpy_or_jax(self):
    # Integer features are converted like numpy's (a JAX int32 X once failed in the
    # compiled gradient, after validation).
    x, y = _logistic_problem(5, 400, 3)
    x = np.round(4 * x).astype(np.int32)
    want = fit.fit_logistic_regression(x.astype(np.float32), y)
    for given in (x, jnp.asarray(x)):
      got = fit.fit_logistic_regression(given, y)
      np.testing.assert_allclose(got.params["w"], want.params["w"], rtol=1e-6)

  def test_gradient_sums_equal_float64(self):
    x, y = _logistic_problem(2, 500, 4)
    theta = np.array([0.3, -0.2, 0.1, 0.5, -0.7])
    got = fit._gradient_sums(jnp.asarray(theta, x.dtype), jnp.asarray(x), jnp.asarray(y, x.dtype))
    want = fit._host_gradient_sums(theta, x.astype(np.float64), y.astype(np.float64))
    z = x.astype(np.float64) @ theta[:-1] + theta[-1]
    r = 1 / (1 + np.exp(-z)) - y
    np.testing.assert_allclose(want, np.append(r @ x, r.sum()), rtol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-12 if X64 else 1e-4, atol=1e-3)

  def test_separable_data_stop_near_the_infimum(self):
    # No minimiser: J → 0 as w → ∞. The fit stops once L-BFGS's estimate of J - 0 is below
    # tol; that estimate is optimistic on such data (fit's docstring), so J is only bounded
    # loosely here.
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]], np.float32)
    y = np.array([0, 0, 1, 1])
    result = fit.fit_logistic_regression(x, y, tol=1e-6)
    self.assertTrue(result.converged)
    self.assertGreater(float(result.params["w"][0]), 3.0)
    self.assertLess(optimum.logistic_regression_objective(result.params, x, y), 1e-4)

  def test_bad_inputs_raise_naming_the_argument(self):
    x, y = _logistic_problem(3, 10, 2)
    with self.assertRaisesRegex(ValueError, "`x_NxD`"):
      fit.fit_logistic_regression(x[:, 0], y)
    with self.assertRaisesRegex(ValueError, "`y_N`"):
      fit.fit_logistic_regression(x, y[:5])
    with self.assertRaisesRegex(ValueError, r"`y_N` must lie in \[0, 1\]"):
      fit.fit_logistic_regression(x, y + 1)
    with self.assertRaisesRegex(ValueError, "`l2`"):
      fit.fit_logistic_regression(x, y, l2=-1.0)


class FitSoftmaxRegressionTest(chex.TestCase):
  @parameterized.named_parameters(
    ("digits_l2", "digits", 1e-2),
    ("synthetic_unpenalised", "synthetic", 0.0),  # not separable: the optimum exists
  )
  def test_reaches_the_float64_optimum(self, dataset, l2):
    if dataset == "digits":
      x, y = data.load_digits().train
    else:
      x, y = data.make_softmax_data(0, 3000, 10, 5, 4).train
    k = int(np.max(y)) + 1
    reference = optimum.softmax_regression_optimum(x, y, k, l2=l2)
    result = fit.fit_softmax_regression(x, y, l2=l2)
    self.assertTrue(result.converged)
    chex.assert_shape([result.params["w"], result.params["b"]], [(x.shape[1], k), (k,)])
    value = optimum.softmax_regression_objective(result.params, x, y, l2=l2)
    gap = (value - reference.value) / reference.value
    self.assertBetween(gap, -1e-12, 1e-6)  # SPEC §3: within 1e-6 (relative) of the optimum
    if l2:  # W is unique when λ > 0; b only up to a common shift
      np.testing.assert_allclose(result.params["w"], reference.params["w"], atol=2e-3)

  def test_features_of_any_scale_reach_the_optimum(self):
    x, y = data.make_softmax_data(0, 3000, 10, 5, 4).train
    x = np.asarray(x, np.float64)
    reference = optimum.softmax_regression_optimum(x, y, 5)
    for scale in (1e-4, 1e4):
      result = fit.fit_softmax_regression(x * scale, y, 5)
      self.assertTrue(result.converged)
      value = optimum.softmax_regression_objective(result.params, x * scale, y)
      self.assertBetween((value - reference.value) / reference.value, -1e-9, 1e-6)

  def test_uncentred_features_reach_the_optimum(self):
    # As for the logistic fit: an offset moves only b. (Uncentred by 100, the fit ran out
    # of its 500 steps 5.6e-5 above the optimum.)
    x, y = data.make_softmax_data(0, 3000, 10, 5, 4).train
    x = np.round(np.asarray(x) * 1024) / np.float32(1024)
    reference = optimum.softmax_regression_optimum(x, y, 5, l2=1e-3)
    result = fit.fit_softmax_regression(x + np.float32(100), y, 5, l2=1e-3)
    self.assertTrue(result.converged)
    value = optimum.softmax_regression_objective(result.params, x + np.float32(100), y, l2=1e-3)
    self.assertBetween((value - reference.value) / reference.value, -1e-9, 1e-6)

  def test_bad_inputs_raise_naming_the_argument(self):
    x, y = np.ones((4, 2)), np.array([0, 1, 2, 1])
    with self.assertRaisesRegex(ValueError, r"`y_N` must be a class label in \[0, 2\)"):
      fit.fit_softmax_regression(x, y, num_classes=2)
    with self.assertRaisesRegex(TypeError, "`y_N` must hold integer class labels"):
      fit.fit_softmax_regression(x, y.astype(float))


if __name__ == "__main__":
  absltest.main()
