"""Tests of E6 ``experiments/softmax_regression.py`` against scikit-learn and numpy float64.

The penalised optimum is recomputed with scikit-learn's multinomial ``LogisticRegression``
(C = 1/(λ·n): it minimises C·Σ CE + ½‖W‖², the intercept unpenalised); accuracies and the
entropies of the held-out predictions are recomputed in numpy from the saved parameters.
"""

import csv

import jax
import numpy as np
from absl.testing import absltest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from experiments import _common, softmax_regression
from tests.experiments import _smoke
from xent_jax import data

jax.config.update("jax_numpy_rank_promotion", "raise")


def _np_log_softmax(params, x):
  z = np.asarray(x, np.float64) @ np.asarray(params["w"]) + np.asarray(params["b"])
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _np_objective(params, x, y, l2):
  log_p = _np_log_softmax(params, x)
  w = np.asarray(params["w"], np.float64)
  return -np.mean(log_p[np.arange(len(y)), np.asarray(y)]) + 0.5 * l2 * np.sum(w * w)


class SoftmaxRegressionExperimentTest(_smoke.SmokeRun):
  experiment = "softmax_regression"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.digits = data.load_digits(
      test_fraction=cls.config.test_fraction, seed=cls.config.split_seed
    )

  def test_training_reaches_the_sklearn_optimum(self):
    x, y = (np.asarray(a) for a in self.digits.train)
    l2 = self.config.l2
    with threadpool_limits(1, user_api="blas"):  # BLAS threads only slow a small problem
      clf = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-12, max_iter=10_000).fit(
        x.astype(np.float64), y
      )
    reference = _np_objective({"w": clf.coef_.T, "b": clf.intercept_}, x, y, l2)
    np.testing.assert_allclose(self.results["reference_objective"], reference, rtol=1e-8)
    value = _np_objective(self.results["final_params"], x, y, l2)
    np.testing.assert_allclose(self.results["final_objective"], value, rtol=1e-12)
    self.assertLessEqual((value - reference) / reference, 1e-6)

  def test_accuracies_from_the_saved_parameters(self):
    params = self.results["final_params"]
    for split in ("train", "test"):
      batch = getattr(self.digits, split)
      accuracy = np.mean(np.argmax(_np_log_softmax(params, batch.x), axis=1) == np.asarray(batch.y))
      self.assertAlmostEqual(self.results[f"{split}_accuracy"], accuracy, places=12)
    self.assertGreater(self.results["test_accuracy"], 0.9)

  def test_entropies_of_the_held_out_predictions(self):
    log_p = _np_log_softmax(self.results["final_params"], self.digits.test.x)
    entropy = -np.sum(np.exp(log_p) * log_p, axis=1)
    after = self.results["entropy_after"]
    rtol = 1e-12 if jax.config.jax_enable_x64 else 1e-5
    np.testing.assert_allclose(after["mean"], entropy.mean(), rtol=rtol)
    np.testing.assert_allclose(after["max"], entropy.max(), rtol=rtol)
    self.assertEqual(sum(after["histogram"]["counts"]), len(entropy))
    rho = stats.spearmanr(entropy, np.exp(log_p).max(axis=1)).statistic
    np.testing.assert_allclose(after["spearman_vs_max_probability"], rho, atol=1e-3)
    correct = np.argmax(log_p, axis=1) == np.asarray(self.digits.test.y)
    np.testing.assert_allclose(after["mean_wrong"], entropy[~correct].mean(), rtol=rtol)
    # Before training W = 0: every prediction is uniform, H = log K, all in the last bin
    # (float32 can round H an ulp above log K: the histogram still counts every example).
    before = self.results["entropy_before"]
    np.testing.assert_allclose(before["mean"], np.log(10), rtol=rtol)
    self.assertEqual(before["histogram"]["counts"][-1], len(entropy))
    self.assertGreaterEqual(before["histogram"]["edges"][-1], before["max"])

  def test_per_step_metrics_file(self):
    with open(f"{self.workdir}/metrics.csv", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r["step"] for r in rows], [str(t) for t in range(self.config.num_steps)])
    self.assertEqual({r["run"] for r in rows}, {"digits"})
    # Step 0 is W = 0: the loss is log K exactly (uniform predictions, no penalty).
    self.assertAlmostEqual(float(rows[0]["loss"]), np.log(10), places=5)
    self.assertLess(float(rows[-1]["loss"]), float(rows[0]["loss"]) / 2)

  def test_verdicts(self):
    verdicts = {c["id"]: c["verdict"] for c in self.results["claims"]}
    self.assertEqual(
      verdicts,
      {
        "2.2-softmax-outputs-a-distribution": "holds",
        "2.3-concentrated-means-low-entropy": "holds",
        "4.2-gradient-descent-optimises-softmax": "holds",
      },
    )

  def test_config_errors(self):
    config = _common.load_config("softmax_regression", "smoke")
    config.unlock()
    config.learning_rate = -1.0
    with self.assertRaisesRegex(_common.ConfigError, "learning_rate"):
      softmax_regression.validate(config)


if __name__ == "__main__":
  absltest.main()
