r"""The fast solver: regression to its optimum by L-BFGS in little time, compile included.

What a user calls to train to the optimum (logistic and softmax regression). Its float64,
scipy-based counterpart, :mod:`xent_jax.optimum`, is the slow reference it is tested against.

.. math::
  (w^\star, b^\star) = \arg\min_{w, b} J(w, b), \qquad
  J = \frac{1}{N} \sum_{n=1}^N H\big(y_n, \sigma(x_n \cdot w + b)\big)
      + \frac{\lambda}{2} \lVert w \rVert^2

:func:`fit_logistic_regression` is full-batch L-BFGS (seed §4.2's gradient descent, with a
curvature estimate) whose only compiled piece is the gradient sum Σ_n (σ_n - y_n)(x_n, 1):
one small XLA program, compiled in well under a second. The iteration itself (two-loop
recursion, line search, stopping rule) is float64 numpy on 101 numbers per step. Each
step costs one gradient, two reads of X; the line search works on the directional
derivative (J is convex), so J itself is never evaluated.

The stopping rule: L-BFGS's estimate of the Newton decrement, ½ gᵀ H⁻¹ g ≈ J - J*, must
fall below ``tol`` (default 1e-9 in units of J, whose optimum is about 0.1 to 0.7 for real
data: a relative gap near 1e-9). L-BFGS runs in centred and scaled coordinates (each
feature's mean moved into the bias, each weight scaled by the curvature at 0), so that
features of any offset and scale look standardised to it; the estimate is only as good as
L-BFGS's curvature, and strongly correlated raw features (scikit-learn's breast_cancer
unstandardised) may end ``converged=False`` at ``max_iter``: standardise them.

Memory: a float32 numpy X whose rows start 64-byte aligned is read in place (JAX's CPU
client aliases aligned host memory instead of copying it); numpy's 16-byte-aligned
allocations are handled by splitting off the first few rows, whose share of the gradient
is added on the host (in float64). Copying a 400 MB X into JAX would cost more than the
whole fit. How many rows that is depends on the address numpy gave X, so two copies of
the same numpy X may give results that differ by float32 rounding (e.g. 4e-7 relative in
``w`` on standardised breast_cancer); a JAX array X is computed the same way every time.
"""

from __future__ import annotations

import concurrent.futures
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xent_jax import _validate, optimum

__all__ = ["Fit", "fit_logistic_regression", "fit_softmax_regression"]

_ALIGN = 64  # bytes: XLA:CPU's buffer alignment, below which device_put copies


class Fit(NamedTuple):
  """The result of :func:`fit_logistic_regression` or :func:`fit_softmax_regression`.

  Attributes:
    params: ``{"w": [D], "b": []}`` (softmax: ``{"w": [D, K], "b": [K]}``) as float64
      numpy arrays.
    grad_norm: L2 norm of the gradient of J at ``params``.
    gap_estimate: L-BFGS's estimate of J(params) - J*, ½ gᵀ H⁻¹ g.
    num_iterations: L-BFGS steps taken.
    num_gradients: gradient evaluations (each two reads of X).
    converged: whether ``gap_estimate <= tol`` was reached within ``max_iter``.
  """

  params: dict[str, np.ndarray]
  grad_norm: float
  gap_estimate: float
  num_iterations: int
  num_gradients: int
  converged: bool


@jax.jit
def _gradient_sums(theta, x_NxD, y_N):
  """Σ_n (σ_n - y_n) x_n and Σ_n (σ_n - y_n), in the dtype of X."""
  d = x_NxD.shape[1]
  theta = theta.astype(x_NxD.dtype)
  # Both products over X as fused multiply-reduces, no dot: XLA:CPU hands them to YNNPACK,
  # which compiles in a third of the time of its matrix-vector kernels (measured 35 vs
  # 90 ms; the compile is part of every fit) and runs them at about the same speed.
  r_N = jax.nn.sigmoid(jnp.sum(x_NxD * theta[None, :d], axis=1) + theta[d]) - y_N
  return jnp.concatenate([jnp.sum(x_NxD * r_N[:, None], axis=0), jnp.sum(r_N, keepdims=True)])


