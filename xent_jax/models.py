"""Logistic and softmax regression: logits, probabilities, losses and closed-form gradients.

The models of the seed's §4 (logistic regression trained with cross-entropy) and §2.2
(softmax as the multi-class output). Parameters are plain dicts of arrays, so any
``jax.grad``/``optax`` code can train them:

* logistic regression: ``{"w": [D], "b": []}``, logit ``z_n = x_n · w + b``;
* softmax regression: ``{"w": [D, K], "b": [K]}``, logits ``z_n = x_n W + b``.

Every loss is the *mean* over the N examples plus an optional L2 penalty
``(l2 / 2) ‖w‖²`` on the weights (never on the bias), and every loss has a closed-form
gradient next to it (``*_grad``), which the tests compare with ``jax.grad``.

Features are ``x_NxD`` ``[N, D]``, or the same matrix stored feature-major
(:class:`xent_jax.data.FeatureMajor`, ``[D, N]``), which makes both products of the
gradient stream contiguous memory on CPU (see its docstring for the measured effect).

Every product with the features states its precision (SPEC §9): ``precision=None`` is
``jax.lax.Precision.HIGHEST``, true float32 also on GPUs and TPUs, where JAX's default
would be TF32 or bfloat16 passes (measured on an H200: the softmax-regression loss 2.4e-5
off and the L2 optimum missed). Pass ``precision="default"`` (or ``"tensorfloat32"``, any
``jax.lax.Precision``) to trade that for speed; the CPU computes float32 either way.
bfloat16 features and weights multiply in bfloat16 and accumulate in float32, so the logits
are float32.

Every function checks its inputs before computing: shapes and dtypes always (at trace
time), and, when the data are concrete (outside ``jax.jit``), finite features and labels in
range (logistic regression: 0/1 labels or probabilities in [0, 1]; softmax regression:
integer classes in ``[0, K)``); errors name the function and the argument (``x_NxD``,
``y_N``, ``params``, ``l2``, ``precision``). Under ``jax.jit`` the labels cannot be checked
before computing: an out-of-range label makes the loss NaN and every entry of the gradient
NaN (the library's integer-label cross-entropies give such an example a NaN loss and
zero partials, which a ``jnp.where`` after them masks), and inside
:func:`xent_jax.checked` it raises an error naming ``y_N``, the first offending index and
its value. The trainers of
:mod:`xent_jax.training` check the data at their entry, where it is concrete.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

# The measures below (cross_entropy, softmax) carry their value checks: checked(a models
# loss) checks the calls inside it.
from xent_jax import _core, _measures, _validate
from xent_jax._core import PrecisionLike
from xent_jax.cross_entropy import (
  sigmoid_binary_cross_entropy,
  softmax_cross_entropy_with_integer_labels,
)
from xent_jax.data import FeatureMajor
from xent_jax.softmax import log_sigmoid, log_softmax, sigmoid

Params = dict[str, jax.Array]

__all__ = [
  "init_logistic_regression",
  "logistic_regression_logits",
  "logistic_regression_probs",
  "logistic_regression_loss",
  "logistic_regression_grad",
  "seed_section_4_1_loss",
  "init_softmax_regression",
  "softmax_regression_logits",
  "softmax_regression_probs",
  "softmax_regression_loss",
  "softmax_regression_grad",
]


# ----------------------------------------------------------------------------- checks


def _float_dtype(fn: str, dtype=None):
  if dtype is None:
    return jnp.zeros(()).dtype
  try:
    floating = jnp.issubdtype(dtype, jnp.floating)
  except TypeError:  # not a dtype at all ("bogus")
    floating = False
  if not floating:
    raise TypeError(f"{fn}: `dtype` must be a float dtype; got dtype={dtype!r}.")
  return jnp.dtype(dtype)


def _check_features(fn: str, x_NxD, w_shape: tuple[int, ...]) -> tuple[jax.Array, bool]:
  """(the feature array, whether it is feature-major ``[D, N]``), checked against ``w``.

  Shape and dtype always; finite values when concrete (outside jit).
  """
  feature_major = isinstance(x_NxD, FeatureMajor)
  name, d_axis = ("x_NxD.x_DxN", 0) if feature_major else ("x_NxD", 1)
  layout = " [D, N]" if feature_major else " [N, D]"
  x = _validate.array(fn, name, x_NxD.x_DxN if feature_major else x_NxD, ndim=2, what=layout)
  if x.shape[d_axis] != w_shape[0]:
    raise ValueError(
      f"{fn}: `x_NxD` has {x.shape[d_axis]} features but params['w'] has shape {w_shape}; "
      f"got {name}.shape={x.shape}."
    )
  _validate.values_in(fn, name, x)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(_float_dtype(fn))
  return x, feature_major


def _check_labels(
  fn: str, y_N: ArrayLike, num_examples: int, *, high: int, integer: bool
) -> tuple[jax.Array, jax.Array | None]:
  """(the labels, None) after checking their shape and dtype (always) and values (when
  concrete, i.e. outside jit); for traced labels, (the labels, whether each is in range).

  Traced labels are checked inside :func:`xent_jax.checked` (a checkify check naming ``fn``
  and ``y_N``); the caller makes an out-of-range one give NaN.
  """
  y_N = _validate.array(fn, "y_N", y_N)
  if y_N.shape != (num_examples,):
    raise ValueError(
      f"{fn}: `y_N` must have shape [N]=({num_examples},) to match x_NxD; "
      f"got y_N.shape={y_N.shape}."
    )
  if integer and not jnp.issubdtype(y_N.dtype, jnp.integer):
    raise TypeError(f"{fn}: `y_N` must hold integer class labels; got y_N.dtype={y_N.dtype}.")
  rule = f"must be a class label in [0, {high + 1})" if integer else "must lie in [0, 1]"
  if _validate.is_concrete(y_N):
    _validate.values_in(fn, "y_N", y_N, low=0, high=high, rule=rule)
    return jnp.asarray(y_N), None
  in_range_N = (y_N >= 0) & (y_N <= high)  # False for NaN
  if _measures.CHECKING.value:  # inside `checked`: the error names this function and y_N
    # (the measures' own check helper: one message format for every checked error).
    _measures._check(fn, ~in_range_N, y_N, f"`y_N` {rule}", "example", "label")
  return y_N, in_range_N


def _check_params(fn: str, params: Params, ndim: int) -> None:
  if not isinstance(params, dict) or set(params) != {"w", "b"}:
    raise ValueError(f"{fn}: `params` must be a dict with keys 'w' and 'b'; got {params!r:.80}.")
  for k in ("w", "b"):  # (arrays, or shapes and dtypes under eval_shape)
    dtype = getattr(params[k], "dtype", None)
    dtype = np.asarray(params[k]).dtype if dtype is None else dtype
    if not _validate.is_real_dtype(dtype):
      raise TypeError(f"{fn}: `params` must hold real arrays; got params['{k}'].dtype={dtype}.")
  w_shape, b_shape = jnp.shape(params["w"]), jnp.shape(params["b"])
  if len(w_shape) != ndim or b_shape != w_shape[1:]:
    want = "w [D], b []" if ndim == 1 else "w [D, K], b [K]"
    raise ValueError(
      f"{fn}: `params` must have shapes {want}; got params['w'].shape={w_shape}, "
      f"params['b'].shape={b_shape}."
    )


class _Inputs(NamedTuple):
  """The checked inputs of a model function."""

  x: jax.Array  # the features: [N, D], or [D, N] when feature_major
  feature_major: bool
  y_N: jax.Array | None  # the labels, when the function takes them
  # Traced labels: whether each is in range (unknown before running); None: checked.
  y_in_range_N: jax.Array | None
  precision: lax.Precision  # of every product with x


def _check_inputs(fn: str, params: Params, x_NxD, y_N, l2, precision, *, ndim: int) -> _Inputs:
  """All checks of a model function, before any compute."""
  _check_params(fn, params, ndim)
  x, feature_major = _check_features(fn, x_NxD, jnp.shape(params["w"]))
  y_in_range_N = None
  if y_N is not None:
    num_examples = x.shape[1 if feature_major else 0]
    if num_examples == 0:  # a mean over no examples: NaN
      raise ValueError(f"{fn}: `x_NxD` must hold at least one example; got N = 0.")
    high = jnp.shape(params["w"])[1] - 1 if ndim == 2 else 1
    y_N, y_in_range_N = _check_labels(fn, y_N, num_examples, high=high, integer=ndim == 2)
  _validate.real(fn, "l2", l2, low=0.0)
  return _Inputs(x, feature_major, y_N, y_in_range_N, _core.check_precision(precision, fn))


def _nan_where_out_of_range(inputs: _Inputs, a_N: jax.Array) -> jax.Array:
  """``a_N`` (one row per example) with NaN in the rows of out-of-range traced labels.

  Under jit nothing can be raised before computing; a NaN cannot be mistaken for a loss or a
  gradient, while the formulas would give a finite value (negative, for y = -1).
  """
  if inputs.y_in_range_N is None:
    return a_N
  in_range = inputs.y_in_range_N.reshape(inputs.y_in_range_N.shape + (1,) * (a_N.ndim - 1))
  return jnp.where(in_range, a_N, jnp.nan)


def _l2_penalty(w: jax.Array, l2: float) -> jax.Array:
  return 0.5 * l2 * jnp.sum(jnp.square(w))


def _init(fn, shape_w, shape_b, *, key, scale, dtype) -> Params:
  for name, size in zip(("num_features", "num_classes"), (*shape_w,), strict=False):
    _validate.count(fn, name, size)
  _validate.real(fn, "scale", scale, low=0.0)
  dtype = _float_dtype(fn, dtype)
  if key is None:
    w = jnp.zeros(shape_w, dtype)
  else:
    _validate.prng_key(fn, "key", key)
    w = scale * jax.random.normal(key, shape_w, dtype)
  return {"w": w, "b": jnp.zeros(shape_b, dtype)}


# ------------------------------------------------------------------ logistic regression


def init_logistic_regression(
  num_features: int, *, key: jax.Array | None = None, scale: float = 0.01, dtype=None
) -> Params:
  r"""Initial logistic-regression parameters ``{"w": [D], "b": []}``.

  .. math::
    w = 0 \text{ (no key) or } w \sim \mathcal{N}(0, \text{scale}^2 I), \quad b = 0

  Args:
    num_features: D.
    key: optional PRNG key (``jax.random.key(seed)``; an integer seed is refused, as
      ``jax.random`` refuses it); without one ``w`` is zero (the loss is convex, so zero is
      a fine start).
    scale: standard deviation of the random ``w``.
    dtype: float dtype; the default float dtype (float32 unless x64) when None.

  Returns:
    ``{"w": [D], "b": []}``.

  >>> init_logistic_regression(3)["w"].round(6).tolist()
  [0.0, 0.0, 0.0]
  """
  return _init("init_logistic_regression", (num_features,), (), key=key, scale=scale, dtype=dtype)


def logistic_regression_logits(
  params: Params, x_NxD: ArrayLike, *, precision: PrecisionLike = None
) -> jax.Array:
  r"""Logits of logistic regression (seed §4.2: the argument of σ).

  .. math::
    z_n = x_n \cdot w + b

  Args:
    params: ``{"w": [D], "b": []}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    Logits, ``[N]``.

  >>> params = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(0.5)}
  >>> logistic_regression_logits(params, jnp.array([[2.0, 1.0]])).round(6).tolist()
  [1.5]
  """
  fn = "logistic_regression_logits"
  return _logistic_logits(fn, params, x_NxD, precision=precision)[0]


def _logistic_logits(fn: str, params: Params, x_NxD, y_N=None, l2=0.0, *, precision):
  """(z_N, the checked inputs): checks, then z_N."""
  inputs = _check_inputs(fn, params, x_NxD, y_N, l2, precision, ndim=1)
  x, w = inputs.x, params["w"]
  # w @ X_DxN, not X_DxNᵀ w: XLA:CPU lowers this order (and its transpose, the gradient's
  # X_DxN @ r) to two contiguous streams; the other order becomes a strided loop.
  xw = (w, x) if inputs.feature_major else (x, w)
  return _core.matmul(*xw, inputs.precision) + params["b"], inputs


def logistic_regression_probs(
  params: Params, x_NxD: ArrayLike, *, precision: PrecisionLike = None
) -> jax.Array:
  r"""Predicted probability of class 1 (seed §4.1: :math:`\hat y = \sigma(x)`).

  .. math::
    \hat y_n = \sigma(x_n \cdot w + b) = \frac{1}{1 + e^{-(x_n \cdot w + b)}}

  Args:
    params: ``{"w": [D], "b": []}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    Probabilities in [0, 1], ``[N]``.

  >>> params = {"w": jnp.array([1.0]), "b": jnp.array(0.0)}
  >>> logistic_regression_probs(params, jnp.array([[0.0]])).round(6).tolist()
  [0.5]
  """
  fn = "logistic_regression_probs"
  return sigmoid(_logistic_logits(fn, params, x_NxD, precision=precision)[0])


def logistic_regression_loss(
  params: Params,
  x_NxD: ArrayLike,
  y_N: ArrayLike,
  *,
  l2: float = 0.0,
  precision: PrecisionLike = None,
) -> jax.Array:
  r"""Mean binary cross-entropy of logistic regression, plus an optional L2 penalty.

  The correct version of the seed's §4.1 loss: both classes contribute.

  .. math::
    L(w, b) = -\frac{1}{N} \sum_{n=1}^N \big[ y_n \log \sigma(z_n)
      + (1 - y_n) \log(1 - \sigma(z_n)) \big] + \frac{\lambda}{2} \lVert w \rVert^2,
    \quad z_n = x_n \cdot w + b

  Computed from the logits with :func:`xent_jax.sigmoid_binary_cross_entropy` (stable
  for any logit: no ``log(σ)`` of a rounded probability).

  Args:
    params: ``{"w": [D], "b": []}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    y_N: labels in [0, 1] (hard 0/1 or soft), ``[N]``; under ``jax.jit`` one outside gives
      NaN.
    l2: :math:`\lambda \ge 0`, the weight-decay strength (not applied to ``b``).
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    Scalar loss.

  >>> params = init_logistic_regression(2)
  >>> loss = logistic_regression_loss(params, jnp.ones((4, 2)), jnp.array([0, 1, 1, 0]))
  >>> float(loss)  # log 2  # doctest: +ELLIPSIS
  0.6931...
  """
  fn = "logistic_regression_loss"
  z_N, inputs = _logistic_logits(fn, params, x_NxD, y_N, l2, precision=precision)
  y_N = _nan_where_out_of_range(inputs, inputs.y_N.astype(z_N.dtype))
  loss_N = sigmoid_binary_cross_entropy(z_N, y_N)
  return jnp.mean(loss_N) + _l2_penalty(params["w"], l2)


def logistic_regression_grad(
  params: Params,
  x_NxD: ArrayLike,
  y_N: ArrayLike,
  *,
  l2: float = 0.0,
  precision: PrecisionLike = None,
) -> Params:
  r"""Closed-form gradient of :func:`logistic_regression_loss` (seed §4.2).

  .. math::
    \nabla_w L = -\frac{1}{N} \sum_{n=1}^N (y_n - \sigma_n)\, x_n + \lambda w, \qquad
    \nabla_b L = -\frac{1}{N} \sum_{n=1}^N (y_n - \sigma_n)

  It is derived from :math:`\sigma' = \sigma (1 - \sigma)`; the seed states the ``w``
  part (its β) without the penalty.

  Args:
    params: ``{"w": [D], "b": []}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    y_N: labels in [0, 1], ``[N]``; under ``jax.jit`` one outside gives NaN.
    l2: :math:`\lambda \ge 0`.
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    ``{"w": [D], "b": []}``, same structure as ``params``.

  >>> params = init_logistic_regression(1)
  >>> g = logistic_regression_grad(params, jnp.array([[1.0], [2.0]]), jnp.array([1, 0]))
  >>> g["w"].round(6).tolist()
  [0.25]
  """
  fn = "logistic_regression_grad"
  z_N, inputs = _logistic_logits(fn, params, x_NxD, y_N, l2, precision=precision)
  sigma_N = sigmoid(z_N)
  num_examples = sigma_N.shape[0]
  residual_N = sigma_N - _nan_where_out_of_range(inputs, inputs.y_N.astype(sigma_N.dtype))
  x, r = inputs.x, residual_N
  x_t_r = _core.matmul(*((x, r) if inputs.feature_major else (r, x)), inputs.precision)  # Xᵀ r
  return {"w": x_t_r / num_examples + l2 * params["w"], "b": jnp.mean(residual_N)}


def seed_section_4_1_loss(
  params: Params, x_NxD: ArrayLike, y_N: ArrayLike, *, precision: PrecisionLike = None
) -> jax.Array:
  r"""The loss exactly as the seed's §4.1 writes it — **not** the cross-entropy.

  .. math::
    L_{4.1}(w, b) = -\frac{1}{N} \sum_{n=1}^N y_n \log \sigma(x_n \cdot w + b)

  The seed omits the :math:`(1 - y_n) \log(1 - \sigma_n)` term, so examples with
  :math:`y_n = 0` contribute nothing and the loss falls to 0 by predicting class 1
  everywhere (:math:`b \to \infty`): it has no minimiser, and its gradient,
  :math:`-\frac{1}{N} \sum_n y_n (1 - \sigma_n) x_n`, differs from the seed's §4.2
  formula :math:`-\frac{1}{N} \sum_n (y_n - \sigma_n) x_n`. Kept for the errata
  experiment (E4/E5); use :func:`logistic_regression_loss` to train.

  Computed with the tail-accurate ``log_sigmoid`` (``log σ(z) = -softplus(-z)``).

  Args:
    params: ``{"w": [D], "b": []}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    y_N: labels in [0, 1], ``[N]``; under ``jax.jit`` one outside gives NaN.
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    Scalar loss.

  >>> params = init_logistic_regression(1)
  >>> loss = seed_section_4_1_loss(params, jnp.ones((2, 1)), jnp.array([1, 0]))
  >>> float(loss)  # (log 2) / 2  # doctest: +ELLIPSIS
  0.3465...
  """
  fn = "seed_section_4_1_loss"
  z_N, inputs = _logistic_logits(fn, params, x_NxD, y_N, precision=precision)
  y_N = _nan_where_out_of_range(inputs, inputs.y_N.astype(z_N.dtype))
  # Where y = 0 the term is 0 even if log σ(z) = -inf (z = -inf): 0·(-inf) would be NaN.
  return -jnp.mean(jnp.where(y_N == 0, 0.0, y_N * log_sigmoid(z_N)))


# ------------------------------------------------------------------- softmax regression


def init_softmax_regression(
  num_features: int,
  num_classes: int,
  *,
  key: jax.Array | None = None,
  scale: float = 0.01,
  dtype=None,
) -> Params:
  r"""Initial softmax-regression parameters ``{"w": [D, K], "b": [K]}``.

  .. math::
    W = 0 \text{ (no key) or } W_{dk} \sim \mathcal{N}(0, \text{scale}^2), \quad b = 0

  Args:
    num_features: D.
    num_classes: K.
    key: optional PRNG key (``jax.random.key(seed)``; an integer seed is refused, as
      ``jax.random`` refuses it); without one ``w`` is zero.
    scale: standard deviation of the random ``w``.
    dtype: float dtype; the default float dtype when None.

  Returns:
    ``{"w": [D, K], "b": [K]}``.

  >>> init_softmax_regression(2, 3)["w"].shape
  (2, 3)
  """
  return _init(
    "init_softmax_regression",
    (num_features, num_classes),
    (num_classes,),
    key=key,
    scale=scale,
    dtype=dtype,
  )


def softmax_regression_logits(
  params: Params, x_NxD: ArrayLike, *, precision: PrecisionLike = None
) -> jax.Array:
  r"""Logits of softmax regression.

  .. math::
    z_{nk} = \sum_d x_{nd} W_{dk} + b_k

  Args:
    params: ``{"w": [D, K], "b": [K]}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    Logits, ``[N, K]``.

  >>> params = {"w": jnp.eye(2), "b": jnp.array([0.0, 1.0])}
  >>> softmax_regression_logits(params, jnp.array([[3.0, 4.0]])).round(6).tolist()
  [[3.0, 5.0]]
  """
  fn = "softmax_regression_logits"
  return _softmax_logits(fn, params, x_NxD, precision=precision)[0]


def _softmax_logits(fn: str, params: Params, x_NxD, y_N=None, l2=0.0, *, precision):
  """(z_NxK, the checked inputs): checks, then z."""
  inputs = _check_inputs(fn, params, x_NxD, y_N, l2, precision, ndim=2)
  x_NxD = inputs.x.T if inputs.feature_major else inputs.x
  return _core.matmul(x_NxD, params["w"], inputs.precision) + params["b"][None, :], inputs


def softmax_regression_probs(
  params: Params, x_NxD: ArrayLike, *, precision: PrecisionLike = None
) -> jax.Array:
  r"""Predicted class distribution of softmax regression (seed §2.2–2.3).

  .. math::
    p_{nk} = \frac{e^{z_{nk}}}{\sum_j e^{z_{nj}}}

  Computed as ``exp(log_softmax(z))`` with the library's tail-accurate log-softmax.

  Args:
    params: ``{"w": [D, K], "b": [K]}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    Probabilities, ``[N, K]``; each row sums to 1.

  >>> params = init_softmax_regression(2, 4)
  >>> softmax_regression_probs(params, jnp.ones((1, 2))).round(6).tolist()
  [[0.25, 0.25, 0.25, 0.25]]
  """
  z_NxK = _softmax_logits("softmax_regression_probs", params, x_NxD, precision=precision)[0]
  return jnp.exp(log_softmax(z_NxK, axis=-1))


def softmax_regression_loss(
  params: Params,
  x_NxD: ArrayLike,
  y_N: ArrayLike,
  *,
  l2: float = 0.0,
  precision: PrecisionLike = None,
) -> jax.Array:
  r"""Mean softmax cross-entropy with integer labels, plus an optional L2 penalty.

  .. math::
    L(W, b) = -\frac{1}{N} \sum_{n=1}^N \log p_{n y_n} + \frac{\lambda}{2} \lVert W \rVert_F^2

  Computed from the logits with
  :func:`xent_jax.softmax_cross_entropy_with_integer_labels` (tail accurate).

  Args:
    params: ``{"w": [D, K], "b": [K]}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    y_N: integer labels in ``[0, K)``, ``[N]``; under ``jax.jit`` one outside gives NaN.
    l2: :math:`\lambda \ge 0` (not applied to ``b``).
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    Scalar loss.

  >>> params = init_softmax_regression(2, 4)
  >>> loss = softmax_regression_loss(params, jnp.ones((2, 2)), jnp.array([0, 3]))
  >>> float(loss)  # log 4  # doctest: +ELLIPSIS
  1.386...
  """
  fn = "softmax_regression_loss"
  z_NxK, inputs = _softmax_logits(fn, params, x_NxD, y_N, l2, precision=precision)
  # NaN added to the logits in the rows of out-of-range traced labels: the cross-entropy's
  # partials are 0 in such a row (a NaN loss that a `where` after it masks), so without it
  # the loss was NaN while its gradient was finite and a jitted step trained on. (Added,
  # not selected: a select passes no cotangent to the logits it replaces.)
  if inputs.y_in_range_N is not None:
    z_NxK = z_NxK + jnp.where(inputs.y_in_range_N, 0, jnp.nan).astype(z_NxK.dtype)[:, None]
  loss_N = softmax_cross_entropy_with_integer_labels(z_NxK, inputs.y_N)
  return jnp.mean(loss_N) + _l2_penalty(params["w"], l2)


def softmax_regression_grad(
  params: Params,
  x_NxD: ArrayLike,
  y_N: ArrayLike,
  *,
  l2: float = 0.0,
  precision: PrecisionLike = None,
) -> Params:
  r"""Closed-form gradient of :func:`softmax_regression_loss`.

  .. math::
    \nabla_W L = -\frac{1}{N} X^\top (Y - P) + \lambda W, \qquad
    \nabla_b L = -\frac{1}{N} \sum_{n=1}^N (Y_n - P_n)

  with :math:`Y` the one-hot labels ``[N, K]`` and :math:`P` the predicted
  probabilities; the multi-class form of the seed's §4.2 gradient.

  Args:
    params: ``{"w": [D, K], "b": [K]}``.
    x_NxD: features, ``[N, D]``, or a :class:`~xent_jax.data.FeatureMajor` holding them
      as ``[D, N]`` (faster full-batch steps on CPU).
    y_N: integer labels in ``[0, K)``, ``[N]``; under ``jax.jit`` one outside gives NaN.
    l2: :math:`\lambda \ge 0`.
    precision: of the products with the features, a ``jax.lax.Precision`` or its name;
      None is ``HIGHEST`` (true float32 on accelerators, SPEC §9).

  Returns:
    ``{"w": [D, K], "b": [K]}``.

  >>> params = init_softmax_regression(1, 2)
  >>> softmax_regression_grad(params, jnp.ones((1, 1)), jnp.array([1]))["b"].round(6).tolist()
  [0.5, -0.5]
  """
  fn = "softmax_regression_grad"
  z_NxK, inputs = _softmax_logits(fn, params, x_NxD, y_N, l2, precision=precision)
  p_NxK = jnp.exp(log_softmax(z_NxK, axis=-1))
  num_examples, num_classes = p_NxK.shape
  residual_NxK = p_NxK - jax.nn.one_hot(inputs.y_N, num_classes, dtype=p_NxK.dtype)
  residual_NxK = _nan_where_out_of_range(inputs, residual_NxK)  # one_hot: a zero row
  x_DxN = inputs.x if inputs.feature_major else inputs.x.T
  x_t_r = _core.matmul(x_DxN, residual_NxK, inputs.precision)  # Xᵀ r
  grad_w = x_t_r / num_examples + l2 * params["w"]
  return {"w": grad_w, "b": jnp.mean(residual_NxK, axis=0)}


# ------------------------------------------------------------------------ for the trainers

# The losses above as xent_jax.training sees them: the rank of ``params["w"]``, which says
# the labels they take (checked at a trainer's entry, where the data are concrete), and their
# keyword hyperparameters, which a trainer passes as traced values (a sweep over ``l2``
# compiles once). Every one of them accepts FeatureMajor features.
_LOSSES = {  # the rank of params["w"]: 1 (0/1 or [0, 1] labels) or 2 (classes [0, K))
  logistic_regression_loss: (1,),
  seed_section_4_1_loss: (1,),
  softmax_regression_loss: (2,),
}
_TRACED_KEYWORDS = ("l2",)


def _check_loss_data(fn: str, loss_fn, params: Params, x_NxD, y_N) -> None:
  """The checks ``loss_fn`` (one of :data:`_LOSSES`) makes, with errors naming ``fn``."""
  _check_inputs(fn, params, x_NxD, y_N, 0.0, None, ndim=_LOSSES[loss_fn][0])
