"""Tests for xent_jax.divergence: KL and Jensen–Shannon against mpmath, and their identities."""

import functools
import math

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


def _pq(c, dtype):
  """p and an independent q, with q > 0 wherever p > 0 (finite divergence)."""
  p, q = _grids.probs(c, dtype), _grids.probs(c, dtype, seed=3)
  return p, np.where((q == 0) & (p > 0), np.finfo(dtype).tiny, q).astype(dtype)


def _renormalized(p, where):
  """p restricted to the classes kept by ``where`` and renormalised (no subnormals)."""
  kept = np.where(where, p.astype(np.float64), 0)
  out = (kept / kept.sum(axis=1, keepdims=True)).astype(p.dtype)
  return np.where(np.abs(out) < np.finfo(p.dtype).tiny, 0, out).astype(p.dtype)


def _logits_pq(c, dtype):
  zp = _grids.logits(c, dtype)
  zq = np.where(np.isinf(zp), -np.inf, np.roll(np.where(np.isinf(zp), 0, zp), 1, axis=1))
  return zp, zq.astype(dtype)


@functools.cache
def _kl_from_logits_ref(c, dtype, masked=False):
  """The reference KL and H(p, q) = KL + H(p) for the logit grids."""
  zp, zq = _logits_pq(c, dtype)
  where = _grids.mask(zp.shape, 12) if masked else None
  kl = ref.kl_divergence_from_logits(zp, zq, where)
  return kl, kl.value + ref.entropy_from_logits(zp, where).value


@functools.cache
def _kl_ref(c, dtype):
  p, q = _pq(c, dtype)
  return ref.kl_divergence(p, q), ref.cross_entropy(p, q).value


@functools.cache
def _js_ref(c, dtype):
  p, q = _grids.probs(c, dtype), _grids.probs(c, dtype, seed=4)
  m = ((p.astype(np.float64) + q) / 2).astype(dtype)
  return ref.js_divergence(p, q), ref.cross_entropy(p, m).value + ref.cross_entropy(q, m).value


def _assert_divergence(got, exact, cross, dtype, name):
  """SPEC §2: absolute error ≤ rtol · (1 + H(p, q)) (or 4x the inherent change)."""
  ref.assert_accurate(got, exact, dtype, name=name, scale=1 + np.abs(cross))


@ref.jet("generalized_kl_divergence", ("p", "q"))
def _jet_generalized_kl_divergence(row, kept):
  """Σ p log(p/q) - p + q: the KL's x log y terms, and linear terms of Hessian 0."""
  p, q = row["p"], row["q"]
  acc = ref.XlogyTerms({"p": len(p), "q": len(q)})
  for k in range(len(p)):
    if kept[k]:
      acc.add(1, p[k], p[k], {("p", k): ref.ONE}, {("p", k): ref.ONE})
      acc.add(-1, p[k], q[k], {("p", k): ref.ONE}, {("q", k): ref.ONE})
      acc.value += q[k] - p[k]
      acc.grad["p"][k] -= 1
      acc.grad["q"][k] += 1
  return acc.jet()


class KLDivergenceTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10, 1000)))
  def test_kl_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    p, q = _pq(c, dtype)
    got = self.variant(xj.kl_divergence)(p, q)
    self.assertEqual(got.dtype, np.dtype(dtype))
    _assert_divergence(got, *_kl_ref(c, dtype), dtype, "kl_divergence")
    # With `where`, p and q are distributions over the kept classes (else KL may be < 0).
    where = _grids.mask(p.shape, c + 2)
    p, q = (_renormalized(x, where) for x in (p, q))
    q = np.where((q == 0) & (p > 0), np.finfo(dtype).tiny, q).astype(dtype)
    got = self.variant(lambda p, q: xj.kl_divergence(p, q, where=where, base=2))(p, q)
    _assert_divergence(
      got,
      ref.kl_divergence(p, q, where, base=2),
      ref.cross_entropy(p, q, where, base=2).value,
      dtype,
      "kl_divergence",
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10, 1000)))
  def test_kl_from_logits_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    zp, zq = _logits_pq(c, dtype)
    got = self.variant(xj.kl_divergence_from_logits)(zp, zq)
    self.assertEqual(got.dtype, np.dtype(dtype))
    exact, cross = _kl_from_logits_ref(c, dtype)
    _assert_divergence(got, exact, cross, dtype, "kl_divergence_from_logits")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_kl_from_logits_where(self, dtype):
    zp, zq = _logits_pq(10, dtype)
    where = _grids.mask(zp.shape, 12)
    got = _grids.JIT.kl_divergence_from_logits(zp, zq, where=where)
    exact, cross = _kl_from_logits_ref(10, dtype, masked=True)
    _assert_divergence(got, exact, cross, dtype, "kl_divergence_from_logits")

  @parameterized.named_parameters(_grids.dtype_params(c=(3, 10, 1000)))
  def test_cross_entropy_is_entropy_plus_kl(self, dtype, c):
    p, q = _pq(c, dtype)
    cross = np.asarray(_grids.JIT.cross_entropy(p, q), np.float64)
    total = np.asarray(_grids.JIT.entropy(p), np.float64) + np.asarray(
      _grids.JIT.kl_divergence(p, q), np.float64
    )
    np.testing.assert_array_less(np.abs(cross - total), 2 * ref.RTOL[np.dtype(dtype)] * (1 + cross))

  @parameterized.named_parameters(_grids.dtype_params(c=(2, 10, 1000)))
  def test_kl_is_nonnegative_and_zero_on_the_diagonal(self, dtype, c):
    p, q = _pq(c, dtype)
    self.assertTrue(np.all(np.asarray(_grids.JIT.kl_divergence(p, q)) >= 0))
    zp, zq = _logits_pq(c, dtype)
    self.assertTrue(np.all(np.asarray(_grids.JIT.kl_divergence_from_logits(zp, zq)) >= 0))
    np.testing.assert_array_equal(_grids.JIT.kl_divergence_from_logits(zp, zp), 0)
    tol = ref.RTOL[np.dtype(dtype)] * (1 + np.asarray(_grids.JIT.entropy(p)))
    np.testing.assert_array_less(np.abs(_grids.JIT.kl_divergence(p, p)), tol)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_from_logits_equals_kl_of_softmaxes(self, dtype):
    rng = np.random.default_rng(4)
    zp, zq = (rng.normal(size=(2, 40, 6)) * 3).astype(dtype)
    p, q = jax.nn.softmax(zp), jax.nn.softmax(zq)
    cross = np.asarray(_grids.JIT.cross_entropy(p, q))
    np.testing.assert_array_less(
      np.abs(_grids.JIT.kl_divergence_from_logits(zp, zq) - _grids.JIT.kl_divergence(p, q)),
      4 * ref.RTOL[np.dtype(dtype)] * (1 + cross),
    )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_impossible_class_of_q_under_p_is_infinite(self, dtype):
    zp = np.array([[0.0, 0.0], [0.0, -np.inf]], dtype)
    zq = np.array([[0.0, -np.inf], [0.0, -np.inf]], dtype)
    exact = ref.kl_divergence_from_logits(zp, zq)
    self.assertEqual(exact.value[0], np.inf)
    _assert_divergence(
      _grids.JIT.kl_divergence_from_logits(zp, zq),
      exact,
      np.zeros(2),
      dtype,
      "kl_divergence_from_logits",
    )

  def test_no_retracing(self):
    f = jax.jit(chex.assert_max_traces(xj.kl_divergence_from_logits, n=1))
    rng = np.random.default_rng(0)
    for _ in range(3):
      self.assertTrue(np.all(f(*rng.normal(size=(2, 4, 5)).astype(np.float32)) > 0))


class JSDivergenceTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(_grids.dtype_params(c=(2, 3, 10, 1000)))
  def test_js_matches_mpmath(self, dtype, c):
    _grids.skip_eager_unless(self, c)
    p, q = _grids.probs(c, dtype), _grids.probs(c, dtype, seed=4)
    got = self.variant(xj.js_divergence)(p, q)
    self.assertEqual(got.dtype, np.dtype(dtype))
    exact, cross = _js_ref(c, dtype)
    _assert_divergence(got, exact, cross, dtype, "js_divergence")
    where = _grids.mask(p.shape, c + 3)
    got = self.variant(lambda p, q: xj.js_divergence(p, q, where=where, base=2))(p, q)
    _assert_divergence(got, ref.js_divergence(p, q, where, base=2), cross, dtype, "js_divergence")

  @parameterized.named_parameters(_grids.dtype_params(c=(2, 10, 1000)))
  def test_js_symmetric_and_bounded(self, dtype, c):
    p, q = _grids.probs(c, dtype), _grids.probs(c, dtype, seed=4)
    pq, qp = np.asarray(_grids.JIT.js_divergence(p, q)), np.asarray(_grids.JIT.js_divergence(q, p))
    # Each side may err by rtol · (1 + H) absolutely (SPEC §2 for divergences).
    np.testing.assert_array_less(
      np.abs(pq - qp), 2 * ref.RTOL[np.dtype(dtype)] * (1 + _js_ref(c, dtype)[1])
    )
    self.assertTrue(np.all(pq >= 0))
    self.assertTrue(np.all(pq <= np.asarray(math.log(2), dtype)))
    np.testing.assert_allclose(
      _grids.JIT.js_divergence(p, q, base=2), pq / math.log(2), rtol=2 * ref.RTOL[np.dtype(dtype)]
    )
    disjoint = np.zeros((1, c), dtype)
    disjoint[0, 0] = 1
    np.testing.assert_allclose(
      _grids.JIT.js_divergence(disjoint, disjoint[:, ::-1]),
      math.log(2),
      rtol=ref.RTOL[np.dtype(dtype)],
    )


class DivergenceGradientTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params())
  def test_kl_from_logits_of_nearby_distributions_keeps_its_digits(self, dtype):
    # KL(p‖q) for q a small change of p (distillation, a PPO/RLHF KL penalty) is O(δ²),
    # while each log-normaliser is known to about eps: summed as Σ p_j (log p_j - log q_j)
    # the value was 14% off for the first row in float32, and 0 for the fifth in float64
    # (exact 2.7e-36); q - p lost its digits likewise. Checked with SPEC §2's relative rule
    # (exact to rtol or 4x the inherent change), stricter than the divergences' absolute one.
    rows = [
      ([0.0, -12.0, -1.0], [0.0, -12.25, -1.0]),
      ([5.0, -5.0, 1.0], [5.0, -5.5, 1.0]),
      ([0.0, -16.0, -2.0], [0.0, -16.5, -2.0]),
      ([0.0, -25.0, -3.0], [0.0, -25.1, -3.0]),
      ([40.0, -40.0, 10.0], [40.0, -39.5, 10.0]),
      ([1.0, 2.0, 3.0], [1.001, 2.0, 3.0]),
      ([30.0, 0.0, -10.0], [30.0, 0.001, -10.0]),  # a large top logit: z - max rounds
      ([5.0, 5.0, -3.0], [5.0, 5.0, -3.01]),  # tied maxima
    ]
    rng = np.random.default_rng(17)
    for delta in (1e-1, 1e-2, 1e-3):
      zp = rng.normal(size=3) * 6
      rows.append((zp, zp + delta * rng.normal(size=3)))
    zp, zq = (np.array([r[i] for r in rows], dtype) for i in (0, 1))
    arrays = {"p_logits": zp, "q_logits": zq}
    name = "kl_divergence_from_logits"
    fn = lambda a, b: _grids.JIT.kl_divergence_from_logits(a, b)
    ref.assert_accurate(fn(zp, zq), ref.kl_divergence_from_logits(zp, zq), dtype, name=name)
    grads = _jit_grad(lambda a, b: jnp.sum(fn(a, b)), argnums=(0, 1))(zp, zq)
    for arg, got in zip(arrays, grads, strict=True):
      exact = ref.vjp(name, arrays, arg).ref
      ref.assert_accurate(got, exact, dtype, name=f"grad {name} d/d{arg}")
    tangents = {a: rng.normal(size=zp.shape).astype(dtype) for a in arrays}
    got = jax.jit(lambda a, b, ta, tb: jax.jvp(fn, (a, b), (ta, tb))[1])(zp, zq, *tangents.values())
    ref.assert_accurate(got, ref.jvp(name, arrays, tangents).ref, dtype, name=f"jvp {name}")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_gradients_finite_at_extremes(self, dtype):
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    zp = np.array([[big, -big, -np.inf], [-np.inf, 0.0, -big]], dtype)
    zq = np.array([[0.0, big, -np.inf], [0.0, -big, big]], dtype)
    grads = _jit_grad(
      lambda a, b: jnp.sum(_grids.JIT.kl_divergence_from_logits(a, b)), argnums=(0, 1)
    )(zp, zq)
    chex.assert_tree_all_finite(grads)
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype)
    q = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype)
    for fn in (xj.js_divergence,):
      self.assertFalse(
        np.isnan(_jit_grad(lambda p, q, fn=fn: jnp.sum(fn(p, q)), argnums=(0, 1))(p, q)).any()
      )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_kl_from_logits_gradient_wrt_q_is_q_minus_p(self, dtype):
    zp, zq = _logits_pq(10, dtype)
    grad = _jit_grad(lambda zq: jnp.sum(_grids.JIT.kl_divergence_from_logits(zp, zq)))(zq)
    ref.assert_accurate(
      grad,
      ref.kl_divergence_from_logits_grad_q(zp, zq),
      dtype,
      name="grad kl_divergence_from_logits",
    )

  def test_check_grads_float64(self):
    if not jax.config.jax_enable_x64:
      self.skipTest("float64 needs JAX_ENABLE_X64=1")
    rng = np.random.default_rng(10)
    zp, zq = rng.normal(size=(2, 4, 5)) * 3
    check_grads(_grids.JIT.kl_divergence_from_logits, (zp, zq), order=1, modes=["rev"])
    p, q = _grids.softmax64(zp / 3), _grids.softmax64(zq / 3)  # away from 0: finite differences
    check_grads(_grids.JIT.kl_divergence, (p, q), order=1, modes=["rev"])
    check_grads(_grids.JIT.js_divergence, (p, q), order=1, modes=["rev"])


if __name__ == "__main__":
  absltest.main()
