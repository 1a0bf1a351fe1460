"""Tests of E2 ``experiments/cross_entropy.py`` against an independent float64 computation.

The interval where H(p, q) < H(q) is recomputed here from a numpy formula of H (no xent_jax)
with ``scipy.optimize.brentq``, and checked against the closed form (-1, -1/2) of the module
docstring; the other numbers against numpy on the same grid.
"""

import chex
import jax
import numpy as np
from absl.testing import absltest
from scipy import optimize

from configs import cross_entropy as cross_entropy_config
from experiments import _common, cross_entropy
from tests.experiments import _smoke

jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = jax.config.jax_enable_x64
RTOL = 1e-12 if X64 else 2e-5  # numpy float64 vs the experiment's default dtype


def _np_log_sigmoid(z):
  return np.minimum(z, 0) - np.log1p(np.exp(-np.abs(z)))


def _np_cross_entropy(z_p, z_q):
  """H(σ(z_p), σ(z_q)) = -p log q - (1 - p) log(1 - q), numpy float64."""
  p = np.exp(_np_log_sigmoid(z_p))
  return -p * _np_log_sigmoid(z_q) - (1 - p) * _np_log_sigmoid(-z_q)


def _np_gap(target, model, x):
  """H(p, q) - H(q) in float64 from the definitions (not the derived identity)."""
  z_p, z_q = target[0] + target[1] * x, model[0] + model[1] * x
  return _np_cross_entropy(z_p, z_q) - _np_cross_entropy(z_q, z_q)


def _np_intervals(fn, lo, hi, num=10_001):
  """Where fn < 0 on [lo, hi]: sign changes on a grid refined with brentq (to 1e-13)."""
  x = np.linspace(lo, hi, num)
  neg = fn(x) < 0
  cuts = [lo] if neg[0] else []
  for i in np.flatnonzero(neg[1:] != neg[:-1]):
    cuts.append(optimize.brentq(fn, x[i], x[i + 1], xtol=1e-13))
  return np.reshape(cuts + ([hi] if neg[-1] else []), (-1, 2))


