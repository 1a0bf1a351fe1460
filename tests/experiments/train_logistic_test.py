"""Tests of E5 ``experiments/train_logistic.py`` against scikit-learn, scipy and numpy float64.

The reference optima are recomputed with scikit-learn's ``LogisticRegression`` (which
minimises C·Σ CE + ½‖w‖², i.e. mean CE + (λ/2)‖w‖² with C = 1/(λ·n)); accuracies, losses
and the §4.1-loss predictions are recomputed in numpy from the saved parameters; whether
the origin lies in the convex hull of the positive examples is decided by a scipy linear
programme, and the limit direction by scipy's SLSQP on the hard-margin problem.
"""

import jax
import numpy as np
from absl.testing import absltest
from scipy import optimize
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from experiments import _common, train_logistic
from tests.experiments import _smoke

jax.config.update("jax_numpy_rank_promotion", "raise")

RTOL = 1e-6  # SPEC §3


def _np_objective(params, x, y, l2):
  w, b = np.asarray(params["w"], np.float64), float(params["b"])
  z = np.asarray(x, np.float64) @ w + b
  return np.mean(np.logaddexp(0, z) - np.asarray(y, np.float64) * z) + 0.5 * l2 * w @ w


def _sklearn_objective(x, y, l2):
  x, y = np.asarray(x, np.float64), np.asarray(y)
  penalty = {"C": 1 / (l2 * len(y)) if l2 > 0 else np.inf}
  with threadpool_limits(1, user_api="blas"):  # BLAS threads only slow a small problem
    clf = LogisticRegression(tol=1e-12, max_iter=10_000, **penalty).fit(x, y)
  return _np_objective({"w": clf.coef_[0], "b": clf.intercept_[0]}, x, y, l2)


def _np_accuracy(params, batch):
  z = np.asarray(batch.x, np.float64) @ np.asarray(params["w"], np.float64) + params["b"]
  return np.mean((z > 0) == (np.asarray(batch.y) == 1)), np.mean(z > 0)


def _hard_margin_direction(train):
  """argmin ‖u‖² s.t. u·(x_i, 1) ≥ 1 on the positives (scipy SLSQP), normalised."""
  x_pos = np.asarray(train.x, np.float64)[np.asarray(train.y) == 1]
  a = np.concatenate([x_pos, np.ones((len(x_pos), 1))], axis=1)
  u0 = np.zeros(a.shape[1])
  u0[-1] = 1.0  # feasible: the pure bias
  result = optimize.minimize(
    lambda u: u @ u,
    u0,
    jac=lambda u: 2 * u,
    method="SLSQP",
    constraints={"type": "ineq", "fun": lambda u: a @ u - 1, "jac": lambda u: a},
    options={"maxiter": 500, "ftol": 1e-14},
  )
  return result.x / np.linalg.norm(result.x)


class TrainLogisticExperimentTest(_smoke.SmokeRun):
  experiment = "train_logistic"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = train_logistic._datasets(cls.config)

  def test_training_reaches_the_sklearn_optimum(self):
    for name, l2 in (("synthetic", 0.0), ("breast_cancer", self.config.breast_cancer.l2)):
      run, train = self.results[name], self.data[name].train
      reference = _sklearn_objective(*train, l2)
      np.testing.assert_allclose(run["reference_objective"], reference, rtol=1e-9)
      value = _np_objective(run["final_params"], *train, l2)
      np.testing.assert_allclose(run["final_objective"], value, rtol=1e-12)
      self.assertLessEqual((value - reference) / reference, RTOL, msg=name)
      self.assertLessEqual(run["steps_to_rtol"], run["num_steps"])

  def test_accuracies_from_the_saved_parameters(self):
    for name in ("synthetic", "breast_cancer"):
      run = self.results[name]
      for split in ("train", "test"):
        accuracy, positive = _np_accuracy(run["final_params"], getattr(self.data[name], split))
        self.assertAlmostEqual(run[split]["accuracy"], accuracy, places=12)
        self.assertAlmostEqual(run[split]["predicted_positive"], positive, places=12)
    self.assertGreater(self.results["breast_cancer"]["test"]["accuracy"], 0.9)

  def test_unpenalised_separable_run_diverges(self):
    run = self.results["breast_cancer_unpenalised"]
    norms = np.asarray(run["checkpoints"]["w_norm"])
    losses = np.asarray(run["checkpoints"]["loss"])
    half = len(norms) // 2
    self.assertTrue(np.all(np.diff(norms[half:]) > 0))  # still growing at the end
    self.assertTrue(np.all(np.diff(losses[half:]) < 0))  # still falling
    np.testing.assert_allclose(
      run["final_loss"],
      _np_objective(run["final_params"], *self.data["breast_cancer"].train, 0.0),
      rtol=1e-12,
    )
    np.testing.assert_allclose(
      run["final_w_norm"], np.linalg.norm(run["final_params"]["w"]), rtol=1e-12
    )

  def _origin_in_hull(self, x, y):
    """LP feasibility: λ ≥ 0, Σ λ = 1, Σ λ_i x_i = 0 over the positive examples."""
    x_pos = np.asarray(x, np.float64)[np.asarray(y) == 1]
    a_eq = np.vstack([x_pos.T, np.ones(len(x_pos))])
    b_eq = np.concatenate([np.zeros(x_pos.shape[1]), [1.0]])
    return (
      optimize.linprog(np.zeros(len(x_pos)), A_eq=a_eq, b_eq=b_eq, bounds=(0, None)).status == 0
    )

  def test_seed_loss_limit_against_an_lp_and_slsqp(self):
    for name in ("synthetic", "breast_cancer"):
      run, train = self.results["seed_loss"][name], self.data[name].train
      self.assertEqual(run["limit"]["origin_in_hull"], self._origin_in_hull(*train), msg=name)
      expected = _hard_margin_direction(train)
      direction = np.concatenate([run["limit"]["direction"]["w"], [run["limit"]["direction"]["b"]]])
      np.testing.assert_allclose(direction, expected, atol=1e-5, err_msg=name)

  def test_seed_loss_predictions_from_the_saved_parameters(self):
    syn = self.results["seed_loss"]["synthetic"]
    accuracy, positive = _np_accuracy(syn["final_params"], self.data["synthetic"].train)
    self.assertEqual(positive, 1.0)  # every example predicted positive
    self.assertAlmostEqual(accuracy, syn["train_positive_rate"], places=12)
    self.assertTrue(syn["limit"]["origin_in_hull"])
    for name, run in self.results["seed_loss"].items():
      self.assertGreater(run["final_b"], 5.0, msg=name)  # b → +∞
      self.assertLess(run["final_loss"], 1e-3, msg=name)  # loss → 0

  def test_verdicts(self):
    verdicts = {c["id"]: c["verdict"] for c in self.results["claims"]}
    self.assertEqual(
      verdicts,
      {
        "4.2-gradient-descent-optimises": "partly",
        "4.1-loss-trains-the-classifier": "fails",
        "5-cross-entropy-trains-classifiers": "holds",
      },
    )

  def test_config_errors(self):
    config = _common.load_config("train_logistic", "smoke")
    config.unlock()
    config.seed_loss_num_steps = config.num_checkpoints + 1
    with self.assertRaisesRegex(_common.ConfigError, "multiple of"):
      train_logistic.validate(config)
    config = _common.load_config("train_logistic", "smoke")
    config.unlock()
    config.breast_cancer.l2 = 0.0
    with self.assertRaisesRegex(_common.ConfigError, "breast_cancer.l2"):
      train_logistic.validate(config)


if __name__ == "__main__":
  absltest.main()
