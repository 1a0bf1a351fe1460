"""Datasets for the regression models: two real ones that ship with scikit-learn, and synthetic.

* :func:`load_breast_cancer` — binary, 569 examples × 30 features;
* :func:`load_digits` — 10 classes, 1797 examples × 64 features (8×8 images);
* :func:`make_logistic_data` / :func:`make_softmax_data` — labels drawn from a known
  logistic/softmax model, so the true parameters are returned too.

The real datasets ship inside the scikit-learn wheel (no download at run time). scikit-learn
is imported inside the loaders only: ``import xent_jax`` never imports it.

Features are standardised with the mean and standard deviation of the *training* split
only (the held-out split never leaks into them). Once standardised, both real datasets are
linearly separable (SPEC §3), so train them with an L2 penalty.

Arrays are ``jax.Array``: features in the default float dtype (float32 unless
``JAX_ENABLE_X64``), labels ``int32``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xent_jax import _validate

__all__ = [
  "Batch",
  "Dataset",
  "FeatureMajor",
  "feature_major",
  "load_breast_cancer",
  "load_digits",
  "make_logistic_data",
  "make_softmax_data",
  "standardize",
]


class Batch(NamedTuple):
  """Examples and their labels.

  Attributes:
    x: features, ``[N, D]``.
    y: integer labels, ``[N]`` (0/1 for binary problems, ``[0, K)`` for K classes).
  """

  x: jax.Array
  y: jax.Array


class FeatureMajor(NamedTuple):
  r"""Features stored feature-major: ``x_DxN``, each feature's N values contiguous.

  Pass it wherever :mod:`xent_jax.models` takes ``x_NxD``; it means the same matrix X
  ``[N, D]``. The logistic-regression gradient reads X twice, as :math:`Xw` and as
  :math:`X^\top r`: stored ``[N, D]``, XLA:CPU runs the transposed product at a third of
  memory speed, stored ``[D, N]`` both products stream contiguous rows (measured on 2 CPU
  cores, N = 200k, D = 100: a full-batch train step at 40% of the two-reads-of-X roofline
  row-major, 110% feature-major). Build it once with :func:`feature_major`, outside the
  training loop (the transpose is a copy).

  Attributes:
    x_DxN: the features, transposed, ``[D, N]``.
  """

  x_DxN: jax.Array

  @property
  def shape(self) -> tuple[int, int]:
    """The shape of the matrix it holds, ``(N, D)``."""
    num_features, num_examples = self.x_DxN.shape
    return num_examples, num_features


def feature_major(x_NxD) -> FeatureMajor:
  """X ``[N, D]`` (any array) as :class:`FeatureMajor` (one transposing copy).

  >>> feature_major(np.ones((4, 3))).x_DxN.shape
  (3, 4)
  """
  x_NxD = _validate.array("feature_major", "x_NxD", x_NxD, ndim=2, what=" [N, D]")
  return FeatureMajor(jnp.transpose(jnp.asarray(x_NxD)))


class Dataset(NamedTuple):
  """A train/held-out split.

  Attributes:
    train: training examples, ``x [N, D]``, ``y [N]``.
    test: held-out examples, ``x [M, D]``, ``y [M]``.
    num_classes: K (2 for binary problems).
    true_params: the parameters the labels were drawn from (synthetic data), else None.
  """

  train: Batch
  test: Batch
  num_classes: int
  true_params: dict[str, jax.Array] | None = None


def standardize(x_train_NxD: np.ndarray, x_test_MxD: np.ndarray):
  r"""Standardises both splits with the training split's statistics.

  .. math::
    x' = \frac{x - \mu_{\text{train}}}{s_{\text{train}}}, \qquad
    s_{\text{train}} = \text{std}_{\text{train}}(x) \text{ (1 where it is 0)}

  A feature that is constant on the training split (e.g. a border pixel of ``digits``)
  has ``s = 0``; it is only centred, never divided by 0.

  Args:
    x_train_NxD: training features, ``[N, D]``.
    x_test_MxD: held-out features, ``[M, D]``.

  Returns:
    ``(x_train_NxD, x_test_MxD)`` as float64 numpy arrays.

  >>> standardize(np.array([[0.0], [2.0]]), np.array([[4.0]]))[1]
  array([[3.]])
  """
  fn = "standardize"
  x_train_NxD = _validate.array(fn, "x_train_NxD", x_train_NxD, ndim=2, what=" [N, D]")
  x_test_MxD = _validate.array(fn, "x_test_MxD", x_test_MxD, ndim=2, what=" [M, D]")
  if x_train_NxD.shape[0] == 0:
    raise ValueError(f"{fn}: `x_train_NxD` must have rows; got shape {x_train_NxD.shape}.")
  if x_test_MxD.shape[1] != x_train_NxD.shape[1]:
    raise ValueError(
      f"{fn}: `x_test_MxD` must have the D={x_train_NxD.shape[1]} columns of x_train_NxD; "
      f"got shape {x_test_MxD.shape}."
    )
  _validate.values_in(fn, "x_train_NxD", x_train_NxD)
  _validate.values_in(fn, "x_test_MxD", x_test_MxD)
  x_train_NxD = np.asarray(x_train_NxD, np.float64)
  mean_D = x_train_NxD.mean(axis=0)
  std_D = x_train_NxD.std(axis=0)
  std_D = np.where(std_D > 0, std_D, 1.0)
  scale = lambda x: (np.asarray(x, np.float64) - mean_D) / std_D
  return scale(x_train_NxD), scale(x_test_MxD)


def _check_split(fn, test_fraction, seed) -> None:
  _validate.count(fn, "seed", seed, minimum=0, maximum=2**32 - 1)  # scikit-learn's range
  _validate.real(
    fn, "test_fraction", test_fraction, low=0.0, high=1.0, open_low=True, open_high=True
  )


def _split_standardize(fn, x, y, *, test_fraction, seed, num_classes: int) -> Dataset:
  from sklearn.model_selection import train_test_split  # Optional dependency: lazy.

  # A stratified split needs every class on both sides (scikit-learn rounds the test size up).
  num_test = math.ceil(test_fraction * len(y))
  if min(num_test, len(y) - num_test) < num_classes:
    raise ValueError(
      f"{fn}: `test_fraction`={test_fraction} leaves {num_test} of {len(y)} examples "
      f"held out; each split needs at least one example of each of the {num_classes} classes."
    )

  x_tr, x_te, y_tr, y_te = train_test_split(
    x, y, test_size=test_fraction, random_state=seed, stratify=y
  )
  x_tr, x_te = standardize(x_tr, x_te)
  return Dataset(_as_batch(x_tr, y_tr), _as_batch(x_te, y_te), num_classes)


def load_breast_cancer(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  r"""scikit-learn's Wisconsin breast-cancer data: binary, 569 × 30, standardised.

  .. math::
    y \in \{0, 1\} \ (1 = \text{benign}), \qquad x \in \mathbb{R}^{30}

  A stratified, seeded held-out split; features standardised with the training split's
  statistics (:func:`standardize`). Linearly separable once standardised: fit it with an
  L2 penalty.

  Args:
    test_fraction: fraction of examples held out, in (0, 1).
    seed: seed of the split (an integer in [0, 2^32)).

  Returns:
    A :class:`Dataset`: ``train.x [455, 30]``, ``test.x [114, 30]`` by default.

  >>> load_breast_cancer().train.x.shape
  (455, 30)
  """
  _check_split("load_breast_cancer", test_fraction, seed)
  from sklearn import datasets  # Optional dependency: lazy.

  x, y = datasets.load_breast_cancer(return_X_y=True)
  return _split_standardize(
    "load_breast_cancer", x, y, test_fraction=test_fraction, seed=seed, num_classes=2
  )


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  r"""scikit-learn's handwritten digits: 10 classes, 1797 × 64 (8×8 pixels), standardised.

  .. math::
    y \in \{0, \dots, 9\}, \qquad x \in \mathbb{R}^{64}

  A stratified, seeded held-out split; features standardised with the training split's
  statistics (:func:`standardize`; constant pixels are only centred).

  Args:
    test_fraction: fraction of examples held out, in (0, 1).
    seed: seed of the split (an integer in [0, 2^32)).

  Returns:
    A :class:`Dataset`: ``train.x [1437, 64]``, ``test.x [360, 64]`` by default.

  >>> load_digits().num_classes
  10
  """
  _check_split("load_digits", test_fraction, seed)
  from sklearn import datasets  # Optional dependency: lazy.

  x, y = datasets.load_digits(return_X_y=True)
  return _split_standardize(
    "load_digits", x, y, test_fraction=test_fraction, seed=seed, num_classes=10
  )


def make_logistic_data(
  seed: int,
  num_train: int = 2000,
  num_test: int = 1000,
  num_features: int = 5,
  *,
  weight_scale: float = 1.0,
  bias: float = 0.5,
) -> Dataset:
  r"""Binary labels drawn from a known logistic model (seed §4), non-separable.

  .. math::
    x_n \sim \mathcal{N}(0, I_D), \quad w^\star \sim \mathcal{N}(0, s^2 I_D / D), \quad
    y_n \sim \text{Bernoulli}\big(\sigma(x_n \cdot w^\star + b^\star)\big)

  With N ≫ D the two classes overlap (every x has both labels with positive
  probability), so the unpenalised mean cross-entropy has a finite minimiser, which tends
  to the true parameters as N grows.

  Drawn in float64 with ``numpy.random.default_rng(seed)`` and then cast: the same seed
  gives the same data with and without x64, and costs no compilation.

  Args:
    seed: seed of the draw (an integer >= 0).
    num_train: N >= 1.
    num_test: M >= 0.
    num_features: D >= 1.
    weight_scale: s >= 0, the typical size of the true logit's slope part.
    bias: :math:`b^\star`.

  Returns:
    A :class:`Dataset` with ``true_params = {"w": [D], "b": []}``.

  >>> data = make_logistic_data(0, 100, 10, 3)
  >>> data.train.x.shape, data.true_params["w"].shape
  ((100, 3), (3,))
  """
  _check_synthetic("make_logistic_data", seed, num_train, num_test, num_features, weight_scale)
  _validate.real("make_logistic_data", "bias", bias)
  rng = np.random.default_rng(seed)
  w_D = weight_scale * rng.normal(size=num_features) / np.sqrt(num_features)
  x_NxD = rng.normal(size=(num_train + num_test, num_features))
  p_N = 1 / (1 + np.exp(-(x_NxD @ w_D + bias)))
  y_N = (rng.random(len(p_N)) < p_N).astype(np.int32)
  true_params = {"w": w_D, "b": np.asarray(bias, np.float64)}
  return _as_dataset(x_NxD, y_N, num_train, num_classes=2, true_params=true_params)


def make_softmax_data(
  seed: int,
  num_train: int = 2000,
  num_test: int = 1000,
  num_features: int = 5,
  num_classes: int = 3,
  *,
  weight_scale: float = 1.0,
) -> Dataset:
  r"""Integer labels drawn from a known softmax-regression model (seed §2.2), non-separable.

  .. math::
    x_n \sim \mathcal{N}(0, I_D), \quad W^\star_{dk} \sim \mathcal{N}(0, s^2 / D), \quad
    b^\star_k \sim \mathcal{N}(0, 1), \quad
    y_n \sim \text{Categorical}\big(\text{softmax}(x_n W^\star + b^\star)\big)

  Drawn in float64 with ``numpy.random.default_rng(seed)``, then cast.

  Args:
    seed: seed of the draw (an integer >= 0).
    num_train: N >= 1.
    num_test: M >= 0.
    num_features: D >= 1.
    num_classes: K >= 2.
    weight_scale: s >= 0.

  Returns:
    A :class:`Dataset` with ``true_params = {"w": [D, K], "b": [K]}``.

  >>> make_softmax_data(0, 50, 10, 4, 3).true_params["w"].shape
  (4, 3)
  """
  _check_synthetic("make_softmax_data", seed, num_train, num_test, num_features, weight_scale)
  _validate.count("make_softmax_data", "num_classes", num_classes, minimum=2)
  rng = np.random.default_rng(seed)
  shape_w = (num_features, num_classes)
  w_DxK = weight_scale * rng.normal(size=shape_w) / np.sqrt(num_features)
  b_K = rng.normal(size=num_classes)
  x_NxD = rng.normal(size=(num_train + num_test, num_features))
  z_NxK = x_NxD @ w_DxK + b_K
  p_NxK = np.exp(z_NxK - z_NxK.max(axis=1, keepdims=True))
  cdf_NxK = np.cumsum(p_NxK / p_NxK.sum(axis=1, keepdims=True), axis=1)
  # Inverse-CDF sampling; the last class takes any u above a cdf that rounds below 1.
  y_N = np.minimum(np.sum(rng.random((len(z_NxK), 1)) >= cdf_NxK, axis=1), num_classes - 1)
  true_params = {"w": w_DxK, "b": b_K}
  return _as_dataset(x_NxD, y_N, num_train, num_classes=num_classes, true_params=true_params)


def _check_synthetic(fn, seed, num_train, num_test, num_features, weight_scale) -> None:
  _validate.count(fn, "seed", seed, minimum=0)
  _validate.count(fn, "num_train", num_train)
  _validate.count(fn, "num_test", num_test, minimum=0)
  _validate.count(fn, "num_features", num_features)
  _validate.real(fn, "weight_scale", weight_scale, low=0.0)


def _as_batch(x_NxD, y_N) -> Batch:
  return Batch(jnp.asarray(x_NxD, _default_float()), jnp.asarray(y_N, jnp.int32))


def _as_dataset(x_NxD, y_N, num_train, *, num_classes, true_params) -> Dataset:
  # Split in numpy: slicing device arrays eagerly would compile a kernel per shape.
  train = _as_batch(x_NxD[:num_train], y_N[:num_train])
  test = _as_batch(x_NxD[num_train:], y_N[num_train:])
  true_params = {k: jnp.asarray(v, _default_float()) for k, v in true_params.items()}
  return Dataset(train, test, num_classes, true_params)


def _default_float():
  return jnp.zeros(()).dtype
