"""Tests of E4 ``experiments/gradient_check.py`` against an independent numpy float64 computation.

The gradients of the mean binary cross-entropy, of the seed's §4.1 loss and of the softmax
cross-entropy are recomputed here from their definitions by central finite differences of
numpy float64 losses (no JAX, no closed form), and compared with the experiment's numbers.
"""

import jax
import numpy as np
from absl.testing import absltest

from experiments import _common, gradient_check
from tests.experiments import _smoke

jax.config.update("jax_numpy_rank_promotion", "raise")


def _np_bce(w, b, x, y):
  z = x @ w + b
  return np.mean(np.logaddexp(0, z) - y * z)


def _np_seed_loss(w, b, x, y):
  return np.mean(y * np.logaddexp(0, -(x @ w + b)))


def _np_softmax_ce(w, b, x, y):
  z = x @ w + b
  z = z - z.max(axis=1, keepdims=True)
  return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y])


def _finite_difference_grad(loss, w, b, h=1e-6):
  """Central differences of loss(w, b) in float64, flattened as [w, b]."""
  theta = np.concatenate([np.ravel(w), np.ravel(b)])

  def f(t):
    return loss(t[: w.size].reshape(w.shape), t[w.size :].reshape(np.shape(b)))

  grad = np.empty_like(theta)
  for i in range(theta.size):
    step = np.zeros_like(theta)
    step[i] = h
    grad[i] = (f(theta + step) - f(theta - step)) / (2 * h)
  return grad


class GradientCheckExperimentTest(_smoke.SmokeRun):
  experiment = "gradient_check"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.problem = gradient_check.random_problem(cls.config)

  def _finite_differences(self, loss, model, y_key, scale):
    p = self.problem
    return _finite_difference_grad(
      lambda w, b: loss(w, b, p["x_NxD"], p[y_key]),
      scale * p[model]["w"],
      scale * np.asarray(p[model]["b"]),
    )

  def test_float64_gradients_match_finite_differences(self):
    for scale in self.config.param_scales:
      expected = {
        "logistic": self._finite_differences(_np_bce, "logistic", "y_binary_N", scale),
        "softmax": self._finite_differences(_np_softmax_ce, "softmax", "y_class_N", scale),
      }
      for model in ("logistic", "softmax"):
        grads = gradient_check._gradients(self.problem, model, scale, "float64")
        for kind in ("library_autodiff", "plain_autodiff", "closed_form"):
          np.testing.assert_allclose(
            grads[kind],
            expected[model],
            rtol=1e-6,
            atol=1e-8,
            err_msg=f"{model} {kind} at scale {scale}",
          )

  def test_seed_loss_discrepancy_matches_finite_differences(self):
    rows = self.results["seed_4_1_loss"]["float64"]["by_scale"]
    for row in rows:
      scale = row["scale"]
      seed = self._finite_differences(_np_seed_loss, "logistic", "y_binary_N", scale)
      formula = self._finite_differences(_np_bce, "logistic", "y_binary_N", scale)
      discrepancy = np.max(np.abs(seed - formula)) / np.max(np.abs(formula))
      np.testing.assert_allclose(row["rel_discrepancy_vs_4_2_formula"], discrepancy, rtol=1e-5)
      self.assertGreater(row["rel_discrepancy_vs_4_2_formula"], 1e-3)  # far above rounding

  def test_reported_gradient_errors_are_within_rounding(self):
    for model in ("logistic", "softmax"):
      for dtype in gradient_check.DTYPES:
        tol = self.results["tolerance"][dtype]["gradient"]
        self.assertLessEqual(
          self.results["gradients"][model][dtype]["max_rel_error_autodiff_vs_closed_form"], tol
        )
        for row in self.results["gradients"][model][dtype]["by_scale"]:
          # Each float32 gradient is a float64 one rounded: a few ulps of its norm.
          self.assertLessEqual(row["rel_error_plain_autodiff_vs_float64"], tol)

  def test_sigmoid_derivative_and_where_the_literal_form_fails(self):
    for dtype, (lo, hi) in (("float32", (10.0, 17.0)), ("float64", (28.0, 38.0))):
      sd = self.results["sigmoid_derivative"][dtype]
      eps = np.finfo(dtype).eps
      self.assertLessEqual(sd["max_rel_error_autodiff_vs_reference"], 8 * eps)
      # 1 - σ(z) has relative error ≈ eps·e^z / 2: above 1% from z ≈ log(0.02/eps).
      self.assertBetween(sd["literal_error_above_1pct_for_z_from"], lo, hi)
      self.assertEqual(sd["max_rel_error_literal_vs_reference"], 1.0)

  def test_sigmoid_derivative_reference_is_the_derivative(self):
    sigma = lambda t: 0.5 * (1 + np.tanh(t / 2))  # another formula for σ
    z, h = np.linspace(-10, 10, 81), 1e-5
    np.testing.assert_allclose(
      gradient_check.sigmoid_derivative_reference(z),
      (sigma(z + h) - sigma(z - h)) / (2 * h),
      rtol=1e-6,
    )
    z = np.linspace(-30, 30, 121)  # the tails: σ(z)σ(-z), 1/(1 + e^{-t}) has no cancellation
    logistic = lambda t: 1 / (1 + np.exp(-t))
    np.testing.assert_allclose(
      gradient_check.sigmoid_derivative_reference(z), logistic(z) * logistic(-z), rtol=1e-13
    )

  def test_check_grads_and_verdicts(self):
    cg = self.results["check_grads"]
    self.assertEqual(cg["passed"], {"logistic": True, "softmax": True})
    verdicts = {c["id"]: c["verdict"] for c in self.results["claims"]}
    self.assertEqual(
      verdicts,
      {
        "4.2-sigmoid-derivative": "holds",
        "4.2-gradient-binary-cross-entropy": "holds",
        "4.2-gradient-softmax-cross-entropy": "holds",
        "4.1-4.2-gradient-of-the-stated-loss": "fails",
      },
    )

  def test_config_errors(self):
    config = _common.load_config("gradient_check", "smoke")
    config.unlock()
    config.param_scales = ()
    with self.assertRaisesRegex(_common.ConfigError, "param_scales"):
      gradient_check.validate(config)


if __name__ == "__main__":
  absltest.main()
