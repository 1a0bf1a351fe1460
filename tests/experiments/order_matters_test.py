"""Tests of E3 ``experiments/order_matters.py`` against independent float64 computations.

The reversed gradient against central finite differences of a numpy formula, the
gradient-flow times against ``scipy.integrate.quad``, and both training runs against a numpy
float64 replay of full-batch gradient descent with hand-written gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from scipy import integrate

from configs import order_matters as order_matters_config
from experiments import _common, order_matters
from tests.experiments import _smoke

jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = jax.config.jax_enable_x64
RTOL = 1e-9 if X64 else 1e-4  # float64 reference vs the experiment's default dtype


def _np_sigmoid(z):
  return 0.5 * (1 + np.tanh(0.5 * z))


def _np_reversed_loss(z, y):
  """H(σ(z), y) = -q log y - (1 - q) log(1 - y), float64."""
  q = _np_sigmoid(z)
  return -q * np.log(y) - (1 - q) * np.log(1 - y)


def _np_correct_loss(z, y):
  """H(y, σ(z)), float64 (moderate z only)."""
  q = _np_sigmoid(z)
  return -y * np.log(q) - (1 - y) * np.log(1 - q)


def _np_data(seed, num_train, num_test, num_features, weight_scale, bias):
  """The documented recipe: x ~ N(0, I), w* uniform on the sphere of radius s, y ~ Bernoulli."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(num_features)
  w *= weight_scale / np.linalg.norm(w)
  x = rng.standard_normal((num_train + num_test, num_features))
  y = (rng.random(num_train + num_test) < 1 / (1 + np.exp(-(x @ w + bias)))).astype(float)
  return x[:num_train], y[:num_train], x[num_train:], y[num_train:], w, bias


def _replay(config):
  """Full-batch GD on both losses in numpy float64; per-step held-out accuracy and CE."""
  f64 = lambda a: np.asarray(a, np.float32 if not X64 else np.float64).astype(np.float64)
  x, y, x_test, y_test, w_true, b_true = _np_data(**config.data)
  x, x_test, w_true = f64(x), f64(x_test), f64(w_true)  # the experiment's rounded inputs
  eps = config.label_smoothing
  y_eps = (1 - eps) * y + eps / 2
  logit_y = np.log(y_eps / (1 - y_eps))
  curves = {}
  for name in order_matters.LOSSES:
    w, b = -config.init_scale * w_true, -config.init_scale * b_true
    acc, ce = [], []
    for _ in range(config.num_steps + 1):
      z_test = x_test @ w + b
      acc.append(np.mean((z_test > 0) == (y_test == 1)))
      ce.append(np.mean(np.logaddexp(0, z_test) - y_test * z_test))
      z = x @ w + b
      q = _np_sigmoid(z)
      dz = q - y_eps if name == order_matters.LOSSES[0] else -q * (1 - q) * logit_y
      w, b = w - config.learning_rate * dz @ x / len(z), b - config.learning_rate * dz.mean()
    curves[name] = (np.asarray(acc), np.asarray(ce))
  return curves


@jax.jit
def _closed_form_grads(z, y):
  return order_matters.correct_grad(z, y), order_matters.reversed_grad(z, y)


@jax.jit
def _autodiff_reversed_grad(z, y):
  """d/dz of the experiment's mean reversed loss for one example with logit z (w = 1, x = z)."""
  params = {"w": jnp.ones(1, z.dtype), "b": jnp.zeros((), z.dtype)}
  loss = lambda z: order_matters.reversed_loss(params, z[None, None], jnp.full((1,), y, z.dtype))
  return jax.vmap(jax.grad(loss))(z)


