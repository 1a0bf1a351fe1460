"""Tests of E7 ``experiments/model_comparison.py`` against an independent numpy computation.

Held-out cross-entropies, entropies, standard errors and both rankings are recomputed in
numpy float64 from the candidates' parameters; the fitted model against scipy's optimum of
the same objective; Kendall's τ against ``scipy.stats.kendalltau``; the population
cross-entropy against ``scipy.integrate.quad``.
"""

import jax
import numpy as np
from absl.testing import absltest
from scipy import integrate, optimize, stats

from configs import model_comparison as model_comparison_config
from experiments import _common, model_comparison
from tests.experiments import _smoke

jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = jax.config.jax_enable_x64
RTOL = 1e-10 if X64 else 1e-5  # float64 reference vs the experiment's default dtype


def _np_cross_entropy(z, y):
  """H(y, σ(z)) = log(1 + e^z) - y·z, float64."""
  return np.logaddexp(0, z) - y * z


def _np_entropy(z):
  q = 1 / (1 + np.exp(-z))
  return _np_cross_entropy(z, q)


class ModelComparisonExperimentTest(_smoke.SmokeRun):
  experiment = "model_comparison"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    d = cls.config.data
    rng = np.random.default_rng(d.seed)  # the documented sampling recipe, redone here
    x = rng.uniform(d.x_low, d.x_high, d.num_train + d.num_test)
    y = (rng.random(x.shape) < 1 / (1 + np.exp(-x))).astype(float)
    cls.train = x[: d.num_train], y[: d.num_train]
    cls.test = x[d.num_train :], y[d.num_train :]

  def test_held_out_scores_and_rankings_match_numpy(self):
    x, y = self.test
    cands = self.results["candidates"]
    z = np.array([[c["intercept"] + c["slope"] * xi for xi in x] for c in cands])
    ce = _np_cross_entropy(z, y)
    np.testing.assert_allclose(
      [c["held_out_cross_entropy"] for c in cands], ce.mean(1), rtol=10 * RTOL
    )
    np.testing.assert_allclose(
      [c["standard_error"] for c in cands], ce.std(1, ddof=1) / np.sqrt(len(y)), rtol=100 * RTOL
    )
    np.testing.assert_allclose(
      [c["mean_entropy"] for c in cands], _np_entropy(z).mean(1), rtol=10 * RTOL
    )
    names = [c["name"] for c in cands]
    self.assertEqual(
      self.results["ranking_cross_entropy"], [names[i] for i in np.argsort(ce.mean(1))]
    )
    self.assertEqual(
      self.results["ranking_entropy"], [names[i] for i in np.argsort(_np_entropy(z).mean(1))]
    )
    self.assertEqual(self.results["ranking_cross_entropy"][0], "model 1 (true)")
    tau = stats.kendalltau(ce.mean(1), _np_entropy(z).mean(1)).statistic
    self.assertAlmostEqual(self.results["kendall_tau"], tau, places=12)
    margin = self.results["true_model_margin"]
    runner = names.index(margin["runner_up"])
    diff = ce[runner] - ce[0]
    np.testing.assert_allclose(margin["gap"], diff.mean(), rtol=1e3 * RTOL, atol=1e-7)
    np.testing.assert_allclose(
      margin["standard_error"], diff.std(ddof=1) / np.sqrt(len(y)), rtol=1e3 * RTOL
    )

  def test_fitted_candidates_match_their_optima(self):
    x, y = self.train
    objective = lambda p: np.mean(_np_cross_entropy(p[0] + p[1] * x, y))
    optimum = optimize.minimize(objective, [0.0, 0.0], method="BFGS", options={"gtol": 1e-12}).x
    fitted, base = (c for c in self.results["candidates"] if c["name"] in model_comparison.FITTED)
    np.testing.assert_allclose(
      [fitted["intercept"], fitted["slope"]], optimum, atol=1e-7 if X64 else 1e-5
    )
    self.assertAlmostEqual(base["intercept"], np.log(y.mean() / (1 - y.mean())), places=12)
    self.assertEqual(base["slope"], 0.0)

  def test_population_cross_entropy_matches_quadrature(self):
    d = self.config.data
    for c in self.results["candidates"][:2]:
      value, _ = integrate.quad(
        lambda x, c=c: _np_cross_entropy(c["intercept"] + c["slope"] * x, 1 / (1 + np.exp(-x))),
        d.x_low,
        d.x_high,
        epsabs=0,
        epsrel=1e-12,
      )
      np.testing.assert_allclose(
        c["population_cross_entropy"], value / (d.x_high - d.x_low), rtol=1e-5
      )
    true = self.results["candidates"][0]
    np.testing.assert_allclose(true["population_kl_from_true"], 0.0, atol=1e-6)

  def test_kendall_tau(self):
    self.assertEqual(model_comparison.kendall_tau([1, 2, 3], [4, 5, 6]), 1.0)
    self.assertEqual(model_comparison.kendall_tau([1, 2, 3], [6, 5, 4]), -1.0)
    u, v = np.random.default_rng(0).normal(size=(2, 9))
    self.assertAlmostEqual(
      model_comparison.kendall_tau(u, v), stats.kendalltau(u, v).statistic, places=12
    )

  def test_claim_verdicts_follow_the_measurements(self):
    claims = {c["id"]: c for c in self.results["claims"]}
    self.assertEqual(claims["2.6-entropy-alone-cannot-rank"]["verdict"], "holds")
    z = self.results["true_model_margin"]["z"]
    self.assertEqual(
      claims["3.2-cross-entropy-compares-models"]["verdict"], "holds" if z > 2 else "partly"
    )

  def test_validate_rejects_bad_configs(self):
    for flat, message in (
      ({"true_model": 3}, "true_model"),
      ({"slopes": (1.0, 2.0)}, "length"),
      ({"data.x_low": 6.0}, "x_low"),
      ({"fit.learning_rate": 0.0}, "fit.learning_rate"),
    ):
      config = model_comparison_config.get_config("smoke")
      config.update_from_flattened_dict(flat)
      with self.assertRaisesRegex(_common.ConfigError, message):
        model_comparison.validate(config)


if __name__ == "__main__":
  absltest.main()
