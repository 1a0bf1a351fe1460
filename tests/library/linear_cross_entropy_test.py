"""Tests for xent_jax.linear_softmax_cross_entropy against a float64 materialised oracle.

The oracle (:func:`_reference`) is NumPy in float64: it forms the whole ``[N, V]`` logits,
the loss as lse - z_y with lse = m + log1p(mass of the classes other than the argmax), and
the gradient ∂ℓ/∂z = κ·p - y_ε with p_y - 1 written as minus the other classes' mass.
Inputs are dyadic (hidden in multiples of 1/8, weight of 1/16, bias of 1/128, D ≤ 16), so
that ``hidden @ weight + bias`` is exact in float32 and in bfloat16 storage: any
difference from the oracle is the loss's own error, held to SPEC §2's 1e-6 (float32) and
1e-13 (float64). Gradients that are sums over V or N (∂/∂h, ∂/∂W, ∂/∂b) are held to the
same relative tolerance against the sum of the magnitudes of their terms, the accuracy
bound of a float sum.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
from absl.testing import absltest, parameterized

import xent_jax as xj

jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = bool(jax.config.jax_enable_x64)
DTYPE = np.float64 if X64 else np.float32
RTOL = 1e-13 if X64 else 1e-6


def _inputs(seed, n, d, v, *, bias=True, dtype=DTYPE):
  """Dyadic hidden [n, d], weight [d, v], bias [v] and labels [n] (h·W + b exact)."""
  rng = np.random.default_rng(seed)
  h = rng.integers(-16, 17, (n, d)) / 8
  w = rng.integers(-16, 17, (d, v)) / 16
  b = rng.integers(-256, 257, v) / 128 if bias else None
  y = rng.integers(0, v, n)
  cast = lambda x: None if x is None else np.asarray(x, dtype)
  return cast(h), cast(w), cast(b), y.astype(np.int32)


def _reference(h, w, y, b=None, *, eps=0.0, zeta=0.0, cap=None, scale=None):
  """(loss, lse, G) in float64: G = ∂(Σ_t scale_t ℓ_t)/∂u, u = h·W + b, all [N, V] dense."""
  h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
  u = h @ w + (0 if b is None else np.asarray(b, np.float64))
  z = u if cap is None else cap * np.tanh(u / cap)
  n, v = z.shape
  rows = np.arange(n)
  top = z.argmax(axis=1)
  m = z[rows, top]
  e = np.exp(z - m[:, None])
  e_rest = e.copy()
  e_rest[rows, top] = 0
  lse = m + np.log1p(e_rest.sum(axis=1))
  nll = lse - z[rows, y]
  loss = (1 - eps) * nll + eps * (lse - z.mean(axis=1)) + zeta * lse**2
  p = np.exp(z - lse[:, None])
  kappa = 1 + 2 * zeta * lse
  g = kappa[:, None] * p - eps / v
  p_rest = p.copy()
  p_rest[rows, y] = 0
  g[rows, y] = -kappa * p_rest.sum(axis=1) + (kappa - 1) + eps - eps / v  # κ(p_y - 1) + ...
  if cap is not None:
    g = g / np.cosh(u / cap) ** 2
  scale = np.ones(n) if scale is None else np.asarray(scale, np.float64)
  return scale * loss, lse, scale[:, None] * g


def _assert_sum_close(test, got, terms_bound, want, rtol, name):
  """|got - want| ≤ rtol · (Σ |terms|): the accuracy of a float sum, elementwise."""
  got = np.asarray(got, np.float64)
  err = np.abs(got - want)
  bound = rtol * terms_bound + 1e-300
  worst = np.unravel_index(np.argmax(err / bound), err.shape)
  test.assertTrue(
    np.all(err <= bound),
    f"{name}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
    f"(got {got[worst]!r}, want {want[worst]!r})",
  )


def _reference_grads(h, w, g):
  """(∂/∂h, ∂/∂W, ∂/∂b) and the bounds Σ|terms| of each, from G = ∂/∂u."""
  h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
  grads = (g @ w.T, h.T @ g, g.sum(axis=0))
  bounds = (np.abs(g) @ np.abs(w).T, np.abs(h).T @ np.abs(g), np.abs(g).sum(axis=0))
  return grads, bounds


_OPTIONS = (
  ("plain", {}),
  ("bias", {"bias": True}),
  ("smoothing", {"bias": True, "label_smoothing": 0.1}),
  ("softcap", {"logit_softcap": 3.0}),
  ("z_loss", {"z_loss": 1e-2}),
  ("all", {"bias": True, "label_smoothing": 0.2, "logit_softcap": 5.0, "z_loss": 1e-3}),
)


def _call(h, w, y, b, options, **kwargs):
  options = {k: v for k, v in options.items() if k != "bias"}
  return xj.linear_softmax_cross_entropy(h, w, y, bias=b, **options, **kwargs)


def _ref_kwargs(options):
  return {
    "eps": options.get("label_smoothing", 0.0),
    "zeta": options.get("z_loss", 0.0),
    "cap": options.get("logit_softcap"),
  }


# Odd shapes: N = 37 tokens in chunks of 8 (a partial last chunk), V = 300 classes in
# blocks of 128 (two full blocks and a tail) for the gradient pass.
N, D, V = 37, 16, 300
CHUNKS = {"chunk_size": 8, "vocab_chunk_size": 128}


class ValueTest(chex.TestCase):
  def test_matches_float64_materialised(self):
    h, w, b, y = _inputs(0, N, D, V)
    # One compilation for every option set (compile time dominates at these sizes).
    got = jax.jit(
      lambda h, w, b: [
        _call(h, w, y, b if o.get("bias") else None, o, **CHUNKS) for _, o in _OPTIONS
      ]
    )(h, w, b)
    for (name, options), got_i in zip(_OPTIONS, got, strict=True):
      want, _, _ = _reference(h, w, y, b if options.get("bias") else None, **_ref_kwargs(options))
      self.assertEqual(got_i.dtype, DTYPE)
      np.testing.assert_allclose(got_i, want, rtol=RTOL, atol=0, err_msg=name)

  def test_default_chunks_and_leading_batch_dims(self):
    h, w, b, y = _inputs(1, 3 * 13, D, V)
    got = xj.linear_softmax_cross_entropy(h.reshape(3, 13, D), w, y.reshape(3, 13), bias=b)
    want, _, _ = _reference(h, w, y, b)
    chex.assert_shape(got, (3, 13))
    np.testing.assert_allclose(got.reshape(-1), want, rtol=RTOL, atol=0)

  def test_return_lse_and_base(self):
    h, w, b, y = _inputs(2, N, D, V)
    loss, lse = xj.linear_softmax_cross_entropy(h, w, y, bias=b, return_lse=True, base=2, **CHUNKS)
    want, want_lse, _ = _reference(h, w, y, b)
    np.testing.assert_allclose(loss, want / math.log(2), rtol=RTOL, atol=0)
    np.testing.assert_allclose(lse, want_lse, rtol=RTOL, atol=0)

  def test_tail_of_a_dominant_label(self):
    # One token whose label wins by 20 nats over V - 1 = 15 classes: p_y = 1 - 3.1e-8.
    # optax on the materialised logits rounds the loss to 0 in float32.
    v = 16
    h = np.eye(1, 4, dtype=DTYPE)
    w = np.zeros((4, v), DTYPE)
    w[0, 3] = 20.0
    want = math.log1p(15 * math.exp(-20))
    f = lambda b: xj.linear_softmax_cross_entropy(h, w, np.array([3]), bias=b)[0]
    loss, g = jax.jit(jax.value_and_grad(f))(np.zeros(v, DTYPE))
    np.testing.assert_allclose(loss, want, rtol=RTOL)
    # ∂ℓ/∂b_y = p_y - 1 = -(the other classes' mass), not a rounded 0.
    others = math.exp(-20) / (1 + 15 * math.exp(-20))
    np.testing.assert_allclose(g[3], -15 * others, rtol=RTOL)
    np.testing.assert_allclose(np.delete(np.asarray(g), 3), others, rtol=RTOL)
    if not X64:
      z = jnp.asarray(h @ w)
      self.assertEqual(
        float(optax.softmax_cross_entropy_with_integer_labels(z, np.array([3]))[0]), 0.0
      )

  def test_soft_capped_logits_under_jit_and_vmap(self):
    # Logits up to ±60 capped at 30 (Gemma's cap), half the labels the row maximum. XLA:CPU
    # fused c·t - m into a multiply-add in some passes only: a dominant label's loss came
    # out -4.8e-7 (exact 9.2e-12) under jit, and under vmap the maximum's own term was
    # counted as mass (0.69 nats off). The oracle caps the same inputs in mpmath; float32
    # rounding of the capped logits (|Δz| ≤ eps·c) moves the loss by 2·eps·c relative.
    cap, d, v = 30.0, 8, 24
    rng = np.random.default_rng(7)
    h = np.eye(d, dtype=DTYPE)  # u = the rows of W, exactly
    w = np.asarray(rng.normal(0, 20, (d, v)), DTYPE)
    w[0, :3] = 40.0, 0.0, 0.0  # a dominant label by 27 nats after the cap
    y = np.where(np.arange(d) % 2 == 0, np.argmax(w, axis=1), rng.integers(0, v, d))
    _, _, g = _reference(h, w, y, cap=cap)
    (_, want_w, _), (_, bound_w, _) = _reference_grads(h, w, g)
    with mpmath.workdps(40):  # the loss of a dominant label cancels in lse - z_y: mpmath
      z = [[cap * mpmath.tanh(mpmath.mpf(float(u)) / cap) for u in row] for row in w]
      want = [
        float(mpmath.log(sum(mpmath.exp(zj - zi[yi]) for zj in zi)))
        for zi, yi in zip(z, y, strict=True)
      ]
    rtol = RTOL + 4 * float(np.finfo(DTYPE).eps) * cap
    f = lambda h, w: xj.linear_softmax_cross_entropy(h, w, y, logit_softcap=cap)
    loss_and_grad = jax.value_and_grad(lambda w, h: f(h, w).sum(), has_aux=False)
    runs = {
      "jit": jax.jit(lambda h, w: (f(h, w), loss_and_grad(w, h)[1]))(h, w),
      "vmap": jax.tree.map(
        lambda x: x[0],
        jax.jit(jax.vmap(lambda h, w: (f(h, w), loss_and_grad(w, h)[1])))(h[None], w[None]),
      ),
    }
    for name, (loss, grad_w) in runs.items():
      np.testing.assert_allclose(loss, want, rtol=rtol, atol=0, err_msg=name)
      _assert_sum_close(self, grad_w, bound_w, want_w, rtol, f"{name}: d/dW")

  def test_no_features(self):
    # D = 0: every logit is the bias, a uniform loss over V = 7 classes (its gradient raised
    # ZeroDivisionError). ∂/∂b = Σ_t (softmax(b) - onehot(y_t)).
    h, w, b, y = np.zeros((4, 0), DTYPE), np.zeros((0, 7), DTYPE), np.zeros(7, DTYPE), np.arange(4)
    f = lambda h, w, b: xj.linear_softmax_cross_entropy(h, w, y, bias=b)
    np.testing.assert_allclose(f(h, w, b), np.full(4, math.log(7)), rtol=RTOL)
    grads = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))(h, w, b)
    self.assertEqual([g.shape for g in grads], [(4, 0), (0, 7), (7,)])
    np.testing.assert_allclose(grads[2], 4 / 7 - (np.arange(7) < 4), rtol=RTOL)

  def test_subnormal_terms_of_a_dominant_label(self):
    # The label wins by 85 nats over one class and by 90 over 38 others (float32; 700 and
    # 712 in float64): each e^{-90} is subnormal, flushed on the CPU, and together they are
    # 20% of the loss, 1.5e-37 (a normal number). The mass is summed in a raised exponent.
    v = 40
    top, second = (712.0, 12.0) if X64 else (90.0, 5.0)
    h = np.eye(1, 4, dtype=DTYPE)
    w = np.zeros((4, v), DTYPE)
    w[0, :2] = top, second
    with mpmath.workdps(50):
      want = float(mpmath.log1p(mpmath.exp(second - top) + (v - 2) * mpmath.exp(-top)))
    self.assertGreater(want, np.finfo(DTYPE).tiny)
    got = xj.linear_softmax_cross_entropy(h, w, np.array([0]))
    np.testing.assert_allclose(got[0], want, rtol=RTOL)

  def test_bfloat16_inputs_accumulate_in_float32(self):
    h, w, b, y = _inputs(3, N, D, V)
    want, _, g = _reference(h, w, y, b)
    h16, w16, b16 = (jnp.asarray(x, jnp.bfloat16) for x in (h, w, b))
    loss = lambda h, w: xj.linear_softmax_cross_entropy(h, w, y, bias=b16, **CHUNKS)
    total = lambda h, w: (loss(h, w).sum(), loss(h, w))
    (_, got), grads = jax.jit(jax.value_and_grad(total, (0, 1), has_aux=True))(h16, w16)
    self.assertEqual(got.dtype, jnp.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    self.assertEqual([x.dtype for x in grads], [jnp.bfloat16, jnp.bfloat16])
    (want_h, want_w, _), _ = _reference_grads(h, w, g)
    # Accumulated in float32, rounded to bfloat16 once at the end: within half an ulp.
    half_ulp = float(jnp.finfo(jnp.bfloat16).eps) / 2
    for got_i, want_i in zip(grads, (want_h, want_w), strict=True):
      np.testing.assert_array_less(
        np.abs(np.float64(got_i) - want_i), half_ulp * np.abs(want_i) + 1e-30
      )


class MaskTest(chex.TestCase):
  def test_where_ignore_index_weights_and_garbage_rows(self):
    h, w, b, y = _inputs(4, N, D, V)
    rng = np.random.default_rng(5)
    keep = rng.random(N) < 0.6
    ignored = (~keep) & (rng.random(N) < 0.5)
    where = keep | ignored  # the ignored tokens are excluded by ignore_index instead
    y = np.where(ignored, -100, y)
    weights = rng.random(N).astype(DTYPE)
    h_bad = h.copy()
    h_bad[~keep] = np.nan
    h_bad[~keep & (np.arange(N) % 3 == 0)] = np.inf

    def loss(h, w, b, weights):
      kw = dict(bias=b, where=where, ignore_index=-100, weights=weights, **CHUNKS)
      return xj.linear_softmax_cross_entropy(h, w, y, **kw)

    ct = np.arange(N).astype(DTYPE)  # a per-token cotangent, beside the mean's

    @jax.jit
    def run(*args):
      mean_grads = jax.grad(lambda *a: loss(*a).mean(), (0, 1, 2, 3))(*args)
      token_grads = jax.grad(lambda *a: (ct * loss(*a)).sum(), (0, 1, 2, 3))(*args)
      return loss(*args), {"mean": mean_grads, "per-token": token_grads}

    got, grads = run(h_bad, w, b, weights)
    want, _, g = _reference(h[keep], w, y[keep], b, scale=weights[keep])
    np.testing.assert_array_equal(np.asarray(got)[~keep], 0)
    np.testing.assert_allclose(np.asarray(got)[keep], want, rtol=RTOL, atol=0)
    unweighted = _reference(h[keep], w, y[keep], b)[0]
    for name, scale in (("mean", np.full(N, 1 / N)), ("per-token", np.float64(ct))):
      dh, dw, db, dweights = grads[name]
      (want_h, want_w, want_b), bounds = _reference_grads(h[keep], w, g * scale[keep, None])
      np.testing.assert_array_equal(np.asarray(dh)[~keep], 0)  # exact zeros
      _assert_sum_close(self, np.asarray(dh)[keep], bounds[0], want_h, RTOL, f"{name} dh")
      _assert_sum_close(self, dw, bounds[1], want_w, RTOL, f"{name} dW")
      _assert_sum_close(self, db, bounds[2], want_b, RTOL, f"{name} db")
      # ∂/∂weights_t is the unweighted loss of token t, 0 where excluded.
      want_dweights = np.zeros(N)
      want_dweights[keep] = unweighted * scale[keep]
      np.testing.assert_allclose(dweights, want_dweights, rtol=RTOL, atol=0)

  def test_out_of_range_labels_are_nan_unless_excluded(self):
    h, w, _, y = _inputs(6, 6, D, 10)
    y = np.array([0, -1, 10, 3, 11, -5], np.int32)
    got = xj.linear_softmax_cross_entropy(h, w, y)
    np.testing.assert_array_equal(np.isnan(got), [False, True, True, False, True, True])
    where = np.array([True, False, False, True, False, False])
    got = xj.linear_softmax_cross_entropy(h, w, y, where=where)
    self.assertTrue(np.all(np.isfinite(got)))
    np.testing.assert_array_equal(np.asarray(got)[~where], 0)

  def test_narrow_integer_labels_equal_int32_labels(self):
    # V = 300 > 255: an int8/uint8/int16 label compared with the class iota or V in its own
    # dtype would wrap (a uint8 label 5 matched class 261; an int8 label 100 gave NaN).
    h, w, b, _ = _inputs(8, 3, D, 300)
    f = lambda h, w, y: xj.linear_softmax_cross_entropy(h, w, y, bias=b, vocab_chunk_size=128)
    run = jax.jit(jax.value_and_grad(lambda h, w, y: f(h, w, y).sum(), (0, 1)))
    for dtype, values in (
      (np.int8, [5, 100, 127]),
      (np.uint8, [5, 200, 255]),
      (np.int16, [5, 261, 299]),
    ):
      narrow, wide = np.array(values, dtype), np.array(values, np.int32)
      chex.assert_trees_all_equal(run(h, w, narrow), run(h, w, wide))

  def test_all_tokens_excluded(self):
    h, w, b, y = _inputs(7, 5, D, 10)
    f = lambda h, w: xj.linear_softmax_cross_entropy(h, w, y, where=np.zeros(5, bool)).sum()
    value, grads = jax.jit(jax.value_and_grad(f, (0, 1)))(h, w)
    self.assertEqual(float(value), 0.0)
    for g in grads:
      np.testing.assert_array_equal(g, 0)


class GradientTest(chex.TestCase):
  @parameterized.named_parameters(("bias", _OPTIONS[1][1]), ("all", _OPTIONS[-1][1]))
  def test_mean_and_per_token_cotangents_match_float64(self, options):
    # The mean takes the fused pass's sums; a per-token cotangent recomputes the logits.
    h, w, b, y = _inputs(8, N, D, V)
    _, _, g = _reference(h, w, y, b, **_ref_kwargs(options))
    ct = np.random.default_rng(9).standard_normal(N).astype(DTYPE)
    loss = lambda h, w, b: _call(h, w, y, b, options, **CHUNKS)
    grads = jax.jit(
      lambda h, w, b: (
        jax.grad(lambda *a: loss(*a).mean(), (0, 1, 2))(h, w, b),
        jax.grad(lambda *a: (ct * loss(*a)).sum(), (0, 1, 2))(h, w, b),
      )
    )(h, w, b)
    for name, got, scale in (("mean", grads[0], np.full(N, 1 / N)), ("per-token", grads[1], ct)):
      want, bounds = _reference_grads(h, w, g * np.float64(scale)[:, None])
      for got_i, want_i, bound, arg in zip(got, want, bounds, "hWb", strict=True):
        self.assertEqual(got_i.dtype, DTYPE)
        _assert_sum_close(self, got_i, bound, want_i, RTOL, f"{name} d{arg}")

  def test_one_hidden_feature(self):
    # D = 1 (a contraction over one element, which XLA:CPU rewrote into fused multiplies):
    # the compiled loss of a dominant label was 8.7e-4 relative off (second row) and the
    # gradient of a dominant class that is not the label 2.4e-5 (first row).
    h = np.array([[0.7506786], [-0.5749987]], DTYPE)
    w = np.array([[969.0776, 484.5388, -12.97659, 47.987095, -72.911545]], DTYPE)
    y = np.array([1, 4], np.int32)
    # The materialised logits (one rounding of h·W), then the loss exactly in float64,
    # the label's tail with log1p.
    z = (np.asarray(h, np.float64) @ np.asarray(w, np.float64)).astype(DTYPE).astype(np.float64)
    rest = np.exp(z - z[np.arange(2), y][:, None])
    rest[np.arange(2), y] = 0
    top = z.max(axis=1)
    want = np.where(z[np.arange(2), y] == top, np.log1p(rest.sum(axis=1)), top - z[np.arange(2), y])
    others = np.exp(z - top[:, None])
    others[z == top[:, None]] = 0  # the maximum is unique in both rows
    want[0] += np.log1p(others[0].sum())
    got = jax.jit(lambda h, w: xj.linear_softmax_cross_entropy(h, w, y))(h, w)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    # ∂/∂u = p - onehot(y) of those logits, at the label minus the others' mass.
    lse = top + np.log1p(others.sum(axis=1))
    g = np.exp(z - lse[:, None])
    label = np.arange(5) == y[:, None]
    g[label] = -np.where(label, 0, g).sum(axis=1)
    grads = jax.jit(jax.grad(lambda h, w: xj.linear_softmax_cross_entropy(h, w, y).sum(), (0, 1)))(
      h, w
    )
    want_grads, bounds = _reference_grads(h, w, g)
    # Besides the sums' rounding, the inherent change of p_j = e^{z_j - lse} when the
    # float logit z_j moves by half an ulp: |z_j|·eps relative (the tails at z ≈ -70).
    _, inherent = _reference_grads(h, w, np.abs(g) * np.abs(z))
    eps = float(np.finfo(DTYPE).eps)
    for got_i, want_i, bound, extra, arg in zip(
      grads, want_grads[:2], bounds[:2], inherent[:2], "hW", strict=True
    ):
      _assert_sum_close(self, got_i, bound + 4 * eps / RTOL * extra, want_i, RTOL, f"d{arg}")

  def test_lse_cotangent(self):
    h, w, b, y = _inputs(10, N, D, V)
    ct_loss, ct_lse = np.random.default_rng(11).standard_normal((2, N))

    def f(h, w, b):
      loss, lse = xj.linear_softmax_cross_entropy(h, w, y, bias=b, return_lse=True, **CHUNKS)
      return (ct_loss * loss + ct_lse * lse).sum()

    grads = jax.jit(jax.grad(f, (0, 1, 2)))(h, w, b)
    _, lse, g = _reference(h, w, y, b)
    p = np.exp(np.float64(h) @ np.float64(w) + np.float64(b) - lse[:, None])
    gu = g * ct_loss[:, None] + p * ct_lse[:, None]
    want, _ = _reference_grads(h, w, gu)
    _, bounds = _reference_grads(h, w, np.abs(g * ct_loss[:, None]) + np.abs(p * ct_lse[:, None]))
    for got, want_i, bound, arg in zip(grads, want, bounds, "hWb", strict=True):
      _assert_sum_close(self, got, bound, want_i, RTOL, f"d{arg}")


class ForwardModeTest(chex.TestCase):
  @parameterized.named_parameters(("bias", _OPTIONS[1][1]), ("all", _OPTIONS[-1][1]))
  def test_jvp_matches_float64(self, options):
    h, w, b, y = _inputs(12, N, D, V)
    rng = np.random.default_rng(13)
    dh, dw, db = (rng.integers(-8, 9, x.shape).astype(DTYPE) / 8 for x in (h, w, b))
    _, _, g = _reference(h, w, y, b, **_ref_kwargs(options))
    f = lambda h, w, b: _call(h, w, y, b, options, **CHUNKS)
    got_all, got_h = jax.jit(
      lambda: (
        jax.jvp(f, (h, w, b), (dh, dw, db))[1],
        jax.jvp(lambda h: f(h, w, b), (h,), (dh,))[1],
      )
    )()
    du_h = np.float64(dh) @ np.float64(w)
    du = du_h + np.float64(h) @ np.float64(dw) + np.float64(db)
    for name, got, du_i in (("all", got_all, du), ("hidden", got_h, du_h)):
      want, bound = (g * du_i).sum(axis=1), (np.abs(g) * np.abs(du_i)).sum(axis=1)
      _assert_sum_close(self, got, bound, want, RTOL, f"jvp {name}")

  def test_second_order_and_linearize_match_the_materialised_loss(self):
    # Forward over reverse (H·v), reverse over reverse (∇‖∇L‖² = 2 H ∇L, for a mean and for
    # per-token weights), linearize, forward over forward (vᵀH_t v per token) and reverse
    # over forward (Σ_t c_t H_t v), the per-token Hessians (jacrev and jacfwd of jacrev),
    # against the same transforms of xent_jax's softmax_cross_entropy_with_integer_labels
    # on the materialised logits h @ W (same precision: the two agree to rounding).
    h, _, _, y = _inputs(14, 6, 4, 7)
    w = np.random.default_rng(15).standard_normal((4, 7)).astype(DTYPE)
    v = np.random.default_rng(16).standard_normal(w.shape).astype(DTYPE)
    kw = {"label_smoothing": 0.1}
    ours = lambda w: xj.linear_softmax_cross_entropy(
      h, w, y, chunk_size=4, vocab_chunk_size=3, **kw
    )
    mat = lambda w: xj.softmax_cross_entropy_with_integer_labels(h @ w, y, **kw)

    c = np.linspace(0, 1, len(y), dtype=DTYPE)

    @jax.jit
    def transforms():
      out = []
      for f in (ours, mat):
        mean = lambda w, f=f: f(w).mean()
        weighted = lambda w, f=f: (c * f(w)).sum()
        grad_sq = lambda loss: jax.grad(lambda w: jnp.sum(jax.grad(loss)(w) ** 2))(w)
        tangent = lambda w, f=f: jax.jvp(f, (w,), (v,))[1]  # per-token ∂ℓ_t/∂W · v
        weighted_tangent = lambda w, tangent=tangent: (c * tangent(w)).sum()
        out.append(
          {
            "hvp": jax.jvp(jax.grad(mean), (w,), (v,))[1],
            "grad of grad, mean": grad_sq(mean),
            "grad of grad, per-token": grad_sq(weighted),
            "linearize": jax.linearize(f, w)[1](v),
            "jvp of jvp": jax.jvp(tangent, (w,), (v,))[1],
            "grad of jvp": jax.grad(weighted_tangent)(w),
            # per-token Jacobians: the inner VJP is vmapped (raised: a batched
            # conditional's stop_gradient met reverse mode)
            "jacrev of jacrev": jax.jacrev(jax.jacrev(f))(w),
            "jacfwd of jacrev": jax.jacfwd(jax.jacrev(f))(w),
          }
        )
      return out

    got, want = transforms()
    rtol = 1e-10 if X64 else 2e-5
    for name in want:
      # ∇‖∇L‖² = 2 H ∇L is a contraction: an entry's rounding is relative to the largest.
      atol = rtol * np.max(np.abs(want[name])) if name.startswith("grad of grad") else 1e-12
      np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


class TransformTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    self.h, self.w, self.b, self.y = _inputs(16, 24, 8, 40)
    self.f = functools.partial(xj.linear_softmax_cross_entropy, chunk_size=5, vocab_chunk_size=16)

  def test_vmap_scan_checkpoint_eval_shape(self):
    h, w, y, f = self.h, self.w, self.y, self.f
    h_3, y_3 = h.reshape(3, 8, 8), y.reshape(3, 8)

    @jax.jit
    def values():
      _, scanned = jax.lax.scan(lambda c, xs: (c, f(xs[0], w, xs[1])), 0, (h_3, y_3))
      batched = jax.vmap(f, in_axes=(0, None, 0))(h_3, w, y_3)
      return f(h, w, y), scanned.reshape(-1), batched.reshape(-1), jax.checkpoint(f)(h, w, y)

    want, *others = values()
    for got in others:
      np.testing.assert_allclose(got, want, rtol=RTOL)
    shape = jax.eval_shape(f, h, w, y)
    self.assertEqual((shape.shape, shape.dtype), (want.shape, want.dtype))

  def test_gradients_under_vmap_and_checkpoint(self):
    h, w, y, f = self.h, self.w, self.y, self.f
    h_3, y_3 = h.reshape(3, 8, 8), y.reshape(3, 8)
    mean_loss = lambda w, h, y: f(h, w, y).mean()

    @jax.jit
    def grads():
      return (
        jax.grad(mean_loss)(w, h, y),
        jax.vmap(jax.grad(mean_loss), in_axes=(None, 0, 0))(w, h_3, y_3).mean(axis=0),
        jax.grad(lambda w: jax.vmap(lambda h, y: mean_loss(w, h, y))(h_3, y_3).mean())(w),
        jax.grad(jax.checkpoint(mean_loss))(w, h, y),
      )

    want, *others = grads()
    for got in others:
      np.testing.assert_allclose(got, want, rtol=1e-12 if X64 else 1e-5, atol=1e-15)

  def test_one_trace_for_new_values(self):
    f = jax.jit(chex.assert_max_traces(lambda h, w, y, s: self.f(h, w, y, weights=s).sum(), n=1))
    rng = np.random.default_rng(17)
    for _ in range(3):
      f(self.h, self.w, rng.integers(0, 40, 24).astype(np.int32), rng.random(24).astype(DTYPE))


class MemoryTest(chex.TestCase):
  def test_no_tokens_by_vocab_temporary(self):
    # value_and_grad w.r.t. hidden and weight with a per-token cotangent (the graph holds
    # both the fused path and the recompute). N·V·4 bytes = 64 MiB at N = 2048; ours holds
    # a [128, V] chunk of logits, the [D, V] and [N, D] gradients and small blocks.
    d, v = 64, 8192

    def temp_bytes(loss, n):
      h = jax.ShapeDtypeStruct((n, d), jnp.float32)
      w = jax.ShapeDtypeStruct((d, v), jnp.float32)
      y = jax.ShapeDtypeStruct((n,), jnp.int32)
      compiled = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(h, w, y).compile()
      return compiled.memory_analysis().temp_size_in_bytes

    def ours(h, w, y):
      c = jnp.linspace(0, 1, h.shape[0], dtype=jnp.float32)
      return (c * xj.linear_softmax_cross_entropy(h, w, y, chunk_size=128)).sum()

    naive = lambda h, w, y: optax.softmax_cross_entropy_with_integer_labels(h @ w, y).mean()
    n = 2048
    self.assertGreaterEqual(temp_bytes(naive, n), 2 * n * v * 4)  # logits and their gradient
    small, large = temp_bytes(ours, n), temp_bytes(ours, 4 * n)
    self.assertLess(small, n * v * 4 / 4)
    # 3N more tokens add [N, D]-sized arrays (per-token gradients, statistics), not [N, V].
    self.assertLess(large - small, 4 * (3 * n) * d * 4)

  def test_second_derivatives_hold_no_tokens_by_vocab_temporary(self):
    # Hessian-vector products three ways (grad of grad, jvp of grad, grad of jvp) w.r.t.
    # hidden and weight. 3N more tokens may add [N, D]-sized arrays, never an [N, V] one:
    # grad of grad kept every chunk's logits (7x N·V·4 bytes at N, D, V = 16384, 32, 8192).
    d, v = 16, 4096

    def loss(h, w, y):
      return xj.linear_softmax_cross_entropy(h, w, y, chunk_size=64).mean()

    grad = jax.grad(loss, (0, 1))
    products = {
      "grad of grad": lambda h, w, y: jax.grad(
        lambda h, w: sum(jnp.vdot(g, t) for g, t in zip(grad(h, w, y), (h, w), strict=True)),
        (0, 1),
      )(h, w),
      "jvp of grad": lambda h, w, y: jax.jvp(lambda h, w: grad(h, w, y), (h, w), (h, w))[1],
      "grad of jvp": lambda h, w, y: jax.grad(
        lambda h, w: jax.jvp(lambda h, w: loss(h, w, y), (h, w), (h, w))[1], (0, 1)
      )(h, w),
    }

    def temp_bytes(fn, n):
      h = jax.ShapeDtypeStruct((n, d), jnp.float32)
      w = jax.ShapeDtypeStruct((d, v), jnp.float32)
      y = jax.ShapeDtypeStruct((n,), jnp.int32)
      return jax.jit(fn).lower(h, w, y).compile().memory_analysis().temp_size_in_bytes

    n = 1024
    for name, fn in products.items():
      growth = temp_bytes(fn, 4 * n) - temp_bytes(fn, n)
      self.assertLess(growth, (3 * n) * v * 4 / 16, name)

  def test_weight_gradient_is_accumulated_in_its_output(self):
    # No [D, V] temporary: ∂/∂W is summed in its output buffer (not a loop carry copied
    # out), and W's gradient-pass slices are not hoisted into a blocked copy of W.
    n, d, v = 256, 512, 16384
    h = jax.ShapeDtypeStruct((n, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    c = jnp.linspace(0, 1, n, dtype=jnp.float32)
    f = functools.partial(xj.linear_softmax_cross_entropy, chunk_size=16)
    # Live at once: [16, V] logits, three [D, 2048] gradient pieces, [N, D] per-token ∂/∂h.
    losses = {
      "mean": lambda h, w, y: f(h, w, y).mean(),
      "per-token": lambda h, w, y: (c * f(h, w, y)).sum(),
    }
    for name, loss in losses.items():
      compiled = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(h, w, y).compile()
      memory = compiled.memory_analysis()
      self.assertGreaterEqual(memory.output_size_in_bytes, 4 * (n * d + d * v), name)
      self.assertLess(memory.temp_size_in_bytes, d * v * 4 * 0.6, name)


class BadInputTest(chex.TestCase):
  def test_errors_name_the_argument(self):
    h, w, b, y = _inputs(18, 4, 8, 10)
    f = xj.linear_softmax_cross_entropy
    cases = (
      (ValueError, "disagree on D", lambda: f(h[:, :7], w, y)),
      (ValueError, "`weight` must have shape", lambda: f(h, w[0], y)),
      (ValueError, "`labels` must have shape", lambda: f(h, w, y[:3])),
      (TypeError, "`labels` must hold integer", lambda: f(h, w, y.astype(DTYPE))),
      (TypeError, "`hidden` must be a floating", lambda: f(h.astype(np.int32), w, y)),
      (TypeError, "`where` must be a boolean", lambda: f(h, w, y, where=np.ones(4))),
      (ValueError, "`bias` must have shape", lambda: f(h, w, y, bias=b[:5])),
      (ValueError, "`weights` of shape", lambda: f(h, w, y, weights=np.ones(3, DTYPE))),
      (ValueError, "`chunk_size` must be a positive", lambda: f(h, w, y, chunk_size=-1)),
      (TypeError, "`chunk_size` must be a Python int", lambda: f(h, w, y, chunk_size=2.5)),
      (ValueError, "`vocab_chunk_size` must be a positive", lambda: f(h, w, y, vocab_chunk_size=0)),
      (ValueError, "`logit_softcap` must be finite and > 0", lambda: f(h, w, y, logit_softcap=0.0)),
      (ValueError, "`z_loss` must be finite and ≥ 0", lambda: f(h, w, y, z_loss=-1.0)),
      (ValueError, "`label_smoothing` must be in", lambda: f(h, w, y, label_smoothing=2.0)),
      (ValueError, "`base` must be", lambda: f(h, w, y, base=1.0)),
      (TypeError, "`ignore_index` must be a Python int", lambda: f(h, w, y, ignore_index=0.5)),
    )
    for error, message, call in cases:
      with self.assertRaisesRegex(error, message):
        call()


if __name__ == "__main__":
  absltest.main()