def _aligned_split(x_NxD: np.ndarray) -> int:
  """Rows to split off so that the rest of a C-contiguous numpy X starts 64-byte aligned."""
  row_bytes = x_NxD.strides[0]
  for k in range(min(len(x_NxD), _ALIGN)):
    if (x_NxD.ctypes.data + k * row_bytes) % _ALIGN == 0:
      return k
  return 0  # no row boundary is aligned: device_put copies, correct but slower


def _float_features(x: jax.Array) -> jax.Array:
  """JAX features as a float of at least 32 bits (integer or half: the default float)."""
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype.itemsize < 4:
    return x.astype(jnp.zeros(()).dtype)
  return x


def _device_data(x_NxD, y_N):
  """(X and y on the device, X and y of the split-off rows as float64 numpy)."""
  if isinstance(x_NxD, jax.Array):
    x_NxD = _float_features(x_NxD)
    x_host = np.zeros((0, x_NxD.shape[1]))
    return x_NxD, jnp.asarray(y_N, x_NxD.dtype), x_host, np.zeros(0)
  x_NxD = np.ascontiguousarray(x_NxD)
  if not np.issubdtype(x_NxD.dtype, np.floating) or x_NxD.dtype == np.float16:
    x_NxD = x_NxD.astype(np.float32)
  y_N = np.asarray(y_N, x_NxD.dtype)
  k = _aligned_split(x_NxD)
  x_dev, y_dev = jax.device_put(x_NxD[k:]), jax.device_put(np.ascontiguousarray(y_N[k:]))
  return x_dev, y_dev, x_NxD[:k].astype(np.float64), y_N[:k].astype(np.float64)


def _check(fn, x_NxD, y_N, *, l2, tol, max_iter, memory, num_classes=None) -> None:
  """Shapes, dtypes, finite features, labels in range and the solver's settings."""
  _validate.regression_data(fn, x_NxD, y_N, num_classes)
  _validate.real(fn, "l2", l2, low=0.0)
  _validate.real(fn, "tol", tol, low=0.0, open_low=True)
  _validate.count(fn, "max_iter", max_iter)
  _validate.count(fn, "memory", memory)


