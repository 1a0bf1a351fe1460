"""Focal and poly-1 losses, pos_weight and the other torch/keras/optax options, against mpmath.

The references are the losses' defining formulas evaluated in mpmath at 50 digits; their
derivatives are mpmath's numerical derivatives of those formulas (exact to far more digits
than float64 holds), and each entry's inherent condition Σ_i |∂f/∂x_i|·ulp(x_i) comes from
the same derivatives (SPEC §2's tolerance: rtol, or 4x the change that rounding the inputs
causes).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
from absl.testing import absltest, parameterized

import xent_jax as xj
from tests.library import _grids
from tests.library import _mp_reference as ref

jax.config.update("jax_numpy_rank_promotion", "raise")
mpmath.mp.dps = 50


def _mp_sigmoid(z):
  return 1 / (1 + mpmath.exp(-z))


def _mul0(a, b):
  return a * b if a else a  # 0 · inf = 0: a certain label contributes nothing


def _mp_focal(z, y, gamma, alpha=None):
  """α_t (1 - p_t)^γ H(y, σ(z)) with 1 - p_t = y σ(-z) + (1-y) σ(z); z = ±inf allowed."""
  ce = _mul0(y, mpmath.log1p(mpmath.exp(-z))) + _mul0(1 - y, mpmath.log1p(mpmath.exp(z)))
  m = y * _mp_sigmoid(-z) + (1 - y) * _mp_sigmoid(z)
  out = ce * (m**gamma if gamma else 1)
  return out if alpha is None else (alpha * y + (1 - alpha) * (1 - y)) * out


def _mp_focal_partials(z, y, gamma):
  """(value, ∂/∂z, ∂/∂y, ∂/∂γ) of the focal loss, in closed form."""
  s, sn = _mp_sigmoid(z), _mp_sigmoid(-z)
  ce = y * mpmath.log1p(mpmath.exp(-z)) + (1 - y) * mpmath.log1p(mpmath.exp(z))
  m = y * sn + (1 - y) * s
  # log m as log1p(-p_t) when m is near 1 (50 digits cannot hold 1 - 1e-304 otherwise).
  log_m = mpmath.log(m) if m < 0.5 else mpmath.log1p(-(y * s + (1 - y) * sn))
  w = mpmath.exp(gamma * log_m) if gamma else mpmath.mpf(1)
  dw = gamma * mpmath.exp((gamma - 1) * log_m) if gamma else mpmath.mpf(0)  # ∂m^γ/∂m
  return (
    ce * w,
    ((1 - y) * s - y * sn) * w + ce * dw * (1 - 2 * y) * s * sn,  # σ(z) - y, no 1 - 1
    -z * w + ce * dw * (sn - s),
    ce * w * log_m,
  )


@ref.jet("sigmoid_focal_loss", ("logits", "labels"))
def _jet_sigmoid_focal_loss(row, kept, gamma=2.0, alpha=None):
  """The mpmath reference of ``sigmoid_focal_loss``: the value
  :func:`_mp_focal`, its derivatives at finite logits numerical (mpmath.diff)."""
  (z,), (y,) = row["logits"], row["labels"]
  gamma = mpmath.mpf(float(gamma))
  alpha = None if alpha is None else mpmath.mpf(float(alpha))

  def f(z, y):
    return _mp_focal(z, y, gamma, alpha)

  if not mpmath.isfinite(z):  # the value only: mpmath.diff needs a finite point
    return ref.Jet(f(z, y), {"logits": [mpmath.nan], "labels": [mpmath.nan]}, {})
  grad, hess = ref.numeric_derivatives(f, [z, y], [0, 1])
  return ref.Jet(
    f(z, y),
    {"logits": [grad[0]], "labels": [grad[1]]},
    {
      (a, b): [[hess[(i, j)]]]
      for i, a in enumerate(("logits", "labels"))
      for j, b in enumerate(("logits", "labels"))
    },
  )


def _focal_of_logit(z, label):
  return _mp_focal(z, mpmath.mpf(label), 2)


def _ulp(x, dtype):
  x = np.asarray(x, dtype)
  return float(np.spacing(np.abs(x)))


def _reference(f, args, ulps, grad_index=None):
  """Value of f (or ∂f/∂args[grad_index]) at mpf ``args``, and its Σ|∂·/∂x_i|·ulp_i."""
  args = [mpmath.mpf(float(a)) for a in args]
  base = [0] * len(args)
  if grad_index is not None:
    base[grad_index] = 1
  value = mpmath.diff(f, args, tuple(base))
  cond = mpmath.mpf(0)
  for i, u in enumerate(ulps):
    if u:
      order = list(base)
      order[i] += 1
      cond += abs(mpmath.diff(f, args, tuple(order))) * u
  return float(value), float(cond)


def _focal_grid(dtype):
  big = _grids.MAX_LOGIT[np.dtype(dtype)]
  zs = [-big, -30.0, -3.0, -0.5, 0.0, 2.0, 20.0, 40.0, big]
  ys = [0.0, 1.0, 0.3, 1e-6]
  gammas = [0.0, 0.5, 2.0, 5.0]
  rows = [(z, y, g) for z in zs for y in ys for g in gammas]
  z, y, g = (np.array(c, dtype) for c in zip(*rows, strict=True))
  return z, y, g


@functools.cache
def _focal_refs(dtype):
  return _focal_refs_at(*_focal_grid(dtype), dtype)


def _focal_refs_at(z, y, g, dtype):
  """Closed-form values and partials; conditions from mpmath derivatives of them in z (and
  in y inside (0, 1): at y = 0 or 1 a central difference would leave the domain)."""
  out = [([], []) for _ in range(4)]
  for zi, yi, gi in zip(z, y, g, strict=True):
    zm, ym, gm = (mpmath.mpf(float(a)) for a in (zi, yi, gi))
    parts = _mp_focal_partials(zm, ym, gm)
    d_z = mpmath.diff(lambda t, y=ym, g=gm: mpmath.matrix(_mp_focal_partials(t, y, g)), zm)
    d_y = (
      mpmath.diff(lambda t, z=zm, g=gm: mpmath.matrix(_mp_focal_partials(z, t, g)), ym)
      if 0 < yi < 1
      else mpmath.matrix([0] * 4)
    )
    for k in range(4):
      cond = abs(d_z[k]) * _ulp(zi, dtype) + abs(d_y[k]) * _ulp(yi, dtype)
      out[k][0].append(float(parts[k]))
      out[k][1].append(float(cond))
  return [ref.Ref(np.array(v), np.array(c)) for v, c in out]


class SigmoidFocalLossTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params())
  def test_value_and_partials_match_mpmath(self, dtype):
    z, y, g = _focal_grid(dtype)
    refs = _focal_refs(dtype)
    f = jax.jit(lambda z, y, g: xj.sigmoid_focal_loss(z, y, gamma=g))
    ref.assert_accurate(f(z, y, g), refs[0], dtype, name="sigmoid_focal_loss")
    # Reverse mode, each argument, and forward mode for the logits.
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=(0, 1, 2)))(z, y, g)
    for i, name in enumerate(("logits", "labels", "gamma")):
      ref.assert_accurate(grads[i], refs[i + 1], dtype, name=f"d focal / d {name}")
    _, tangent = jax.jit(lambda z: jax.jvp(lambda z: f(z, y, g), (z,), (jnp.ones_like(z),)))(z)
    ref.assert_accurate(tangent, refs[1], dtype, name="jvp focal")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_products_of_a_weight_below_the_normal_range(self, dtype):
    # (1 - p_t)^γ below the normal range where its products are not: at z = 44, y = 1,
    # γ = 2 in float32, m^γ = 6e-39 (flushed to 0 on the CPU) and ∂FL/∂y = -44·m^γ... =
    # -2.8e-37 came out 0, as did ∂²FL/∂z∂y (5.5e-37) one way round.
    if dtype == np.float32:
      rows = [(44.0, 1.0, 2.0), (-44.0, 0.0, 2.0), (18.0, 1.0, 5.0), (30.0, 1.0, 3.0)]
    else:
      rows = [(60.0, 1.0, 11.83), (-60.0, 0.0, 11.83), (50.0, 1.0, 14.2), (65.0, 1.0, 10.92)]
    z, y, g = (np.array(c, dtype) for c in zip(*rows, strict=True))
    refs = _focal_refs_at(z, y, g, dtype)
    f = jax.jit(lambda z, y, g: xj.sigmoid_focal_loss(z, y, gamma=g))
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=(0, 1, 2)))(z, y, g)
    for i, name in enumerate(("logits", "labels", "gamma")):
      ref.assert_accurate(grads[i], refs[i + 1], dtype, name=f"d focal / d {name}")
    _, tangent = jax.jit(lambda y: jax.jvp(lambda y: f(z, y, g), (y,), (jnp.ones_like(y),)))(y)
    ref.assert_accurate(tangent, refs[2], dtype, name="jvp focal / d labels")
    # The mixed second derivative, both ways round: ∂/∂z of the closed-form ∂FL/∂y (a
    # difference in y would leave the domain at y = 1).
    mixed = jax.jit(jax.vmap(jax.hessian(f, argnums=(0, 1))))(z, y, g)
    exact = []
    for a, b, c in rows:
      b, c = mpmath.mpf(b), mpmath.mpf(c)
      exact.append(float(mpmath.diff(lambda t, b=b, c=c: _mp_focal_partials(t, b, c)[2], a)))
    # Terms of the sum below the normal range are flushed (SPEC §2): an absolute error of
    # the smallest normal float is allowed, not the 0 (float64) or 93% (float32) it was.
    tiny = np.finfo(dtype).tiny
    np.testing.assert_allclose(mixed[0][1], exact, rtol=1e-4, atol=tiny)
    np.testing.assert_allclose(mixed[1][0], exact, rtol=1e-4, atol=tiny)
    # Where 1 - p_t is small, d log(1 - p_t) nears the float range; the second derivatives
    # there stay finite (a scaled JVP overflowed to inf at z = 355 in float64).
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    zb = np.array([big / 2, big, -big / 2, -big, big], dtype)
    yb = np.array([1.0, 1.0, 0.0, 0.0, 0.5], dtype)
    hess = jax.jit(jax.vmap(jax.hessian(f, argnums=(0, 1))))(zb, yb, np.full_like(zb, 2.0))
    self.assertTrue(np.all(np.isfinite(np.array(hess))), hess)
    # Beyond the grid, where d log(1 - p_t)/dy overflows in float32, the logits' second
    # derivative is still right, not NaN (it was NaN: a zero tangent times that inf).
    far = np.array([100.0, 355.0, 1e6], dtype)
    hess_z = jax.jit(jax.vmap(jax.hessian(f)))(far, np.ones_like(far), np.full_like(far, 2.0))
    one, two = mpmath.mpf(1), mpmath.mpf(2)
    exact_z = [float(mpmath.diff(lambda t: _mp_focal_partials(t, one, two)[1], a)) for a in far]
    np.testing.assert_allclose(hess_z, exact_z, rtol=1e-4, atol=tiny)

  @parameterized.named_parameters(_grids.dtype_params(alpha=(None, 0.25)))
  def test_second_derivatives_in_the_labels_at_hard_labels(self, dtype, alpha):
    # A confident, correct prediction (z > 0 with y = 1, z < 0 with y = 0): 1 - p_t = σ(-|z|)
    # is small, and the label derivatives divide by it. ∂²FL/∂y² was -inf at z = 45-69
    # (float32; the derivative of 1/m alone, 1/m², overflowed), NaN or -inf for γ < 1 and
    # half its value for γ = 2 in the log-space formulas (z > 69, and float64 z ≥ 355), and
    # with α, reverse over reverse was NaN for γ < 1 at every such point (0^γ's derivative
    # in a branch not taken).
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    zs = [1.0, 20.0, 50.0, 60.0, 75.0, big] if dtype == np.float32 else [1.0, 50.0, 355.0, big]
    rows = [(s * a, (1 + s) / 2, g) for a in zs for s in (1, -1) for g in (0.0, 0.5, 1.0, 2.0)]
    z, y, g = (np.array(c, dtype) for c in zip(*rows, strict=True))

    def loss(z, y, g):
      return xj.sigmoid_focal_loss(z, y, gamma=g, alpha=alpha)

    hess = jax.jit(jax.vmap(jax.hessian(loss, argnums=(0, 1))))(z, y, g)
    al = None if alpha is None else mpmath.mpf(alpha)

    def d_y(zm, ym, gm):  # ∂(α_t FL)/∂y in closed form
      fl, _, fl_y, _ = _mp_focal_partials(zm, ym, gm)
      return fl_y if al is None else (al * ym + (1 - al) * (1 - ym)) * fl_y + (2 * al - 1) * fl

    def d_yy(zm, ym, gm):  # ∂²/∂y²: m and ce are linear in y
      s, sn = _mp_sigmoid(zm), _mp_sigmoid(-zm)
      ce = ym * mpmath.log1p(mpmath.exp(-zm)) + (1 - ym) * mpmath.log1p(mpmath.exp(zm))
      m, m_y = ym * sn + (1 - ym) * s, sn - s
      fl_yy = gm * (gm - 1) * m ** (gm - 2) * m_y**2 * ce + 2 * gm * m ** (gm - 1) * m_y * -zm
      if al is None:
        return fl_yy
      a_t = al * ym + (1 - al) * (1 - ym)
      return a_t * fl_yy + 2 * (2 * al - 1) * _mp_focal_partials(zm, ym, gm)[2]

    refs = {"yy": ([], []), "zy": ([], [])}
    for zi, yi, gi in rows:
      zm, ym, gm = (mpmath.mpf(float(a)) for a in (zi, yi, gi))
      for key, fn in (("yy", d_yy), ("zy", lambda t, y, g: mpmath.diff(lambda u: d_y(u, y, g), t))):
        refs[key][0].append(float(fn(zm, ym, gm)))
        # the inherent change: z rounded by one ulp (y and γ are exact)
        slope = mpmath.diff(lambda t, fn=fn, ym=ym, gm=gm: fn(t, ym, gm), zm)
        refs[key][1].append(float(abs(slope)) * _ulp(zi, dtype))
    yy, zy = (ref.Ref(np.array(v), np.array(c)) for v, c in refs.values())
    ref.assert_accurate(hess[1][1], yy, dtype, name="d2 focal / d labels2")
    ref.assert_accurate(hess[0][1], zy, dtype, name="d2 focal / d logits d labels")
    ref.assert_accurate(hess[1][0], zy, dtype, name="d2 focal / d labels d logits")
    # Reverse over reverse: finite everywhere, and ∂²/∂y² exact where it keeps every term
    # (see the README): the small margins, and γ ≤ 1 everywhere on the grid.
    rev = jax.jit(jax.vmap(jax.jacrev(jax.grad(loss, argnums=(0, 1)), argnums=(0, 1))))(z, y, g)
    self.assertTrue(np.all(np.isfinite(np.array(rev))), rev)
    keep = (np.abs(z) <= 1) | (g <= 1)
    ref.assert_accurate(rev[1][1][keep], ref.Ref(*(a[keep] for a in yy)), dtype, name="rev yy")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_soft_labels_next_to_zero_at_large_margins(self, dtype):
    # A soft label next to 0 at a large margin: m = 1 - p_t ≈ y is well conditioned, while
    # log m (-46 to -69) rounds by up to 3.8e-6 in float32. Products m^γ·x formed from log m
    # (∂FL/∂y at z = -60.9, y = 1e-20, γ = 2: 1.83e-38, a normal float) and the ratios
    # (σ(-z) - σ(z))/m formed as e^{x - log m} (∂²FL/∂y² at z = -80, y = 1e-30) were 2-3e-6
    # off; each now takes m itself.
    if dtype == np.float32:
      rows = [(-60.877686, 1e-20), (-45.071754, 1e-20), (-80.0, 1e-30), (-75.0, 1e-30)]
    else:
      rows = [(-150.0, 1e-62), (-500.0, 1e-200), (-700.0, 1e-290)]
    z, y = (np.array(c, dtype) for c in zip(*rows, strict=True))
    g = np.full_like(z, 2.0)
    f = lambda z, y, g: xj.sigmoid_focal_loss(z, y, gamma=g)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=(0, 1, 2)))(z, y, g)
    hess_yy = jax.jit(jax.vmap(jax.hessian(f, argnums=1)))(z, y, g)

    def d_yy(zm, ym, gm):  # ∂²FL/∂y² in closed form (m and ce are linear in y)
      s, sn = _mp_sigmoid(zm), _mp_sigmoid(-zm)
      ce = ym * mpmath.log1p(mpmath.exp(-zm)) + (1 - ym) * mpmath.log1p(mpmath.exp(zm))
      m, m_y = ym * sn + (1 - ym) * s, sn - s
      return gm * (gm - 1) * m ** (gm - 2) * m_y**2 * ce + 2 * gm * m ** (gm - 1) * m_y * -zm

    fns = [lambda *a, k=k: _mp_focal_partials(*a)[k] for k in (1, 2, 3)] + [d_yy]
    refs = [([], []) for _ in fns]
    for zi, yi in rows:
      zm, ym, gm = mpmath.mpf(float(dtype(zi))), mpmath.mpf(float(dtype(yi))), mpmath.mpf(2)
      for (values, conds), fn in zip(refs, fns, strict=True):
        values.append(float(fn(zm, ym, gm)))
        slope_z = mpmath.diff(lambda t, fn=fn, y=ym, g=gm: fn(t, y, g), zm)
        step = ym * mpmath.mpf(10) ** -20  # y > 0 is tiny: a step relative to it
        slope_y = mpmath.diff(lambda u, fn=fn, z=zm, g=gm: fn(z, u, g), ym, h=step)
        conds.append(float(abs(slope_z) * _ulp(zi, dtype) + abs(slope_y) * _ulp(yi, dtype)))
    refs = [ref.Ref(np.array(v), np.array(c)) for v, c in refs]
    names = ("d/d logits", "d/d labels", "d/d gamma", "d2/d labels2")
    for got, want, name in zip((*grads, hess_yy), refs, names, strict=True):
      ref.assert_accurate(got, want, dtype, name=f"focal {name}")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_alpha_weights_and_hessian(self, dtype):
    z = np.array([-4.0, 0.5, 20.0, 3.0], dtype)
    y = np.array([1.0, 0.0, 1.0, 0.7], dtype)
    got = xj.sigmoid_focal_loss(z, y, alpha=0.25, gamma=2.0)
    exact = [
      float(_mp_focal(mpmath.mpf(float(a)), mpmath.mpf(float(b)), 2, mpmath.mpf(0.25)))
      for a, b in zip(z, y, strict=True)
    ]
    np.testing.assert_allclose(got, exact, rtol=2 * ref.RTOL[np.dtype(dtype)])
    hess = jax.jit(jax.hessian(lambda z: jnp.sum(xj.sigmoid_focal_loss(z, y))))(z)
    second = [
      float(mpmath.diff(functools.partial(_focal_of_logit, label=float(b)), float(a), 2))
      for a, b in zip(z, y, strict=True)
    ]
    np.testing.assert_allclose(np.diag(hess), second, rtol=1e-4)
    np.testing.assert_array_equal(hess - np.diag(np.diag(hess)), 0)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_hessian_finite_where_one_minus_p_squared_underflows(self, dtype):
    # 1 - p_t = σ(-50) ≈ 2e-22: its square underflows in float32, and a plain a/b in the
    # partials made the Hessian 0·inf = NaN there (optax's test_extreme_logits_...).
    z, y = np.array([50.0, -50.0, 44.0], dtype), np.array([1.0, 0.0, 1.0], dtype)
    hess = jax.jit(jax.hessian(lambda z: jnp.sum(xj.sigmoid_focal_loss(z, y, gamma=0.5))))(z)
    second = [
      float(mpmath.diff(lambda t, b=float(b): _mp_focal(t, mpmath.mpf(b), 0.5), float(a), 2))
      for a, b in zip(z, y, strict=True)
    ]
    np.testing.assert_allclose(np.diag(hess), second, rtol=1e-4)

  @parameterized.named_parameters(_grids.dtype_params(alpha=(None, 0.25, 0.0)))
  def test_infinite_logits_have_the_limits_as_derivatives(self, dtype, alpha):
    # At z = ±inf the value is 0 or inf and each first derivative has a limit: finite in z
    # (-1 at z = -inf, y = 1), ±inf in y where the loss is infinite. The oracle is the
    # closed form at z = ±1e400, where e^{-|z|} is below any float. They were NaN (inf·0,
    # and inf - inf in ∂/∂y with α).
    rows = [(s * np.inf, y) for s in (-1, 1) for y in (0.0, 1.0, 0.3)]
    z, y = (np.array(c, dtype) for c in zip(*rows, strict=True))
    g, a = np.full_like(z, 2.0), np.full_like(z, 0.5 if alpha is None else alpha)

    def loss(z, y, g, a):
      return xj.sigmoid_focal_loss(z, y, gamma=g, alpha=None if alpha is None else a)

    value = jax.jit(loss)(z, y, g, a)
    grads = jax.jit(jax.grad(lambda *x: jnp.sum(loss(*x)), argnums=(0, 1, 2, 3)))(z, y, g, a)
    ones = np.ones_like(z)
    _, tangent = jax.jit(lambda: jax.jvp(lambda z, y: loss(z, y, g, a), (z, y), (ones, ones)))()
    hess = jax.jit(jax.vmap(jax.hessian(lambda z, y: loss(z, y, 2.0, a[0]))))(z, y)
    exact = []
    for zi, yi in rows:
      zm, ym = mpmath.mpf("1e400") * int(np.sign(zi)), mpmath.mpf(yi)
      fl, fl_z, fl_y, fl_g = _mp_focal_partials(zm, ym, 2)
      a_t = 1 if alpha is None else alpha * ym + (1 - alpha) * (1 - ym)
      d_alpha = 0 if alpha is None else _mul0(2 * ym - 1, fl)
      d_y = fl_y if alpha is None else (2 * alpha - 1) * fl + a_t * fl_y
      exact.append([_mul0(a_t, fl), a_t * fl_z, d_y, _mul0(a_t, fl_g), d_alpha])
    exact = np.array(exact, np.float64).astype(dtype).T
    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    for got, want, name in zip(
      (value, *grads), exact, ("value", "z", "y", "gamma", "alpha"), strict=True
    ):
      np.testing.assert_allclose(got, want, rtol=rtol, err_msg=name)
    np.testing.assert_allclose(tangent, exact[1] + exact[2], rtol=rtol, err_msg="jvp")
    # FL - |z| m^(γ+1) and its derivatives decay like |z| e^{-|z|}: ∂²/∂z² → 0.
    np.testing.assert_array_equal(hess, 0.0)

  def test_matches_optax_where_optax_is_accurate(self):
    rng = np.random.default_rng(0)
    z = rng.normal(size=64).astype(np.float32) * 3
    y = (rng.uniform(size=64) > 0.5).astype(np.float32)
    for alpha, gamma in [(None, 2.0), (0.25, 2.0), (0.5, 0.0), (None, 1.5)]:
      np.testing.assert_allclose(
        xj.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma),
        optax.losses.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma),
        rtol=2e-6,
        atol=1e-7,
      )

  def test_bad_options(self):
    with self.assertRaisesRegex(ValueError, "gamma"):
      xj.sigmoid_focal_loss(np.zeros(2), np.zeros(2), gamma=-1.0)
    with self.assertRaisesRegex(ValueError, "alpha"):
      xj.sigmoid_focal_loss(np.zeros(2), np.zeros(2), alpha=1.5)
    with self.assertRaisesRegex(ValueError, "labels"):
      xj.sigmoid_focal_loss(np.zeros(2), np.zeros(3))


def _mp_poly(z_row, t_row, eps):
  """H(t, softmax z) + ε Σ_j t_j (1 - q_j), at mpf inputs (-inf logits allowed)."""
  m = max(z_row)
  s = mpmath.fsum(mpmath.exp(zj - m) for zj in z_row if zj != mpmath.ninf)
  log_q = [zj - m - mpmath.log(s) if zj != mpmath.ninf else mpmath.ninf for zj in z_row]
  ce = -mpmath.fsum(tj * lq for tj, lq in zip(t_row, log_q, strict=True) if tj)
  u = mpmath.fsum(tj * -mpmath.expm1(lq) for tj, lq in zip(t_row, log_q, strict=True) if tj)
  return ce + eps * u


@ref.jet("poly_loss_cross_entropy", ("logits", "targets"))
def _jet_poly_loss_cross_entropy(row, kept, epsilon=2.0):
  """Σ_j t_j (-log q_j + ε (1 - q_j)) over the kept classes, q = softmax(z): the logit
  derivatives numerical (mpmath.diff), the target ones -log q_j + ε (1 - q_j) (ε on an
  impossible class of target 0: 0·log 0 = 0 is a constant)."""
  z, t = row["logits"], row["targets"]
  c, eps = len(z), mpmath.mpf(float(epsilon))
  present = [k for k in range(c) if kept[k] and z[k] != ref.NINF]

  lost = any(kept[k] and z[k] == ref.NINF and t[k] for k in range(c))  # t > 0 = q: +inf

  def f(*zs):
    # Not softmax_row: its memo would hand mpmath.diff's raised-precision evaluations a
    # 50-digit value at the centre point.
    if lost:
      return ref.INF
    m = max(zs)
    log_norm = m + mpmath.log(mpmath.fsum(mpmath.exp(zk - m) for zk in zs))
    return mpmath.fsum(
      t[k] * (log_norm - zk - eps * mpmath.expm1(zk - log_norm))
      for k, zk in zip(present, zs, strict=True)
      if t[k]
    )

  point = [z[k] for k in present]
  grad, hess = ref.numeric_derivatives(f, point, list(range(len(point))))
  sm = ref.softmax_row(z, kept)
  grad_z, grad_t, hzz = ref.zeros(c), ref.zeros(c), ref.matrix(c)
  for i, k in enumerate(present):
    grad_z[k] = grad[i]
    for j, m in enumerate(present):
      hzz[k][m] = hess[(i, j)]
  for k in range(c):
    if kept[k]:
      if sm.present[k]:
        grad_t[k] = -sm.log_p[k] + eps * ref.one_minus_exp(sm.log_p[k])
      else:
        grad_t[k] = eps if t[k] == 0 else ref.INF
  return ref.Jet(f(*point), {"logits": grad_z, "targets": grad_t}, {("logits", "logits"): hzz})


def _poly_rows(dtype):
  z = np.array(
    [[0.0, -20.0, -20.0], [0.0, -80.0, -3.0], [1.0, 2.0, 3.0], [5.0, -np.inf, 4.0]], dtype
  )
  t = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5], [0.0, 0.0, 1.0]], dtype)
  return z, t


class PolyLossTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params())
  def test_gradient_next_to_a_dominant_soft_target(self, dtype):
    # t = [1 - r, r] with a small r: ∂L/∂z_0 involves r_0 = Σt - t_0 = r, which the
    # rounded Σt lost (4e-4 relative in float32). Oracle: mpmath's derivative of
    # Σ_j t_j (-log q_j + ε (1 - q_j)) at the targets as stored.
    r = 8.238849e-05 if dtype == np.float32 else 3.3e-13
    t = np.array([1 - r, r], dtype)
    zs = np.array([[0.0, -20.0], [0.0, -80.0], [3.0, 1.0]], dtype)

    @jax.jit
    def grads(z):
      f = lambda z, eps: jnp.sum(xj.poly_loss_cross_entropy(z, t[None], epsilon=eps))
      return jnp.stack([jax.grad(f)(z, eps) for eps in (1.0, 0.0, -1.0)])

    t0, t1 = (mpmath.mpf(float(v)) for v in t)

    def loss(z0, z1, eps):
      q0 = 1 / (1 + mpmath.exp(z1 - z0))
      q1 = 1 / (1 + mpmath.exp(z0 - z1))
      return -t0 * mpmath.log(q0) - t1 * mpmath.log(q1) + eps * (t0 * q1 + t1 * q0)

    for z in zs:
      z0, z1 = (mpmath.mpf(float(v)) for v in z)
      want = [
        [float(mpmath.diff(lambda a, e=eps, b=z1: loss(a, b, e), z0))] for eps in (1.0, 0.0, -1.0)
      ]
      got = grads(jnp.asarray(z[None]))[:, 0, :1]
      np.testing.assert_allclose(got, want, rtol=4 * ref.RTOL[np.dtype(dtype)], err_msg=str(z))

  @parameterized.named_parameters(_grids.dtype_params(epsilon=(2.0, -1.0)))
  def test_value_and_gradient_match_mpmath(self, dtype, epsilon):
    z, t = _poly_rows(dtype)
    got = jax.jit(lambda z: xj.poly_loss_cross_entropy(z, t, epsilon=epsilon))(z)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(xj.poly_loss_cross_entropy(z, t, epsilon=epsilon))))(
      z
    )
    values, conds, gvals, gconds = [], [], [], []
    for zr, tr in zip(z, t, strict=True):
      finite = [j for j in range(3) if np.isfinite(zr[j])]

      def f(*zs, zr=zr, tr=tr, finite=finite):
        row = [mpmath.ninf] * 3
        for j, zj in zip(finite, zs, strict=True):
          row[j] = zj
        return _mp_poly(row, [mpmath.mpf(float(x)) for x in tr], epsilon)

      ulps = [_ulp(zr[j], dtype) for j in finite]
      args = [zr[j] for j in finite]
      v, c = _reference(f, args, ulps)
      values.append(v)
      conds.append(c)
      row_g, row_c = [0.0] * 3, [0.0] * 3
      for k, j in enumerate(finite):
        row_g[j], row_c[j] = _reference(f, args, ulps, grad_index=k)
      gvals.append(row_g)
      gconds.append(row_c)
    ref.assert_accurate(got, ref.Ref(np.array(values), np.array(conds)), dtype, name="poly")
    ref.assert_accurate(
      grad, ref.Ref(np.array(gvals), np.array(gconds)), dtype, name="grad poly wrt logits"
    )

  def test_target_gradient_on_an_impossible_class(self):
    # ∂/∂t_j = -log q_j + ε(1 - q_j): ε where q_j = 0 = t_j (0·log 0 = 0 is a constant,
    # as in softmax_cross_entropy), +inf where t_j > 0.
    z = np.array([[-np.inf, 0.5, 2.0], [-np.inf, 0.5, 2.0]], np.float32)
    t = np.array([[0.0, 0.5, 0.5], [0.25, 0.25, 0.5]], np.float32)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(xj.poly_loss_cross_entropy(z, t, epsilon=1.5))))(t)
    np.testing.assert_array_equal(grad[:, 0], [1.5, np.inf])
    log_q = z[0, 1:] - np.log(np.sum(np.exp(z[0, 1:].astype(np.float64))))
    np.testing.assert_allclose(grad[0, 1:], -log_q + 1.5 * (1 - np.exp(log_q)), rtol=1e-6)

  def test_matches_optax_for_one_hot_targets_at_moderate_margins(self):
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(16, 5)) * 2).astype(np.float32)
    t = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 16)]
    for eps in (2.0, -1.0, 0.0):
      np.testing.assert_allclose(
        xj.poly_loss_cross_entropy(z, t, epsilon=eps),
        optax.losses.poly_loss_cross_entropy(z, t, epsilon=eps),
        rtol=2e-6,
      )

  def test_where_excludes_garbage_exactly(self):
    z = np.array([[0.0, 1.0, np.nan], [2.0, -1.0, np.inf]], np.float32)
    t = np.array([[0.5, 0.5, np.nan], [1.0, 0.0, 7.0]], np.float32)
    where = np.array([[True, True, False], [True, True, False]])
    f = jax.jit(functools.partial(xj.poly_loss_cross_entropy, where=where))
    got = f(z, t)
    np.testing.assert_allclose(got, xj.poly_loss_cross_entropy(z[:, :2], t[:, :2]), rtol=1e-6)
    grads = jax.jit(jax.grad(lambda z, t: jnp.sum(f(z, t)), argnums=(0, 1)))(z, t)
    for g in grads:
      np.testing.assert_array_equal(np.asarray(g)[:, 2], 0)
      self.assertTrue(np.all(np.isfinite(np.asarray(g))))


class BinaryOptionsTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params())
  def test_pos_weight_matches_torch_formula(self, dtype):
    # torch BCEWithLogitsLoss(pos_weight=w): -[w y log σ(z) + (1-y) log(1-σ(z))]. The last
    # finite entries are tails where e^{-z} is subnormal (flushed on CPU) and w·e^{-z} is
    # not: the loss and its gradient were 0 there (float32: 3.7e-34 at z = 100, w = 1e10).
    big = _grids.MAX_LOGIT[np.dtype(dtype)]
    tails = (100.0, 95.0, 1e10, 1e5) if dtype == np.float32 else (750.0, 720.0, 1e30, 1e10)
    z = np.array(
      [-tails[0], -big, -20.0, -1.0, 0.0, 0.5, 20.0, 30.0, big, *tails[:2], np.inf], dtype
    )
    y = np.array([0.5, 0.0, 1.0, 0.3, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype)
    w = np.array([tails[2]] + [3.0] * 8 + [*tails[2:], 3.0], dtype)

    def mp_loss(zi, yi, wi):
      return wi * yi * mpmath.log1p(mpmath.exp(-zi)) + (1 - yi) * mpmath.log1p(mpmath.exp(zi))

    f = jax.jit(lambda z, y: xj.sigmoid_binary_cross_entropy(z, y, pos_weight=w))
    got = f(z, y)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(f(z, y))))(z)
    vals, conds, gvals, gconds = [], [], [], []
    for zi, yi, wi in zip(z[:-1], y[:-1], w[:-1], strict=True):
      loss_i = functools.partial(mp_loss, wi=wi)
      v, c = _reference(loss_i, (zi, yi), [_ulp(zi, dtype), _ulp(yi, dtype)])
      gv, gc = _reference(loss_i, (zi, yi), [_ulp(zi, dtype), _ulp(yi, dtype)], 0)
      vals.append(v)
      conds.append(c)
      gvals.append(gv)
      gconds.append(gc)
    ref.assert_accurate(got[:-1], ref.Ref(np.array(vals), np.array(conds)), dtype, name="pw")
    ref.assert_accurate(
      grad[:-1], ref.Ref(np.array(gvals), np.array(gconds)), dtype, name="grad pw"
    )
    # The tails again at their exact hard label y = 1, where only z's rounding counts (the
    # rule above also allows for y moving by an ulp, which ∂/∂y = -z makes ≫ w·e^{-z}):
    # the loss is w·e^{-z}(1 + O(e^{-z})) and its z-derivative the negative of it.
    exact = np.array(
      [
        float(wi * mpmath.exp(-mpmath.mpf(float(zi))))
        for zi, wi in zip(z[-3:-1], w[-3:-1], strict=True)
      ]
    )
    tail_tol = 4 * (np.spacing(z[-3:-1]).astype(np.float64) + ref.RTOL[np.dtype(dtype)])
    np.testing.assert_array_less(np.abs(got[-3:-1] / exact - 1), tail_tol)
    np.testing.assert_array_less(np.abs(-grad[-3:-1] / exact - 1), tail_tol)
    # Reverse over reverse: ∂²/∂z² = (w·y + 1 - y)·σ(z)σ(-z); the tails' e^{-z} once
    # overflowed in an unused branch at z = -100 and made it NaN, and at entry 0 (z = -100,
    # w = 1e10) σ(z)σ(-z) was flushed before w lifted it back (0, exact 1.9e-34).
    hess = jax.jit(
      jax.vmap(
        jax.grad(jax.grad(lambda z, y, w: xj.sigmoid_binary_cross_entropy(z, y, pos_weight=w)))
      )
    )(z[:-1], y[:-1], w[:-1])
    exact = np.array(
      [
        float((wi * yi + 1 - yi) / (2 + 2 * mpmath.cosh(mpmath.mpf(float(zi)))))
        for zi, yi, wi in zip(z[:-1], y[:-1], w[:-1], strict=True)
      ]
    )
    np.testing.assert_allclose(
      hess, exact, rtol=4 * ref.RTOL[np.dtype(dtype)], atol=8 * np.finfo(dtype).tiny
    )
    self.assertEqual(float(got[-1]), 0.0)  # certain and right: 0, not 0·inf
    self.assertEqual(float(grad[-1]), 0.0)
    np.testing.assert_allclose(
      xj.sigmoid_binary_cross_entropy(z[:-1], y[:-1], pos_weight=1.0),
      xj.sigmoid_binary_cross_entropy(z[:-1], y[:-1]),
      rtol=2 * ref.RTOL[np.dtype(dtype)],
    )

  def test_binary_cross_entropy_label_smoothing_is_keras(self):
    # keras: y ← y (1 - ε) + ε/2, then the plain binary cross-entropy.
    p = np.array([1.0, 0.0, 0.3], np.float64)
    q = np.array([0.9, 0.2, 0.5], np.float64)
    eps = 0.2
    ps = p * (1 - eps) + eps / 2
    exact = -(ps * np.log(q) + (1 - ps) * np.log1p(-q))
    np.testing.assert_allclose(
      xj.binary_cross_entropy(p.astype(np.float32), q.astype(np.float32), label_smoothing=eps),
      exact,
      rtol=2e-6,
    )

  def test_integer_labels_over_a_tuple_of_axes_is_a_flat_index(self):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 3, 4)).astype(np.float32)
    y = np.array([5, 11])
    flat = z.reshape(2, 12)
    np.testing.assert_allclose(
      xj.softmax_cross_entropy_with_integer_labels(z, y, axis=(1, 2)),
      xj.softmax_cross_entropy_with_integer_labels(flat, y),
      rtol=1e-6,
    )
    # Class axes in front of the batch axis: transposed first, then flattened row-major.
    zt = np.transpose(z, (1, 2, 0))
    np.testing.assert_allclose(
      xj.softmax_cross_entropy_with_integer_labels(zt, y, axis=(0, 1)),
      xj.softmax_cross_entropy_with_integer_labels(flat, y),
      rtol=1e-6,
    )
    np.testing.assert_allclose(
      xj.softmax_cross_entropy_with_integer_labels(z, y, axis=(1, 2)),
      optax.losses.softmax_cross_entropy_with_integer_labels(z, y, axis=(1, 2)),
      rtol=1e-6,
    )


class GeneralizedKLTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params())
  def test_matches_scipy_formula_and_kl_for_distributions(self, dtype):
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 3, size=(5, 4)).astype(dtype)
    q = rng.uniform(0.1, 2, size=(5, 4)).astype(dtype)
    p[0, 1] = 0  # contributes q
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
      terms = np.where(p64 > 0, p64 * np.log(p64 / q64), 0) - p64 + q64
    exact = terms.sum(axis=1)
    scale = (np.abs(p64 * np.log(np.where(p64 > 0, p64, 1))) + p64 + q64).sum(axis=1)
    got = xj.generalized_kl_divergence(p, q)
    np.testing.assert_array_less(np.abs(got - exact), 8 * ref.RTOL[np.dtype(dtype)] * scale)
    np.testing.assert_allclose(
      got,
      optax.losses.generalized_kl_divergence(np.log(q), p),
      rtol=10 * ref.RTOL[np.dtype(dtype)],
    )
    # Gradient w.r.t. q: 1 - p/q.
    grad = jax.grad(lambda q: jnp.sum(xj.generalized_kl_divergence(p, q)))(q)
    np.testing.assert_allclose(grad, 1 - p64 / q64, rtol=4 * ref.RTOL[np.dtype(dtype)])
    # Distributions: the KL itself.
    pn, qn = p64 / p64.sum(1, keepdims=True), q64 / q64.sum(1, keepdims=True)
    np.testing.assert_allclose(
      xj.generalized_kl_divergence(pn.astype(dtype), qn.astype(dtype)),
      xj.kl_divergence(pn.astype(dtype), qn.astype(dtype)),
      atol=8 * ref.RTOL[np.dtype(dtype)],
    )

  def test_equal_measures_give_exact_zero_and_no_negative(self):
    p = np.array([[0.3, 0.0, 5.0], [1e-30, 2.0, 0.1]], np.float32)
    np.testing.assert_array_equal(xj.generalized_kl_divergence(p, p), 0)

  def test_kl_of_unnormalised_inputs_is_the_formula_not_a_silent_zero(self):
    # optax's kl_divergence test feeds unnormalised inputs; the formula is negative there.
    p = np.array([0.1, 0.1], np.float32)
    q = np.array([0.5, 0.5], np.float32)
    got = float(xj.kl_divergence(p, q))
    np.testing.assert_allclose(got, 0.2 * np.log(0.2), rtol=1e-6)
    np.testing.assert_allclose(got, float(optax.kl_divergence(np.log(q), p)), rtol=1e-6)
    # A KL rounded to -1 ulp of valid distributions is still 0.
    self.assertEqual(float(xj.kl_divergence(q, q)), 0.0)


if __name__ == "__main__":
  absltest.main()