class OrderMattersExperimentTest(_smoke.SmokeRun):
  experiment = "order_matters"

  @parameterized.parameters(0.05, 0.3, 0.95)
  def test_reversed_grad_matches_finite_differences(self, y):
    z = np.linspace(-15.0, 15.0, 61)
    h = 1e-5
    fd = (_np_reversed_loss(z + h, y) - _np_reversed_loss(z - h, y)) / (2 * h)
    np.testing.assert_allclose(_closed_form_grads(z, y)[1], fd, rtol=10 * RTOL + 1e-6, atol=1e-9)
    # jax.grad of the library's reversed loss agrees where σ(z) is not rounded to 0 or 1.
    z_in = np.linspace(-15.0, 15.0 if X64 else 12.0, 61)
    fd = (_np_reversed_loss(z_in + h, y) - _np_reversed_loss(z_in - h, y)) / (2 * h)
    np.testing.assert_allclose(
      _autodiff_reversed_grad(z_in, y), fd, rtol=10 * RTOL + 1e-6, atol=1e-9
    )

  def test_correct_grad_matches_finite_differences(self):
    z, y, h = np.linspace(-10.0, 10.0, 41), 0.95, 1e-5
    fd = (_np_correct_loss(z + h, y) - _np_correct_loss(z - h, y)) / (2 * h)
    np.testing.assert_allclose(_closed_form_grads(z, y)[0], fd, rtol=10 * RTOL + 1e-6, atol=1e-9)

  def test_per_example_numbers(self):
    pe, eps = self.results["per_example"], self.config.label_smoothing
    y = 1 - eps / 2
    logit_y = np.log(y / (1 - y))
    g = self.config.logit_grid
    spacing = (g.stop - g.start) / (g.num - 1)
    self.assertAlmostEqual(pe["logit_of_smoothed_label"], logit_y, places=12)
    self.assertLessEqual(abs(pe["directions_disagree_from_z"] - logit_y), spacing + 1e-6)
    self.assertEqual(pe["directions_disagree_on_wrong_predictions_fraction"], 0.0)
    self.assertTrue(pe["directions_agree_everywhere_below"])
    self.assertLess(pe["autodiff_vs_closed_form_max_rel_error"]["reversed"], 1e3 * RTOL)
    z0 = self.config.confident_logit
    q = _np_sigmoid(-z0)
    ratio = q * (1 - q) * logit_y / (y - q)
    np.testing.assert_allclose(
      pe["grad_ratio_reversed_over_correct_at_minus_z0"], ratio, rtol=10 * RTOL
    )
    # Reversed gradient at q = y_ε: not zero, -y(1 - y)·logit(y).
    np.testing.assert_allclose(
      pe["reversed_grad_at_smoothed_label"], -y * (1 - y) * logit_y, rtol=10 * RTOL
    )

  def test_flip_times_match_quadrature(self):
    pe, z0 = self.results["per_example"], self.config.confident_logit
    y = 1 - self.config.label_smoothing / 2
    logit_y = np.log(y / (1 - y))
    rev, _ = integrate.quad(
      lambda z: 1 / (_np_sigmoid(z) * _np_sigmoid(-z) * logit_y), -z0, 0, epsabs=0, epsrel=1e-12
    )
    cor, _ = integrate.quad(lambda z: 1 / (y - _np_sigmoid(z)), -z0, 0, epsabs=0, epsrel=1e-12)
    np.testing.assert_allclose(pe["flip_time_minus_z0_to_0"]["reversed"], rev, rtol=1e-10)
    np.testing.assert_allclose(pe["flip_time_minus_z0_to_0"]["correct"], cor, rtol=1e-8)

  def test_hard_labels_make_the_reversed_loss_infinite(self):
    hard = self.results["hard_labels"]
    for y in (0, 1):
      self.assertEqual(hard[f"reversed_loss_inf_fraction_where_q_in_(0,1)_y={y}"], 1.0)
      self.assertEqual(hard[f"reversed_grad_nonfinite_fraction_where_q_in_(0,1)_y={y}"], 1.0)
    self.assertTrue(hard["correct_loss_all_finite"])
    self.assertEqual(self.results["training"]["hard_label_reversed_training_loss"], "inf")
    with np.errstate(divide="ignore"):
      self.assertTrue(np.isinf(_np_reversed_loss(0.3, np.float64(1.0))))

  def test_training_matches_numpy_replay(self):
    problem = order_matters.make_data(**self.config.data)
    x, y, _, y_test, w, _ = _np_data(**self.config.data)
    np.testing.assert_allclose(problem.x_train, x, rtol=RTOL)
    np.testing.assert_array_equal(problem.y_train, y)
    np.testing.assert_array_equal(problem.y_test, y_test)
    np.testing.assert_allclose(problem.true_params["w"], w, rtol=RTOL)
    curves = _replay(self.config)
    tr = self.results["training"]
    for name, (acc, ce) in curves.items():
      run = tr["runs"][name]
      steps = run["curves"]["step"]
      self.assertEqual((steps[0], steps[-1]), (0, self.config.num_steps))
      np.testing.assert_allclose(run["curves"]["test_cross_entropy"], ce[steps], rtol=100 * RTOL)
      np.testing.assert_allclose(run["final_test_cross_entropy"], ce[-1], rtol=100 * RTOL)
      hit = np.flatnonzero(acc >= tr["targets"]["test_accuracy"])
      expected = int(hit[0]) if hit.size else None
      if expected is None or run["steps_to_target_accuracy"] is None:
        self.assertEqual(run["steps_to_target_accuracy"], expected)
      else:
        self.assertLessEqual(abs(run["steps_to_target_accuracy"] - expected), 1)
    correct, rev = (tr["runs"][k] for k in order_matters.LOSSES)
    self.assertLess(rev["initial_grad_norm"], 0.1 * correct["initial_grad_norm"])

  def test_claim_verdicts(self):
    verdicts = {c["id"]: c["verdict"] for c in self.results["claims"]}
    self.assertEqual(
      verdicts,
      {
        "3.3-order-cannot-be-swapped": "holds",
        "3.3-wrong-order-wrong-gradient-direction": "partly",
        "3.3-wrong-order-hurts-training": "holds",
      },
    )

  def test_validate_rejects_bad_configs(self):
    for key, value in (
      ("label_smoothing", 0.0),
      ("learning_rate", -1.0),
      ("logit_grid.num", 2),
      ("data.num_train", 1),
    ):
      config = order_matters_config.get_config("smoke")
      config.update_from_flattened_dict({key: value})
      with self.assertRaisesRegex(_common.ConfigError, key):
        order_matters.validate(config)


if __name__ == "__main__":
  absltest.main()