def fit_logistic_regression(
  x_NxD,
  y_N,
  *,
  l2: float = 0.0,
  tol: float = 1e-9,
  max_iter: int = 100,
  memory: int = 10,
  warm_start: int = 16384,
) -> Fit:
  r"""Minimises the (optionally L2-penalised) mean binary cross-entropy with L-BFGS.

  .. math::
    J(w, b) = \frac{1}{N} \sum_n \big[\log(1 + e^{z_n}) - y_n z_n\big]
      + \frac{\lambda}{2} \lVert w \rVert^2, \qquad z_n = x_n \cdot w + b,
    \qquad \nabla J = \frac{1}{N} \sum_n (\sigma_n - y_n) (x_n, 1) + \lambda (w, 0)

  The same objective as :func:`xent_jax.models.logistic_regression_loss`. A minimiser exists
  when the data are not linearly separable, or when λ > 0 and both labels occur (b is not
  penalised: with one label only, b → ±∞). Otherwise J only approaches its infimum as the
  parameters grow, and the fit stops with large parameters once L-BFGS's estimate of
  J - J* is below ``tol``; there that estimate is optimistic (J decays exponentially
  along the step), so J itself may still be well above ``tol`` (e.g. 1e-8 to 1e-5 for
  ``tol=1e-9``): ``converged`` does not certify J - J* ≤ ``tol`` on such data. Iterates
  from w = 0, b = 0.

  While XLA compiles the gradient (in a second thread), L-BFGS runs on an evenly strided
  subsample of ``warm_start`` rows in numpy; the full-data iterations then start from that
  point and its curvature pairs, a few steps from the optimum (the subsample's optimum is
  within O(1/√warm_start) of it, and its Hessian within about as much).

  Args:
    x_NxD: features ``[N, D]``, a numpy or JAX array (float32 stays float32 on the device;
      float64 needs ``JAX_ENABLE_X64``, else it is computed in float32).
    y_N: labels in [0, 1], ``[N]``.
    l2: λ ≥ 0 (not applied to ``b``).
    tol: stop once L-BFGS's estimate of J - J* is at most this.
    max_iter: full-data L-BFGS steps at most.
    memory: L-BFGS history length.
    warm_start: rows of the subsample (0 or at least N/2: no warm start).

  Returns:
    A :class:`Fit`.

  >>> x = np.array([[-2.0], [-1.0], [1.0], [2.0]]); y = np.array([0, 1, 0, 1])
  >>> fit = fit_logistic_regression(x, y, l2=0.1)
  >>> fit.converged, round(float(fit.params["w"][0]), 4)  # the optimum: w* = 0.3553
  (True, 0.3553)
  """
  _check(
    fn := "fit_logistic_regression", x_NxD, y_N, l2=l2, tol=tol, max_iter=max_iter, memory=memory
  )
  _validate.count(fn, "warm_start", warm_start, minimum=0)
  num_examples, num_features = np.shape(x_NxD)
  x_dev, y_dev, x_head, y_head = _device_data(x_NxD, y_N)
  penalty = np.append(np.full(num_features, float(l2)), 0.0)
  coords = _coordinates(x_NxD, 0.25, l2, 1)  # σ(1-σ) = 1/4 at 0
  theta = np.zeros(num_features + 1)
  counter = [0]

  def gradient(theta):
    counter[0] += 1
    sums = np.asarray(gradient_sums(jnp.asarray(theta, x_dev.dtype), x_dev, y_dev), np.float64)
    return (sums + _host_gradient_sums(theta, x_head, y_head)) / num_examples + penalty * theta

  history = []
  # Trace here (Python holds the GIL), compile in the other thread (XLA releases it).
  lowered = _gradient_sums.lower(jnp.asarray(theta, x_dev.dtype), x_dev, y_dev)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    compiled = pool.submit(lowered.compile)
    if 0 < warm_start <= num_examples // 2:
      stride = num_examples // warm_start
      x_sub = np.asarray(x_NxD[::stride], np.float64)
      y_sub = np.asarray(y_N[::stride], np.float64)
      sub_gradient = lambda t: _host_gradient_sums(t, x_sub, y_sub) / len(y_sub) + penalty * t
      with optimum.single_threaded_blas():  # the other core compiles
        theta, _, history, _, _ = _lbfgs(
          coords.gradient(sub_gradient), theta, [], tol=tol, max_iter=max_iter, memory=memory
        )
    gradient_sums = compiled.result()
  theta, g, _, iterations, gap = _lbfgs(
    coords.gradient(gradient), theta, history, tol=tol, max_iter=max_iter, memory=memory
  )
  theta, g = coords.theta(theta, g)
  params = {"w": theta[:-1], "b": np.asarray(theta[-1])}
  return Fit(params, float(np.linalg.norm(g)), float(gap), iterations, counter[0], bool(gap <= tol))


@jax.jit
def _softmax_gradient_sums(theta, x_NxD, y_N):
  """Σ_n (p_n - e_{y_n}) ⊗ (x_n, 1), flattened as (W [D, K], b [K]), in the dtype of X."""
  num_features, num_classes = x_NxD.shape[1], theta.shape[0] // (x_NxD.shape[1] + 1)
  theta = theta.astype(x_NxD.dtype)
  w_DxK = theta[: num_features * num_classes].reshape(num_features, num_classes)
  z_NxK = jnp.dot(x_NxD, w_DxK, precision="highest") + theta[None, num_features * num_classes :]
  r_NxK = jax.nn.softmax(z_NxK, axis=1) - jax.nn.one_hot(y_N, num_classes, dtype=z_NxK.dtype)
  grad_w = jnp.dot(x_NxD.T, r_NxK, precision="highest")
  return jnp.concatenate([grad_w.ravel(), jnp.sum(r_NxK, axis=0)])