class CrossEntropyExperimentTest(_smoke.SmokeRun):
  experiment = "cross_entropy"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fwd, cls.rev = cls.results["pairs"]
    cls.x = np.linspace(cls.config.grid.start, cls.config.grid.stop, cls.config.grid.num)

  def test_interval_matches_brentq_on_an_independent_formula(self):
    lo, hi = self.config.grid.start, self.config.grid.stop
    for pair, (target, model) in (
      (self.fwd, ((0.0, 1.0), (1.0, 2.0))),
      (self.rev, ((1.0, 2.0), (0.0, 1.0))),
    ):
      expected = _np_intervals(lambda x, t=target, m=model: _np_gap(t, m, x), lo, hi)
      found = np.asarray(pair["H(p,q)_below_H(q)"]["intervals"])
      chex.assert_equal_shape([found, expected])
      np.testing.assert_allclose(found, expected, atol=1e-6)

  def test_interval_is_the_derived_closed_form(self):
    np.testing.assert_allclose(
      self.fwd["H(p,q)_below_H(q)"]["intervals"], [[-1.0, -0.5]], atol=1e-6
    )
    np.testing.assert_allclose(
      self.rev["H(p,q)_below_H(q)"]["intervals"], [[-10.0, -1.0], [0.0, 10.0]], atol=1e-6
    )
    self.assertLessEqual(self.fwd["H(p,q)_below_H(q)"]["max_endpoint_error"], 1e-6)

  def test_derived_identity_holds_in_float64(self):
    # H(p, q) - H(q) = -(p - q)·logit(q), checked on the independent formula.
    target, model = (0.0, 1.0), (1.0, 2.0)
    x = np.linspace(-6.0, 6.0, 1201)
    p, q = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(-1 - 2 * x))
    np.testing.assert_allclose(
      _np_gap(target, model, x), -(p - q) * (1 + 2 * x), rtol=1e-9, atol=1e-14
    )

  def test_gibbs_and_asymmetry_match_numpy(self):
    x = np.asarray(np.asarray(self.x, np.float32) if not X64 else self.x, np.float64)
    h_pq, h_qp = _np_cross_entropy(x, 1 + 2 * x), _np_cross_entropy(1 + 2 * x, x)
    h_p, h_q = _np_cross_entropy(x, x), _np_cross_entropy(1 + 2 * x, 1 + 2 * x)
    asym = np.abs(h_pq - h_qp)
    np.testing.assert_allclose(self.fwd["max_abs_H(p,q)-H(q,p)"], asym.max(), rtol=10 * RTOL)
    np.testing.assert_allclose(self.fwd["max_asymmetry_at_x"], x[np.argmax(asym)], rtol=RTOL)
    np.testing.assert_allclose(
      self.fwd["mean_over_grid"]["KL(p||q)"], np.mean(h_pq - h_p), rtol=10 * RTOL
    )
    np.testing.assert_allclose(
      self.rev["mean_over_grid"]["KL(p||q)"], np.mean(h_qp - h_q), rtol=10 * RTOL
    )
    self.assertGreaterEqual(min(h_pq - h_p), 0.0)
    self.assertGreaterEqual(self.fwd["gibbs_min_H(p,q)-H(p)"], -1e-6)

  def test_claim_verdicts(self):
    verdicts = {c["id"]: c["verdict"] for c in self.results["claims"]}
    self.assertEqual(
      verdicts,
      {
        "3.1-cross-entropy-asymmetric": "holds",
        "3.2-gibbs-cross-entropy-above-target-entropy": "holds",
        "3.2-cross-entropy-above-both-entropies": "partly",
        "3.2-cross-entropy-as-distance": "partly",
      },
    )

  def test_negative_intervals_finds_a_union_and_boundary_runs(self):
    found = cross_entropy.negative_intervals(np.cos, 0.0, 10.0, num=101, xtol=1e-12)
    np.testing.assert_allclose(
      found, [[np.pi / 2, 3 * np.pi / 2], [5 * np.pi / 2, 10.0]], atol=1e-10
    )
    found = cross_entropy.negative_intervals(lambda x: x * (x - 1), -1.0, 2.0, num=7, xtol=1e-12)
    np.testing.assert_allclose(found, [[0.0, 1.0]], atol=1e-10)
    self.assertEqual(
      cross_entropy.negative_intervals(np.sin, -3.0, -0.1, num=5, xtol=1e-12), [[-3.0, -0.1]]
    )

  def test_closed_form_intervals_general_pair(self):
    # (z_p - z_q)·z_q = (3 - x)·(x - 1) > 0 on (1, 3) for p = σ(2), q = σ(-1 + x).
    self.assertEqual(
      cross_entropy.closed_form_intervals((2.0, 0.0), (-1.0, 1.0), -5.0, 5.0), [[1.0, 3.0]]
    )
    self.assertEqual(
      cross_entropy.closed_form_intervals((1.0, 2.0), (0.0, 1.0)), [[-np.inf, -1.0], [0.0, np.inf]]
    )
    self.assertEqual(
      self.rev["H(p,q)_below_H(q)"]["closed_form_on_real_line"], [["-inf", -1.0], [0.0, "inf"]]
    )
    # Parallel logits (no crossing): sign of (a_p - a_q)·z_q.
    self.assertEqual(
      cross_entropy.closed_form_intervals((1.0, 1.0), (0.0, 1.0), -5.0, 5.0), [[0.0, 5.0]]
    )

  def test_validate_rejects_bad_configs(self):
    for key, value, message in (
      ("grid.num", 1, "grid.num"),
      ("model.slope", 0.0, "model.slope"),
      ("root_xtol", 1e-3, "root_xtol"),
      ("model.intercept", 0.0, "must differ"),
    ):
      config = cross_entropy_config.get_config("smoke")
      config.update_from_flattened_dict(
        {key: value, "model.slope": 1.0} if key == "model.intercept" else {key: value}
      )
      with self.assertRaisesRegex(_common.ConfigError, message):
        cross_entropy.validate(config)


if __name__ == "__main__":
  absltest.main()
