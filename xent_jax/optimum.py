r"""The reference solver: float64 optima of the regression objectives, independent of JAX.

The oracle that tests and experiments compare trained models with (scipy's L-BFGS-B,
tight tolerances). To train to the optimum fast, use :mod:`xent_jax.fit`.

The objective is the one :mod:`xent_jax.models` trains,

.. math::
  J(w, b) = \frac{1}{N} \sum_{n=1}^N \ell(x_n, y_n; w, b) + \frac{\lambda}{2} \lVert w \rVert^2,

with ``ℓ`` the binary (logistic regression) or softmax (softmax regression) cross-entropy.
Here it is written again in numpy float64 and minimised with scipy's L-BFGS-B with an
analytic gradient and tight tolerances, so that a trained model can be compared with the
optimum to ~1e-12 relative. scipy is imported inside the functions (``import xent_jax``
never imports it).

The objective functions (``*_objective``) also serve to evaluate JAX-trained parameters in
float64: a float32 objective cannot resolve a relative gap of 1e-6 (its rounding error is
about that large), while the float32 *parameters* can be that close to the optimum.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np

from xent_jax import _validate

__all__ = [
  "Optimum",
  "logistic_regression_objective",
  "logistic_regression_optimum",
  "softmax_regression_objective",
  "softmax_regression_optimum",
]


class Optimum(NamedTuple):
  """A reference optimum.

  Attributes:
    params: ``{"w": ..., "b": ...}`` float64 numpy arrays (the models' shapes).
    value: the objective at ``params`` (float64).
    grad_max_abs: max-abs entry of the objective's gradient at ``params`` (≈ 0).
    num_iterations: L-BFGS iterations used.
  """

  params: dict[str, np.ndarray]
  value: float
  grad_max_abs: float
  num_iterations: int


def _as_f64(fn, params, w_ndim: int, num_features: int):
  if not isinstance(params, dict) or set(params) != {"w", "b"}:
    raise ValueError(f"{fn}: `params` must be a dict with keys 'w' and 'b'; got {params!r:.80}.")
  params = {k: _validate.array(fn, f"params['{k}']", v) for k, v in params.items()}
  w_shape, b_shape = params["w"].shape, params["b"].shape
  if len(w_shape) != w_ndim or w_shape[0] != num_features or b_shape != w_shape[1:]:
    want = "w [D], b []" if w_ndim == 1 else "w [D, K], b [K]"
    raise ValueError(
      f"{fn}: `params` must have shapes {want} with D={num_features}; got "
      f"params['w'].shape={w_shape}, params['b'].shape={b_shape}."
    )
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _data(fn, x_NxD, y_N, *, l2, num_classes=None):
  """x and y as float64 / int64 numpy, checked: shapes, dtypes, finite x, labels in range."""
  x, y = _validate.regression_data(fn, x_NxD, y_N, num_classes)
  _validate.real(fn, "l2", l2, low=0.0)
  return np.asarray(x, np.float64), np.asarray(y, np.float64 if num_classes is None else np.int64)


def _logistic_value_and_grad(params, x_NxD, y_N, l2):
  z_N = x_NxD @ params["w"] + params["b"]
  # log(1 + e^z) - y z: the binary cross-entropy from logits, no log of a rounded σ.
  value = np.mean(np.logaddexp(0.0, z_N) - y_N * z_N) + 0.5 * l2 * params["w"] @ params["w"]
  # σ(z) - y, with σ written as exp(-log(1 + e^{-z})) so that no e^{-z} overflows.
  residual_N = np.exp(-np.logaddexp(0.0, -z_N)) - y_N
  grad = {"w": residual_N @ x_NxD / len(y_N) + l2 * params["w"], "b": np.mean(residual_N)}
  return value, grad


def _softmax_value_and_grad(params, x_NxD, y_N, l2):
  z_NxK = x_NxD @ params["w"] + params["b"]
  z_NxK = z_NxK - z_NxK.max(axis=1, keepdims=True)  # Shift so no exp overflows.
  lse_N = np.log(np.sum(np.exp(z_NxK), axis=1))
  rows = np.arange(len(y_N))
  w = params["w"]
  value = np.mean(lse_N - z_NxK[rows, y_N]) + 0.5 * l2 * np.sum(w * w)
  residual_NxK = np.exp(z_NxK - lse_N[:, None])
  residual_NxK[rows, y_N] -= 1.0
  grad = {"w": x_NxD.T @ residual_NxK / len(y_N) + l2 * w, "b": residual_NxK.mean(axis=0)}
  return value, grad


def logistic_regression_objective(params, x_NxD, y_N, *, l2: float = 0.0) -> float:
  r"""Mean binary cross-entropy plus L2 penalty, in float64 numpy.

  .. math::
    J = \frac{1}{N} \sum_n \big[\log(1 + e^{z_n}) - y_n z_n\big]
      + \frac{\lambda}{2} \lVert w \rVert^2, \quad z_n = x_n \cdot w + b

  Args:
    params: ``{"w": [D], "b": []}`` (any array type; cast to float64).
    x_NxD: features, ``[N, D]``.
    y_N: labels in [0, 1], ``[N]``.
    l2: λ.

  Returns:
    The objective as a Python float.

  >>> params = {"w": np.zeros(2), "b": 0.0}
  >>> round(logistic_regression_objective(params, np.ones((3, 2)), np.ones(3)), 12)
  0.69314718056
  """
  fn = "logistic_regression_objective"
  x, y = _data(fn, x_NxD, y_N, l2=l2)
  return float(_logistic_value_and_grad(_as_f64(fn, params, 1, x.shape[1]), x, y, l2)[0])


def softmax_regression_objective(params, x_NxD, y_N, *, l2: float = 0.0) -> float:
  r"""Mean softmax cross-entropy plus L2 penalty, in float64 numpy.

  .. math::
    J = \frac{1}{N} \sum_n \Big[\log \sum_k e^{z_{nk}} - z_{n y_n}\Big]
      + \frac{\lambda}{2} \lVert W \rVert_F^2, \quad z_n = x_n W + b

  Args:
    params: ``{"w": [D, K], "b": [K]}``.
    x_NxD: features, ``[N, D]``.
    y_N: integer labels in ``[0, K)``, ``[N]``.
    l2: λ.

  Returns:
    The objective as a Python float.

  >>> params = {"w": np.zeros((2, 4)), "b": np.zeros(4)}
  >>> round(softmax_regression_objective(params, np.ones((3, 2)), np.array([0, 1, 3])), 6)
  1.386294
  """
  fn = "softmax_regression_objective"
  # K comes from w: its shape is checked before the labels are checked against it.
  w_shape = np.shape(params["w"]) if isinstance(params, dict) and "w" in params else None
  if w_shape is None or len(w_shape) != 2:
    got = f"params {params!r:.80}" if w_shape is None else f"params['w'].shape={w_shape}"
    raise ValueError(f"{fn}: `params` must be a dict with w [D, K] and b [K]; got {got}.")
  x, y = _data(fn, x_NxD, y_N, l2=l2, num_classes=w_shape[1])
  return float(_softmax_value_and_grad(_as_f64(fn, params, 2, x.shape[1]), x, y, l2)[0])


def _check_solver(fn, tol, max_iter) -> None:
  _validate.real(fn, "tol", tol, low=0.0, open_low=True)
  _validate.count(fn, "max_iter", max_iter)


def single_threaded_blas():
  """A context in which numpy's BLAS runs one thread (a no-op without threadpoolctl).

  The problems here are small (N·D·K ~ 1e6): BLAS threads only add synchronisation, which
  costs 5× on a busy 2-core machine. threadpoolctl ships with scikit-learn; optional.
  """
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1, user_api="blas")


def _minimize(value_and_grad, params0, x_NxD, *, tol: float, max_iter: int) -> Optimum:
  """scipy's L-BFGS-B on J, in standardised coordinates: w = w'/s and b = b' - μ·w (μ, s the
  mean and standard deviation of each feature), an exact change of variables.

  In the raw coordinates features of mixed scales or an offset make J ill-conditioned, and
  L-BFGS-B stopped far short without saying so (features scaled by 1e4 and 1e-4: 4.8%
  above the optimum, its gradient 1e-5; breast_cancer's raw features took thousands of
  iterations).
  """
  from scipy import optimize  # Optional dependency: lazy.

  shape_w, size_w = params0["w"].shape, params0["w"].size
  mean_D = np.mean(x_NxD, axis=0)
  scale_D = np.std(x_NxD, axis=0)
  scale_D = np.where(scale_D > 0, scale_D, 1.0)
  per_w = scale_D.reshape((-1,) + (1,) * (len(shape_w) - 1))  # [D] or [D, 1]

  def unflatten(theta):  # θ' = (w', b') → params
    w = theta[:size_w].reshape(shape_w) / per_w
    return {"w": w, "b": theta[size_w:].reshape(params0["b"].shape) - mean_D @ w}

  def fun(theta):
    value, grad = value_and_grad(unflatten(theta))
    g_b = np.asarray(grad["b"])
    g_w = (grad["w"] - np.multiply.outer(mean_D, g_b)) / per_w
    return value, np.concatenate([np.ravel(g_w), np.ravel(g_b)])

  theta0 = np.zeros(size_w + params0["b"].size)
  # ftol=0: stop when the gradient is small (gtol) or the line search can gain nothing more
  # in float64, never merely because one step decreased the objective only a little.
  options = {"maxiter": max_iter, "gtol": tol, "ftol": 0.0, "maxcor": 30}
  with single_threaded_blas():
    result = optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B", options=options)
  params = unflatten(result.x)
  value, grad = value_and_grad(params)
  grad_max_abs = max(float(np.max(np.abs(g))) for g in grad.values())
  return Optimum(params, float(value), grad_max_abs, int(result.nit))


def logistic_regression_optimum(
  x_NxD, y_N, *, l2: float = 0.0, tol: float = 1e-11, max_iter: int = 20_000
) -> Optimum:
  r"""Float64 minimiser of the logistic-regression objective (scipy L-BFGS-B).

  .. math::
    (w^\star, b^\star) = \arg\min_{w, b} \frac{1}{N} \sum_n \big[\log(1 + e^{z_n})
      - y_n z_n\big] + \frac{\lambda}{2} \lVert w \rVert^2

  Only defined when a minimiser exists: λ > 0, or data that are not linearly separable.

  Args:
    x_NxD: features, ``[N, D]`` (cast to float64).
    y_N: labels in [0, 1], ``[N]``.
    l2: λ ≥ 0.
    tol: L-BFGS-B ``gtol``: the max-abs gradient, in standardised coordinates (each
      weight times its feature's standard deviation), at which to stop.
    max_iter: iteration cap.

  Returns:
    An :class:`Optimum`; ``params = {"w": [D], "b": []}``.

  >>> x = np.array([[-1.0], [1.0], [2.0], [-2.0]]); y = np.array([0, 0, 1, 1])
  >>> round(logistic_regression_optimum(x, y, l2=0.1).value, 6)
  0.693147
  """
  fn = "logistic_regression_optimum"
  x, y = _data(fn, x_NxD, y_N, l2=l2)
  _check_solver(fn, tol, max_iter)
  params0 = {"w": np.zeros(x.shape[1]), "b": np.zeros(())}
  value_and_grad = lambda p: _logistic_value_and_grad(p, x, y, l2)
  return _minimize(value_and_grad, params0, x, tol=tol, max_iter=max_iter)


def softmax_regression_optimum(
  x_NxD, y_N, num_classes: int, *, l2: float = 0.0, tol: float = 1e-11, max_iter: int = 20_000
) -> Optimum:
  r"""Float64 minimiser of the softmax-regression objective (scipy L-BFGS-B).

  .. math::
    (W^\star, b^\star) = \arg\min_{W, b} \frac{1}{N} \sum_n \Big[\log \sum_k e^{z_{nk}}
      - z_{n y_n}\Big] + \frac{\lambda}{2} \lVert W \rVert_F^2

  The objective is unchanged by adding a constant to every ``b_k``, so ``b`` is
  determined up to that shift (the value and ``W`` are unique when λ > 0).

  Args:
    x_NxD: features, ``[N, D]``.
    y_N: integer labels in ``[0, K)``, ``[N]``.
    num_classes: K.
    l2: λ ≥ 0.
    tol: L-BFGS-B ``gtol``.
    max_iter: iteration cap.

  Returns:
    An :class:`Optimum`; ``params = {"w": [D, K], "b": [K]}``.

  >>> x = np.eye(3); y = np.array([0, 1, 2])
  >>> softmax_regression_optimum(x, y, 3, l2=1.0).params["w"].shape
  (3, 3)
  """
  fn = "softmax_regression_optimum"
  _validate.count(fn, "num_classes", num_classes)
  x, y = _data(fn, x_NxD, y_N, l2=l2, num_classes=num_classes)
  _check_solver(fn, tol, max_iter)
  params0 = {"w": np.zeros((x.shape[1], num_classes)), "b": np.zeros(num_classes)}
  value_and_grad = lambda p: _softmax_value_and_grad(p, x, y, l2)
  return _minimize(value_and_grad, params0, x, tol=tol, max_iter=max_iter)