def fit_softmax_regression(
  x_NxD,
  y_N,
  num_classes: int | None = None,
  *,
  l2: float = 0.0,
  tol: float = 1e-9,
  max_iter: int = 500,
  memory: int = 10,
) -> Fit:
  r"""Minimises the (optionally L2-penalised) mean softmax cross-entropy with L-BFGS.

  .. math::
    J(W, b) = \frac{1}{N} \sum_n \Big[\log \sum_k e^{z_{nk}} - z_{n y_n}\Big]
      + \frac{\lambda}{2} \lVert W \rVert_F^2, \qquad z_n = x_n W + b,
    \qquad \nabla_W J = \frac{1}{N} X^\top (P - Y) + \lambda W

  The objective of :func:`xent_jax.models.softmax_regression_loss`, the multi-class twin
  of :func:`fit_logistic_regression`: the same L-BFGS, line search and stopping rule
  (L-BFGS's estimate of J - J* at most ``tol``), with one compiled gradient (two products
  over X). ``b`` is determined up to a common shift (softmax is shift invariant); the
  fit starts from 0 and never moves the mean of ``b``.

  Args:
    x_NxD: features ``[N, D]``, numpy or JAX (computed in the default float dtype).
    y_N: integer class labels in ``[0, K)``, ``[N]``.
    num_classes: K; the largest label + 1 when None.
    l2: λ ≥ 0 (not applied to ``b``).
    tol: stop once L-BFGS's estimate of J - J* is at most this (> 0).
    max_iter: L-BFGS steps at most.
    memory: L-BFGS history length.

  Returns:
    A :class:`Fit` with ``params = {"w": [D, K], "b": [K]}`` (float64 numpy).

  >>> x = np.array([[-2.0], [-1.0], [1.0], [2.0]]); y = np.array([0, 1, 1, 2])
  >>> fit = fit_softmax_regression(x, y, l2=0.1)
  >>> fit.converged, fit.params["w"].shape
  (True, (1, 3))
  """
  fn = "fit_softmax_regression"
  y = _validate.array(fn, "y_N", y_N)
  if num_classes is None:  # a float y_N is reported by _check
    # (at least 1: negative labels are then reported as labels, not as num_classes)
    num_classes = max(int(np.max(y)) + 1, 1) if y.dtype.kind in "iu" and y.size else 1
  _validate.count(fn, "num_classes", num_classes)
  _check(fn, x_NxD, y, l2=l2, tol=tol, max_iter=max_iter, memory=memory, num_classes=num_classes)
  num_examples, num_features = np.shape(x_NxD)
  x_dev = _float_features(jnp.asarray(x_NxD))
  y_dev = jnp.asarray(y, jnp.int32)
  size_w = num_features * num_classes
  penalty = np.append(np.full(size_w, float(l2)), np.zeros(num_classes))
  # (the curvature at 0 is 1/K off the all-ones direction of the logits)
  coords = _coordinates(x_NxD, 1 / num_classes, l2, num_classes)
  counter = [0]

  def gradient(theta):
    counter[0] += 1
    sums = _softmax_gradient_sums(jnp.asarray(theta, x_dev.dtype), x_dev, y_dev)
    return np.asarray(sums, np.float64) / num_examples + penalty * theta

  theta, g, _, iterations, gap = _lbfgs(
    coords.gradient(gradient),
    np.zeros(size_w + num_classes),
    [],
    tol=tol,
    max_iter=max_iter,
    memory=memory,
  )
  theta, g = coords.theta(theta, g)
  params = {"w": theta[:size_w].reshape(num_features, num_classes), "b": theta[size_w:]}
  return Fit(params, float(np.linalg.norm(g)), float(gap), iterations, counter[0], bool(gap <= tol))


def _host_gradient_sums(theta, x_NxD: np.ndarray, y_N: np.ndarray) -> np.ndarray:
  """Σ_n (σ_n - y_n) (x_n, 1) in float64 numpy (σ without overflow)."""
  if not len(y_N):
    return np.zeros(len(theta))
  z = x_NxD @ theta[:-1] + theta[-1]
  r = np.exp(-np.logaddexp(0.0, -z)) - y_N
  return np.append(r @ x_NxD, r.sum())


_CURVATURE_ROWS = 16384


def _sample(x_NxD) -> np.ndarray:
  """An evenly strided sample of at most 16384 rows, float64, for the centring and scaling
  of the coordinates: they need no more, and a pass over a large X would cost a quarter of
  the fit. (Any μ centres exactly: it only reparametrises b.)"""
  return np.asarray(x_NxD[:: max(1, len(x_NxD) // _CURVATURE_ROWS)], np.float64)


def _curvature_at_zero(
  sample: np.ndarray, mean_D: np.ndarray, per_logit: float, l2: float, num_classes: int
) -> np.ndarray:
  """The diagonal of ∇²J at θ = 0 in the centred coordinates φ (:class:`_Coordinates`),
  flattened like θ: per_logit·mean_n (x_nj - μ_j)² + λ for each weight (repeated over the
  K classes), per_logit for each bias.

  Features of any scale (1e-4 or 1e6) and offset then look standardised to L-BFGS: its
  first step is the Newton step of the diagonal, and its estimate ½gᵀH⁻¹g of J - J* has the
  right scale (with the identity guess it was 1e8 times too small for features of size
  1e-4, and the fit stopped at once, "converged"). A constant column gets 1 (it never
  moves). The mean is over the rows of ``sample`` (:func:`_sample`).
  """
  x = sample - mean_D
  mean_sq = np.einsum("nd,nd->d", x, x) / max(len(x), 1)
  w = per_logit * mean_sq + float(l2)
  w = np.where(w > 0, w, 1.0)
  return np.concatenate([np.repeat(w, num_classes), np.full(num_classes, per_logit)])


class _Coordinates(NamedTuple):
  """The coordinates L-BFGS runs in: ψ = φ·√h, φ = (W, c) with b = c - μᵀW.

  The same J, with each feature centred by μ and each coordinate scaled by the curvature
  at 0, h (:func:`_curvature_at_zero`): features of any offset and scale look standardised.
  Uncentred features (an offset of 1000 on unit noise) tie each weight to the bias, and
  L-BFGS's estimate of J - J* in such a valley was 1e5 times too small (the fit stopped
  "converged" 4e-3 above the optimum).
  """

  mean_D: np.ndarray
  root_h: np.ndarray
  num_classes: int

  def _theta(self, phi):  # (W, c) → (W, b)
    size_w = self.mean_D.size * self.num_classes
    w = phi[:size_w].reshape(self.mean_D.size, self.num_classes)
    return np.concatenate([phi[:size_w], phi[size_w:] - self.mean_D @ w])

  def _outer(self, g_phi):  # μ ⊗ ∇_b J, flattened like W
    return np.outer(self.mean_D, g_phi[self.mean_D.size * self.num_classes :]).ravel()

  def gradient(self, gradient):
    """The gradient in ψ: ∇_W = ∇_W J - μ ⊗ ∇_b J, ∇_c = ∇_b J, each divided by √h."""

    def in_psi(psi):
      g = gradient(self._theta(psi / self.root_h))
      g_w, g_b = g[: -self.num_classes], g[-self.num_classes :]
      return np.concatenate([g_w - self._outer(g), g_b]) / self.root_h

    return in_psi

  def theta(self, psi, g_psi):
    """(θ, ∇_θ J) from ψ and the gradient in ψ."""
    g_phi = g_psi * self.root_h
    g_w = g_phi[: -self.num_classes] + self._outer(g_phi)
    return self._theta(psi / self.root_h), np.concatenate([g_w, g_phi[-self.num_classes :]])


def _coordinates(x_NxD, per_logit: float, l2: float, num_classes: int) -> _Coordinates:
  sample = _sample(x_NxD)
  mean_D = np.mean(sample, axis=0)
  root_h = np.sqrt(_curvature_at_zero(sample, mean_D, per_logit, l2, num_classes))
  return _Coordinates(mean_D, root_h, num_classes)


def _lbfgs(gradient, theta, history, *, tol, max_iter, memory):
  """L-BFGS from ``theta`` (and curvature pairs ``history``) until ½gᵀH⁻¹g ≤ tol.

  Returns ``(theta, gradient there, history, steps taken, last gap estimate)``.
  """
  g = gradient(theta)
  gap, steps = np.inf, 0
  while steps < max_iter:
    d = -_two_loop(g, history)
    slope = float(g @ d)
    gap = -0.5 * slope  # ½ gᵀ H⁻¹ g with L-BFGS's H: the predicted J - J*
    if gap <= tol:
      break
    step, g_new = _line_search(gradient, theta, d, slope)
    s, y = step * d, g_new - g
    sy = float(s @ y)
    if sy > 1e-12 * float(y @ y):  # an informative curvature pair (J is convex)
      history = [*history, (s, y, 1.0 / sy)][-memory:]
    theta, g, steps = theta + s, g_new, steps + 1
  else:
    gap = 0.5 * float(g @ _two_loop(g, history))
  return theta, g, history, steps, gap


def _two_loop(g: np.ndarray, history) -> np.ndarray:
  """H⁻¹ g by the L-BFGS two-loop recursion; H⁻¹ ≈ I before any curvature pair.

  The fits run in coordinates scaled by the curvature at 0 (:func:`_curvature_at_zero`),
  where the identity makes the first step the Newton step of the diagonal.
  """
  q = g.copy()
  alphas = []
  for s, y, rho in reversed(history):
    a = rho * float(s @ q)
    alphas.append(a)
    q -= a * y
  if history:
    s, y, _ = history[-1]
    q *= float(s @ y) / float(y @ y)
  for (s, y, rho), a in zip(history, reversed(alphas), strict=True):
    q += (a - rho * float(y @ q)) * s
  return q


def _line_search(gradient, theta, d, slope0, max_evals: int = 8):
  """A step along ``d`` with a smaller directional derivative: (step, gradient there).

  J is convex, so φ'(α) = ∇J(θ + αd)·d increases with α from φ'(0) = ``slope0`` < 0. A
  step is accepted when 0.9·φ'(0) ≤ φ'(α) ≤ ½|φ'(0)| (curvature condition; then J
  decreased, by the trapezoid bound on ∫φ'); otherwise the zero of φ' is bracketed,
  extrapolating by 4 while φ' < 0, and found by regula falsi.
  """
  lo, slope_lo, g_lo, hi, slope_hi = 0.0, slope0, None, None, None
  step = 1.0
  for _ in range(max_evals):
    g = gradient(theta + step * d)
    slope = float(g @ d)
    if 0.9 * slope0 <= slope <= -0.5 * slope0:
      return step, g
    if slope < 0:
      lo, slope_lo, g_lo = step, slope, g
    else:
      hi, slope_hi = step, slope
    step = 4 * step if hi is None else lo + (hi - lo) * slope_lo / (slope_lo - slope_hi)
  # Out of evaluations: the largest step with φ' < 0 (J decreased all along it), if any.
  return (lo, g_lo) if g_lo is not None else (hi, g)
