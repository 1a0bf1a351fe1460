"""The anchors' own test cases, ported: optax, scipy, keras and torch against xent_jax.

Each case is one assertion of an anchor's test file, one example of its docs, or one of
its documented formulas, on the anchor's own inputs. The expected number is the literal of
the anchor's test (with the anchor's tolerance) or the anchor's documented formula
evaluated here in numpy float64 on the same (rounded) inputs: never a value computed by
xent_jax. Each case maps the anchor's conventions onto ours: the target first, the class
axis -1 unless the case names one, per-example output with the anchor's reduction applied
here (keras: the mean over the batch, sample weights included; torch: its documented
``reduction='mean'``; optax: none).

Where we differ on purpose (``DIFFERENCES``: scipy and keras renormalise the inputs they
are given, keras clips probabilities to [1e-7, 1 - 1e-7], torch clamps log at -100, optax's
poly-1 term is 1 - Σ t q where ours is Σ t (1 - q)), our value is checked against an
independent float64 value instead, shown to differ from the anchor's number (so that a case
that comes to agree must move back to the agreeing ones), and the caller-side mapping that
reproduces the anchor's number is checked too.

Counts (``COUNTS``, kept current by ``test_counts``; derivative and error cases included):
optax 92 agree / 4 differ, scipy 12 / 6, keras 51 / 9, torch 20 / 1. Porting them found two
bugs, fixed: tuple class axes flattened in sorted rather than given order (optax's
``test_axes``), and a NaN Hessian of the focal loss at large margins (optax's
``test_extreme_logits_finite_gradients``).

Sources: optax 0.2.8 ``optax/losses/_classification_test.py`` and the examples of
``_classification.py``; scipy 1.17 ``scipy/stats/tests/test_entropy.py`` (``TestEntropy``);
keras ``keras/src/losses/losses_test.py`` (keras-team/keras 3422977); the torch.nn docs of
``CrossEntropyLoss``, ``NLLLoss``, ``BCELoss``, ``BCEWithLogitsLoss`` and ``KLDivLoss``. Not
ported, as xent_jax has no counterpart: optax's hinge, perceptron, sparsemax and CTC
losses, scipy's ``differential_entropy``, keras's regression, hinge, categorical focal,
dice, Tversky and circle losses.

Speed: the cases of one function with the same options and shapes run as one call on
their examples concatenated (the examples are independent), and all those calls are
compiled as one program (about 80 groups: one compilation of a few seconds, not 80).
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import xent_jax as xj

jax.config.update("jax_numpy_rank_promotion", "raise")

DTYPE = np.float64 if jax.config.jax_enable_x64 else np.float32
# Our value against a float64 formula: SPEC §2's accuracy plus the rounding of the inputs.
TIGHT = {"rtol": 1e-5, "atol": 1e-6} if DTYPE == np.float32 else {"rtol": 1e-12, "atol": 1e-13}
DECIMAL_3 = {"atol": 1.5e-3}  # keras's assertAlmostEqual(..., decimal=3)
KERAS_ALL_CLOSE = {"rtol": 1e-6, "atol": 1e-6}  # keras's assertAllClose defaults

OPTAX = "optax/losses/_classification_test.py::"
OPTAX_DOCS = "optax/losses/_classification.py (docstring example)::"
SCIPY = "scipy/stats/tests/test_entropy.py::TestEntropy."
KERAS = "keras/src/losses/losses_test.py::"
TORCH = "torch.nn docs::"


def _a(x) -> np.ndarray:
  return np.asarray(x, DTYPE)


def _y(x) -> np.ndarray:
  return np.asarray(x, np.int32)


# ----------------------------------------------------------------------------------------------
# The anchors' formulas in numpy float64 (0·log 0 = 0; inputs as rounded to DTYPE).


def _f64(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def _mul0(a, b):
  a, b = np.broadcast_arrays(_f64(a), _f64(b))
  return np.where(a == 0, 0.0, a * np.where(a == 0, 1.0, b))


def _log(x):
  with np.errstate(divide="ignore"):
    return np.log(_f64(x))


def _xlogy(x, y):
  return _mul0(x, _log(y))


def _log_softmax(z, axis=-1, where=None):
  z = _f64(z) if where is None else np.where(where, _f64(z), -np.inf)
  m = np.max(z, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  return z - m - _log(np.sum(np.exp(z - m), axis=axis, keepdims=True))


def _softmax_xent(z, t, axis=-1, where=None):
  terms = _mul0(t, _log_softmax(z, axis, where))
  return -np.sum(terms if where is None else np.where(where, terms, 0.0), axis=axis)


def _int_xent(z, labels):
  log_p = _log_softmax(z)
  return -np.take_along_axis(log_p, np.asarray(labels)[..., None], axis=-1)[..., 0]


def _softplus(x):
  return np.logaddexp(0.0, _f64(x))


def _sigmoid(x):
  return np.exp(-_softplus(-_f64(x)))


def _sigmoid_bce(z, y):
  return _mul0(y, _softplus(-_f64(z))) + _mul0(1 - _f64(y), _softplus(z))


def _focal(z, y, gamma, alpha=None):
  """α_t (1 - p_t)^γ · BCE, 1 - p_t = y σ(-z) + (1-y) σ(z) (optax's and keras's p_t)."""
  y = _f64(y)
  one_minus_pt = y * _sigmoid(-_f64(z)) + (1 - y) * _sigmoid(z)
  out = one_minus_pt**gamma * _sigmoid_bce(z, y)
  return out if alpha is None else (alpha * y + (1 - alpha) * (1 - y)) * out


def _poly(z, t, eps, where=None):
  """optax's poly-1: CE + ε (1 - Σ t softmax(z))."""
  p = np.exp(_log_softmax(z, where=where))
  pt = np.sum(_f64(t) * p if where is None else np.where(where, _f64(t) * p, 0.0), axis=-1)
  return _softmax_xent(z, t, where=where) + eps * (1 - pt)


def _bce(p, q):
  return -(_xlogy(p, q) + _xlogy(1 - _f64(p), 1 - _f64(q)))


def _kl(p, q, axis=-1, where=None):
  terms = _xlogy(p, p) - _xlogy(p, q)
  return np.sum(terms if where is None else np.where(where, terms, 0.0), axis=axis)


def _generalized_kl(p, q, where=None):
  terms = _xlogy(p, p) - _xlogy(p, q) - _f64(p) + _f64(q)
  return np.sum(terms if where is None else np.where(where, terms, 0.0), axis=-1)


def _entropy(p, axis=-1):
  return -np.sum(_xlogy(p, p), axis=axis)


def _logit(p):
  """log(p / (1 - p)) in float64: probabilities as the logits our focal loss takes."""
  return _a(_log(p) - _log(1 - _f64(p)))


def _one_hot(labels, num_classes):
  return _a(np.asarray(labels)[..., None] == np.arange(num_classes))


# ----------------------------------------------------------------------------------------------
# Cases.


def _identity(loss):
  return loss


def _first(loss):
  return loss[0]


def _mean(loss):
  return np.mean(loss)


def _weighted_mean(weights):
  """keras's sum_over_batch_size with sample weights (or one scalar): Σ w_i ℓ_i / N."""
  return lambda loss: np.sum(np.asarray(weights, np.float64) * loss) / loss.size


class Case(NamedTuple):
  """One ported assertion: ``reduce(xj.<fn>(*args, **kwargs))`` ≈ ``expected``.

  ``args`` and the array-valued ``kwargs`` (``where``, ``weights``, ``epsilon``, ...) are
  batch-leading; the other kwargs are static options. Cases without ``axis`` are batched.
  """

  anchor: str
  source: str
  fn: str
  args: tuple
  kwargs: dict
  expected: Any
  tol: dict
  reduce: Callable = _identity


def _optax_mask_inputs(size):
  """optax's test_mask draws (unseeded there): logits, a distribution, a mask of classes."""
  rng = np.random.default_rng(size)
  preds, targets = _a(rng.normal(size=size)), _a(rng.dirichlet(np.ones(size)))
  mask = rng.integers(2, size=size).astype(bool)
  mask[0] = True
  return preds, targets, mask


def _optax_axis_inputs(axis):
  """optax's test_axis draws: [4, 5, 6] logits, distributions along the LAST axis, labels."""
  rng = np.random.default_rng(10 + axis)
  shape = (4, 5, 6)
  preds = _a(rng.normal(size=shape))
  targets = _a(rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]))
  labels = _y(rng.integers(shape[axis], size=shape[:axis] + shape[axis + 1 :]))
  return preds, targets, labels


def _optax_cases():
  # SoftmaxCrossEntropyTest / SafeSoftmaxCrossEntropyTest / ...WithIntegerLabelsTest.setUp
  ys, ts = _a([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]]), _a([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  exp = [9.00013, 3.0696733]
  atol = {"atol": 1e-4}
  src = OPTAX + "SoftmaxCrossEntropyTest."
  yield Case(
    "optax",
    src + "test_scalar",
    "softmax_cross_entropy",
    (ys[:1], ts[:1]),
    {},
    exp[0],
    atol,
    _first,
  )
  yield Case("optax", src + "test_batched", "softmax_cross_entropy", (ys, ts), {}, exp, atol)
  where = np.array([[1, 0, 0], [0, 0, 0]], bool)  # the fully masked example costs 0
  for fn, target in (
    ("softmax_cross_entropy", ts),
    ("softmax_cross_entropy_with_integer_labels", _y([1, 0])),
  ):
    name = (
      "SoftmaxCrossEntropyTest."
      if target.ndim == 2
      else "SoftmaxCrossEntropyWithIntegerLabelsTest."
    )
    yield Case(
      "optax",
      OPTAX + name + "test_per_logit_mask",
      fn,
      (ys, target),
      {"where": where},
      0.0,
      {"atol": 0.0},
      lambda loss: loss[1],
    )
  for size in (5, 10):  # test_mask: where= equals dropping the masked classes
    preds, targets, mask = _optax_mask_inputs(size)
    # (PolyLossTest.test_mask is in DIFFERENCES: the kept targets do not sum to 1.)
    yield Case(
      "optax",
      f"{OPTAX}SoftmaxCrossEntropyTest.test_mask[size={size}]",
      "softmax_cross_entropy",
      (preds[None], targets[None]),
      {"where": mask[None]},
      _softmax_xent(preds[mask], targets[mask]),
      TIGHT,
      _first,
    )
    # optax's (log_predictions, targets) is our (p = targets, q = exp(log_predictions)); with
    # log targets, kl_divergence_with_log_targets(log q, log p) is KL(p ‖ q).
    q = _a(np.exp(preds))
    for cls, fn, expected in (
      (
        "GeneralizedKLDivergenceTest",
        "generalized_kl_divergence",
        _generalized_kl(targets[mask], q[mask]),
      ),
      ("KLDivergenceTest", "kl_divergence", _kl(targets[mask], q[mask])),
      ("KLDivergenceWithLogTargetsTest", "kl_divergence", _kl(targets[mask], q[mask])),
    ):
      yield Case(
        "optax",
        f"{OPTAX}{cls}.test_mask[size={size}]",
        fn,
        (targets[None], q[None]),
        {"where": mask[None]},
        expected,
        TIGHT,
        _first,
      )
  for axis in (0, 1, 2):  # test_axis: the class axis moved equals the class axis last
    preds, targets, labels = _optax_axis_inputs(axis)
    q = _a(np.exp(preds))
    z_last, t_last, q_last = (np.moveaxis(x, axis, -1) for x in (preds, targets, q))
    rows = [
      (
        "SoftmaxCrossEntropyTest",
        "softmax_cross_entropy",
        (preds, targets),
        _softmax_xent(z_last, t_last),
      ),
      (
        "GeneralizedKLDivergenceTest",
        "generalized_kl_divergence",
        (targets, q),
        _generalized_kl(t_last, q_last),
      ),
      ("KLDivergenceTest", "kl_divergence", (targets, q), _kl(t_last, q_last)),
      ("KLDivergenceWithLogTargetsTest", "kl_divergence", (targets, q), _kl(t_last, q_last)),
    ]
    if axis == 2:  # targets sum to 1 along the class axis (axes 0, 1: in DIFFERENCES)
      poly = _poly(z_last, t_last, 2.0)
      rows.append(("PolyLossTest", "poly_loss_cross_entropy", (preds, targets), poly))
    rows.append(
      (
        "SoftmaxCrossEntropyWithIntegerLabelsTest",
        "softmax_cross_entropy_with_integer_labels",
        (preds, labels),
        _int_xent(z_last, labels),
      )
    )
    for cls, fn, args, expected in rows:
      yield Case(
        "optax", f"{OPTAX}{cls}.test_axis[axis={axis}]", fn, args, {"axis": axis}, expected, TIGHT
      )

  src = OPTAX + "SafeSoftmaxCrossEntropyTest."
  safe_ys = _a(
    [
      [10.0, 1.0, -2.0],
      [1.0, 4.0, 0.2],
      [-np.inf, 0.0, 0.0],
      [-np.inf, 0.0, 0.0],
      [-np.inf, 0.0, -np.inf],
    ]
  )
  safe_ts = _a(
    [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.4, 0.3, 0.3], [0.0, 1.0, 0.0]]
  )
  safe_exp = [9.00013, 3.0696733, 0.693147, np.inf, 0.0]
  yield Case(
    "optax",
    src + "test_scalar",
    "softmax_cross_entropy",
    (safe_ys[:1], safe_ts[:1]),
    {},
    safe_exp[0],
    atol,
    _first,
  )
  yield Case(
    "optax", src + "test_batched", "softmax_cross_entropy", (safe_ys, safe_ts), {}, safe_exp, atol
  )

  src = OPTAX + "SoftmaxCrossEntropyWithIntegerLabelsTest."
  labels = _y([1, 0])
  fn = "softmax_cross_entropy_with_integer_labels"
  # optax's expected value: softmax_cross_entropy with one-hot labels, here its formula.
  yield Case(
    "optax",
    src + "test_consistent_with_softmax_cross_entropy_scalar",
    fn,
    (ys[:1], labels[:1]),
    {},
    _int_xent(ys[:1], labels[:1])[0],
    TIGHT,
    _first,
  )
  yield Case(
    "optax",
    src + "test_consistent_with_softmax_cross_entropy_batched",
    fn,
    (ys, labels),
    {},
    _int_xent(ys, labels),
    TIGHT,
  )
  for axis in ((1, 3), (3, 2), (2, 3), (-3, -1), (-1, -2), (-2, -1), (0, 1, 3), (-4, -3, -1)):
    shape, ndim = (2, 3, 4, 5), 4
    logits_axis = tuple(a % ndim for a in axis)
    labels_axis = tuple(i for i in range(ndim) if i not in logits_axis)
    num_classes = math.prod(shape[i] for i in logits_axis)
    labels_shape = tuple(shape[i] for i in labels_axis)
    rng = np.random.default_rng(42)
    flat = _a(rng.uniform(size=labels_shape + (num_classes,)))
    labels = _y(rng.integers(0, num_classes - 1, size=labels_shape))
    perm = labels_axis + logits_axis
    logits = flat.reshape(labels_shape + tuple(shape[i] for i in logits_axis)).transpose(
      np.argsort(perm)
    )
    yield Case(
      "optax",
      f"{src}test_axes[axis={axis}]",
      fn,
      (logits, labels),
      {"axis": axis},
      _int_xent(flat, labels),
      TIGHT,
    )

  # The docstring examples of optax/losses/_classification.py, printed to 4 decimals.
  z, printed = _a([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]]), {"atol": 5e-5}
  yield Case(
    "optax",
    OPTAX_DOCS + "softmax_cross_entropy",
    "softmax_cross_entropy",
    (z, _one_hot([0, 1], 3)),
    {},
    [0.2761, 2.9518],
    printed,
  )
  yield Case(
    "optax",
    OPTAX_DOCS + "softmax_cross_entropy_with_integer_labels",
    fn,
    (z, _y([0, 1])),
    {},
    [0.2761, 2.9518],
    printed,
  )
  logits = _a(np.arange(24).reshape(1, 2, 3, 4))
  labels = _y(np.ravel_multi_index((np.array([[1, 2]]), np.array([[1, 3]])), (3, 4)))
  yield Case(
    "optax",
    OPTAX_DOCS + "softmax_cross_entropy_with_integer_labels(axis=(2, 3))",
    fn,
    (logits, labels),
    {"axis": (2, 3)},
    [[6.4587, 0.4587]],
    printed,
  )

  # SigmoidCrossEntropyTest.test_sigmoid_cross_entropy: the mean over two examples.
  rows = [
    ([-1e09, -1e-09], [1.0, 0.0], 5e08),
    ([-1e09, -1e-09], [0.0, 1.0], 0.3465736),
    ([1e09, 1e-09], [1.0, 0.0], 0.3465736),
    ([1e09, 1e-09], [0.0, 1.0], 5e08),
    ([-1e09, 1e-09], [1.0, 0.0], 5e08),
    ([-1e09, 1e-09], [0.0, 1.0], 0.3465736),
    ([1e09, -1e-09], [1.0, 0.0], 0.3465736),
    ([1e09, -1e-09], [0.0, 1.0], 5e08),
    ([0.0, 0.0], [1.0, 0.0], 0.6931472),
    ([0.0, 0.0], [0.0, 1.0], 0.6931472),
  ]
  for i, (preds, labels, expected) in enumerate(rows):
    yield Case(
      "optax",
      f"{OPTAX}SigmoidCrossEntropyTest.test_sigmoid_cross_entropy[{i}]",
      "sigmoid_binary_cross_entropy",
      (_a(preds), _a(labels)),
      {},
      expected,
      {"rtol": 1e-6, "atol": 1e-6},
      _mean,
    )

  # PolyLossTest: expected values from the TF implementation of the paper (atol 1e-4).
  logits, labels = _a([0.14, 1.456, 2.356, -0.124, -2.47]), _a([0.1, 0.15, 0.2, 0.25, 0.3])
  scalar = {
    2: 4.5317,
    1: 3.7153,
    -1: 2.0827,
    0: 2.8990,
    -0.5: 2.4908,
    1.15: 3.8378,
    1.214: 3.8900,
    5.45: 7.3480,
  }
  for eps, expected in scalar.items():
    yield Case(
      "optax",
      f"{OPTAX}PolyLossTest.test_scalar[eps={eps}]",
      "poly_loss_cross_entropy",
      (logits[None], labels[None]),
      {"epsilon": _a([eps])},
      expected,
      atol,
      _first,
    )
  logits, labels = _a([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]]), _a([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]])
  batched = {
    2: [0.4823, 1.2567],
    1: [0.3261, 1.0407],
    0: [0.1698, 0.8247],
    -0.5: [0.0917, 0.7168],
    1.15: [0.3495, 1.0731],
    1.214: [0.3595, 1.0870],
    5.45: [1.0211, 2.0018],
  }
  for eps, expected in batched.items():
    yield Case(
      "optax",
      f"{OPTAX}PolyLossTest.test_batched[eps={eps}]",
      "poly_loss_cross_entropy",
      (logits, labels),
      {"epsilon": _a([eps, eps])},
      expected,
      atol,
    )
  eps0 = [
    (
      [[4.0, 2.0, 1.0], [0.0, 5.0, 1.0], [0.134, 1.234, 3.235]],
      [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2], [0.34, 0.33, 0.33]],
    ),
    ([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]]),
    (
      [[4.0, 2.0, 1.0, 0.134, 1.3515], [0.0, 5.0, 1.0, 0.5215, 5.616]],
      [[0.5, 0.0, 0.0, 0.0, 0.5], [0.0, 0.12, 0.2, 0.56, 0.12]],
    ),
    ([[1.89, 2.39]], [[0.34, 0.66]]),
    ([[0.314]], [[1.0]]),
  ]
  for i, (logits, labels) in enumerate(eps0):  # ε = 0: the softmax cross-entropy
    logits, labels = _a(logits), _a(labels)
    yield Case(
      "optax",
      f"{OPTAX}PolyLossTest.test_equals_to_cross_entropy_when_eps0[{i}]",
      "poly_loss_cross_entropy",
      (logits, labels),
      {"epsilon": _a(np.zeros(len(logits)))},
      _softmax_xent(logits, labels),
      TIGHT,
    )

  # Generalized KL, KL, KL with log targets: optax's (log_predictions, targets) is our (p, q).
  log_ps = _a(
    [
      [-2.9957, -3.5066, -3.9120, -1.2040, -0.6931, -2.3026],
      [-1.6094, -1.6094, -1.6094, -2.3026, -1.8971, -1.8971],
    ]
  )
  qs = _a([[0.2, 0.2, 0.2, 0.1, 0.15, 0.15], [0.05, 0.03, 0.02, 0.3, 0.5, 0.0]])
  log_qs = _a(
    [
      [-1.6094, -1.6094, -1.6094, -2.3026, -1.8971, -1.8971],
      [-2.9957, -3.5066, -3.9120, -1.2040, -0.6931, -2.3026],
    ]
  )
  for cls, fn, p, exp in (
    ("GeneralizedKLDivergenceTest", "generalized_kl_divergence", qs, [0.88757247, 0.859308]),
    ("KLDivergenceTest", "kl_divergence", qs, [0.8875577, 0.7592807]),
    (
      "KLDivergenceWithLogTargetsTest",
      "kl_divergence",
      _a(np.exp(log_qs)),
      [0.8875625, 0.7187435584901326],
    ),
  ):
    q = _a(np.exp(log_ps))
    yield Case("optax", f"{OPTAX}{cls}.test_scalar", fn, (p[:1], q[:1]), {}, exp[0], atol, _first)
    yield Case("optax", f"{OPTAX}{cls}.test_batched", fn, (p, q), {}, exp, atol)

  # SigmoidFocalLossTest: each assertion's expected side from the documented formula.
  src = OPTAX + "SigmoidFocalLossTest."
  ys, ts = _a([[2.0, 0.1, -2.0], [0.3, -0.1, 1.2]]), _a([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
  z, y = _a([[-1.0, 0.0, 1.0], [2.0, -2.0, 0.5]]), _a([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
  large, small = _logit(_a([0.9, 0.98, 0.3, 0.99])), _logit(_a([0.1, 0.02, 0.09, 0.15]))
  ones = _a([1.0] * 4)
  # (name, inputs, γ, α): γ = 0 is the cross-entropy, α = 1 keeps its positive part.
  for name, (logits, labels), gamma, alpha in (
    ("test_focal_equals_ce", (ys, ts), 0.0, None),
    ("test_focal_gamma_zero_matches_binary_cross_entropy", (z, y), 0.0, None),
    ("test_scale", (ys, ts), 2.0, None),
    ("test_large_logit_fl_less_than_ce", (large, ones), 2.0, 0.5),
    ("test_small_logit_fl_less_than_ce", (small, ones), 2.0, None),
    ("test_alpha_one", (ys, ts), 0.0, 1.0),
    ("test_ignore_positive", (ys, ts), 2.0, 0.0),
    ("test_ignore_negative", (ys, ts), 2.0, 1.0),
  ):
    kwargs = {"gamma": gamma} if alpha is None else {"gamma": gamma, "alpha": alpha}
    expected = _focal(logits, labels, gamma, alpha)
    yield Case("optax", src + name, "sigmoid_focal_loss", (logits, labels), kwargs, expected, TIGHT)


def _scipy_cases():
  # The arrays of TestEntropy; scipy reduces over axis 0 and normalises pk and qk. Where
  # the inputs are distributions along the axis, normalising changes nothing.
  pk2, qk2 = _a([[0.1, 0.2], [0.6, 0.3], [0.3, 0.5]]), _a([[0.2, 0.1], [0.3, 0.6], [0.5, 0.3]])
  pk, qk = _a([0.5, 0.2, 0.3]), _a([0.1, 0.25, 0.65])
  yield Case(
    "scipy",
    SCIPY + "test_entropy_positive[self]",
    "kl_divergence",
    (pk[None], pk[None]),
    {},
    0.0,
    {"atol": 0.0},
    _first,
  )
  yield Case(
    "scipy",
    SCIPY + "test_entropy_positive[double]",
    "kl_divergence",
    (pk[None], qk[None]),
    {},
    _kl(pk, qk),
    TIGHT,
    _first,
  )
  # S / S2 = log 2 for bases e and 2 (an identity that holds without normalising).
  ones, twos = _a(np.ones(16)), _a(np.where(np.arange(16) < 8, 2.0, 1.0))
  yield Case(
    "scipy",
    SCIPY + "test_entropy_base[S/S2]",
    "kl_divergence",
    (ones[None], twos[None]),
    {"base": 2.0},
    _kl(ones, twos) / math.log(2),
    TIGHT,
    _first,
  )
  yield Case(
    "scipy",
    SCIPY + "test_entropy_2d",
    "kl_divergence",
    (pk2, qk2),
    {"axis": 0},
    [0.1933259, 0.18609809],
    {"rtol": 1e-6},
  )
  qk0 = _a([[0.0, 0.1], [0.3, 0.6], [0.5, 0.3]])
  yield Case(
    "scipy",
    SCIPY + "test_entropy_2d_zero[q=0<p]",
    "kl_divergence",
    (pk2, qk0),
    {"axis": 0},
    [np.inf, 0.18609809],
    {"rtol": 1e-6},
  )
  yield Case(
    "scipy",
    SCIPY + "test_base_entropy_with_axis_0_is_equal_to_default",
    "entropy",
    (pk2,),
    {"axis": 0},
    _entropy(pk2, axis=0),
    TIGHT,
  )
  yield Case(
    "scipy",
    SCIPY + "test_entropy_with_axis_0_is_equal_to_default",
    "kl_divergence",
    (pk2, qk2),
    {"axis": 0},
    _kl(pk2, qk2, axis=0),
    TIGHT,
  )
  # entropy(pk.T) == entropy(pk, axis=1): an identity, on inputs used as given.
  yield Case(
    "scipy",
    SCIPY + "test_base_entropy_transposed",
    "entropy",
    (pk2.T.copy(),),
    {"axis": 0},
    _entropy(pk2, axis=1),
    TIGHT,
  )
  yield Case(
    "scipy",
    SCIPY + "test_entropy_transposed",
    "kl_divergence",
    (pk2.T.copy(), qk2.T.copy()),
    {"axis": 0},
    _kl(pk2, qk2, axis=1),
    TIGHT,
  )


def _keras_cases():
  # KLDivergenceTest: keras clips both to [1e-7, 1] (no effect here) and sums over axis -1.
  src = KERAS + "KLDivergenceTest."
  y_pred = _a([[0.4, 0.9, 0.12], [0.36, 0.3, 0.4]])
  y_true = _a([[0.5, 0.8, 0.12], [0.7, 0.43, 0.8]])
  kl = _kl(y_true, y_pred)
  kl_cases = {
    "test_unweighted": (_mean, np.mean(kl)),
    "test_scalar_weighted": (_weighted_mean(2.3), 2.3 * np.mean(kl)),
    "test_sample_weighted": (_weighted_mean([1.2, 3.4]), np.sum(kl * [1.2, 3.4]) / 2),
    "test_zero_weighted": (_weighted_mean(0.0), 0.0),
  }
  for name, (reduce, expected) in kl_cases.items():
    yield Case("keras", src + name, "kl_divergence", (y_true, y_pred), {}, expected, TIGHT, reduce)
  w = np.array([[3, 6, 5], [0, 4, 2]])  # a weight per timestep of [2, 3, 1] inputs
  yield Case(
    "keras",
    src + "test_timestep_weighted",
    "kl_divergence",
    (y_true[..., None], y_pred[..., None]),
    {},
    np.sum(_kl(y_true[..., None], y_pred[..., None]) * w) / 6,
    TIGHT,
    _weighted_mean(w),
  )

  # BinaryCrossentropyTest: the mean over the last axis, then keras's reduction.
  src = KERAS + "BinaryCrossentropyTest."
  eye = _a(np.eye(3))
  yield Case(
    "keras",
    src + "test_all_correct_unweighted[probs]",
    "binary_cross_entropy",
    (eye, eye),
    {},
    0.0,
    DECIMAL_3,
    _mean,
  )
  logits = _a(np.where(np.eye(3) > 0, 10.0, -10.0))
  yield Case(
    "keras",
    src + "test_all_correct_unweighted[logits]",
    "sigmoid_binary_cross_entropy",
    (logits, eye),
    {},
    0.0,
    DECIMAL_3,
    _mean,
  )
  y_pred = _a([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.1, 0.2, 0.7]])
  yield Case(
    "keras",
    src + "test_unweighted[probs]",
    "binary_cross_entropy",
    (eye, y_pred),
    {},
    0.20046903,
    KERAS_ALL_CLOSE,
    _mean,
  )
  y_true, logits = _a([[1, 0, 1], [0, 1, 1]]), _a([[10.0, -10.0, 10.0], [10.0, 10.0, -10.0]])
  row_mean = lambda reduce: lambda loss: reduce(loss.mean(axis=-1))  # noqa: E731
  bce = "sigmoid_binary_cross_entropy"
  yield Case(
    "keras", src + "test_unweighted[logits]", bce, (logits, y_true), {}, 3.3333, DECIMAL_3, _mean
  )
  yield Case(
    "keras",
    src + "test_scalar_weighted[logits]",
    bce,
    (logits, y_true),
    {},
    7.666,
    DECIMAL_3,
    row_mean(_weighted_mean(2.3)),
  )
  yield Case(
    "keras",
    src + "test_sample_weighted[logits]",
    bce,
    (logits, y_true),
    {},
    10.0,
    DECIMAL_3,
    row_mean(_weighted_mean([4, 3])),
  )
  yield Case(
    "keras",
    src + "test_no_reduction",
    bce,
    (logits, y_true),
    {},
    [0.0, 6.666],
    {"atol": 1e-3},
    lambda loss: loss.mean(axis=-1),
  )
  yield Case(
    "keras",
    src + "test_label_smoothing",
    bce,
    (_a([[10.0, -10.0, -10.0]]), _a([[1, 0, 1]])),
    {"label_smoothing": 0.1},
    (10.0 + 5.0 * 0.1) / 3.0,
    DECIMAL_3,
    _mean,
  )

  # CategoricalCrossentropyTest; keras's logits variant is our softmax_cross_entropy.
  # CategoricalCrossentropyTest and SparseCategoricalCrossentropyTest share their cases:
  # probabilities through cross_entropy / cross_entropy_with_integer_labels (labels [N, 1]
  # squeezed, as keras does), logits through the softmax versions.
  labels = _y([0, 1, 2])
  logits = _a([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]])
  for cls, probs_fn, logits_fn, pair in (
    ("CategoricalCrossentropyTest.", "cross_entropy", "softmax_cross_entropy", lambda x: (x, eye)),
    (
      "SparseCategoricalCrossentropyTest.",
      "cross_entropy_with_integer_labels",
      "softmax_cross_entropy_with_integer_labels",
      lambda x: (x, labels),
    ),
  ):
    src = KERAS + cls
    probs_args = (eye, eye) if probs_fn == "cross_entropy" else (labels, eye)
    rows = [
      ("test_all_correct_unweighted[probs]", probs_fn, probs_args, 0.0, DECIMAL_3, _mean),
      (
        "test_all_correct_unweighted[logits]",
        logits_fn,
        pair(_a(np.eye(3) * 10.0)),
        0.0,
        DECIMAL_3,
        _mean,
      ),
      ("test_unweighted[logits]", logits_fn, pair(logits), 0.0573, DECIMAL_3, _mean),
      (
        "test_scalar_weighted[logits]",
        logits_fn,
        pair(logits),
        0.1317,
        DECIMAL_3,
        _weighted_mean(2.3),
      ),
      (
        "test_sample_weighted[logits]",
        logits_fn,
        pair(logits),
        0.31829,
        DECIMAL_3,
        _weighted_mean([1.2, 3.4, 5.6]),
      ),
      (
        "test_no_reduction",
        logits_fn,
        pair(logits),
        [0.001822, 0.000459, 0.169846],
        KERAS_ALL_CLOSE,
        _identity,
      ),
    ]
    for name, fn, args, expected, tol, reduce in rows:
      yield Case("keras", src + name, fn, args, {}, expected, tol, reduce)

  src = KERAS + "CategoricalCrossentropyTest."
  for name in ("test_label_smoothing", "test_label_smoothing_ndarray"):
    yield Case(
      "keras",
      src + name,
      "softmax_cross_entropy",
      (_a([[100.0, -100.0, -100.0]]), _a([[1, 0, 0]])),
      {"label_smoothing": 0.1},
      400.0 * 0.1 / 3.0,
      DECIMAL_3,
      _mean,
    )
  # Probabilities with label smoothing along axis 1: the caller smooths the targets
  # (cross_entropy takes no label_smoothing), as keras does: t (1 - ε) + ε / K.
  y_true = _a([[[1, 0], [0, 1], [0, 0]], [[0, 1], [1, 0], [0, 0]]])
  y_pred = _a([[[0.8, 0.1], [0.1, 0.8], [0.1, 0.1]], [[0.1, 0.8], [0.8, 0.1], [0.1, 0.1]]])
  smoothed = _a(y_true * 0.9 + 0.1 / 3)
  expected = np.mean(-np.sum(_f64(smoothed) * _log(y_pred), axis=1))
  yield Case(
    "keras",
    src + "test_label_smoothing_with_axis",
    "cross_entropy",
    (smoothed, y_pred),
    {"axis": 1},
    expected,
    TIGHT,
    _mean,
  )

  src = KERAS + "SparseCategoricalCrossentropyTest."
  sparse, ice = "softmax_cross_entropy_with_integer_labels", "cross_entropy_with_integer_labels"
  logits = _a([[[0.854, 0.698, 0.598], [0.088, 0.86, 0.018]]])
  for i, y_true in enumerate((_y([[-1, 2]]), _y([[[-1], [2]]])[..., 0])):
    yield Case(
      "keras",
      f"{src}test_ignore_class[{i}]",
      sparse,
      (logits, y_true),
      {"ignore_index": -1},
      [[0.0, 1.480129]],
      KERAS_ALL_CLOSE,
    )
  yield from _keras_segmentation_cases(src, ice)

  # BinaryFocalCrossentropyTest (apply_class_balancing=False): probabilities as logits.
  src, fl = KERAS + "BinaryFocalCrossentropyTest.", "sigmoid_focal_loss"
  yield Case(
    "keras",
    src + "test_all_correct_unweighted[probs]",
    fl,
    (_logit(eye), eye),
    {"gamma": 1.5},
    0.0,
    DECIMAL_3,
    _mean,
  )
  logits = _a(np.where(np.eye(3) > 0, 100.0, -100.0))
  yield Case(
    "keras",
    src + "test_all_correct_unweighted[logits]",
    fl,
    (logits, eye),
    {"gamma": 2.0},
    0.0,
    DECIMAL_3,
    _mean,
  )
  y_true, y_pred = _a([[1, 0], [1, 0]]), _a([[0.9, 0.8], [0.7, 0.2]])
  y_true2, logits = _a([[1, 1, 0], [0, 1, 0]]), _a([[1.5, -2.7, 2.9], [-3.8, 1.2, -4.5]])
  for name, reduce, probs_expected, logits_expected in (
    ("test_unweighted", _mean, 0.268, 0.799),
    ("test_scalar_weighted", _weighted_mean(1.23), 0.3296, None),
    ("test_sample_weighted", _weighted_mean([1.2, 3.4]), 0.34415, 0.95977),
  ):
    per_example = row_mean(reduce)
    yield Case(
      "keras",
      f"{src}{name}[probs]",
      fl,
      (_logit(y_pred), y_true),
      {"gamma": 2.0},
      probs_expected,
      DECIMAL_3,
      per_example,
    )
    if logits_expected is not None:
      yield Case(
        "keras",
        f"{src}{name}[logits]",
        fl,
        (logits, y_true2),
        {"gamma": 3.0},
        logits_expected,
        DECIMAL_3,
        per_example,
      )
  yield Case(
    "keras",
    src + "test_scalar_weighted[logits]",
    fl,
    (logits, y_true2),
    {"gamma": 3.0},
    2.565,
    DECIMAL_3,
    row_mean(_weighted_mean(3.21)),
  )
  yield Case(
    "keras",
    src + "test_no_reduction",
    fl,
    (_logit(y_pred), y_true),
    {"gamma": 2.0},
    [0.515547, 0.020513],
    KERAS_ALL_CLOSE,
    lambda loss: loss.mean(axis=-1),
  )


def _keras_segmentation_cases(src, ice):
  """Per-pixel labels [4, 4] on [4, 4, K] probabilities: the mean over 16 pixels. The
  ``different_axis`` tests run keras's torch-backend branch (its jax backend refuses axis=0;
  ours takes it)."""
  binary = _y([[0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
  multi = _y([[0, 1, 2, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
  for kind, labels, k, noisy, expected in (
    ("binary", binary, 2, {(0, 3): [0.2, 0.8], (3, 3): [0.6, 0.4]}, -np.log(0.2) - np.log(0.4)),
    (
      "multi_class",
      multi,
      3,
      {(0, 3): [0.2, 0.0, 0.8], (1, 0): [0.7, 0.3, 0.0], (3, 2): [0.5, 0.5, 0.0]},
      -np.log(0.2) - np.log(0.3) - np.log(0.5),
    ),
  ):
    exact = _one_hot(labels, k)
    y_pred = exact.copy()
    for pixel, probs in noisy.items():
      y_pred[pixel] = probs
    name = f"{src}test_{kind}_segmentation"
    yield Case("keras", name + "[exact]", ice, (labels, exact), {}, 0.0, KERAS_ALL_CLOSE, _mean)
    yield Case(
      "keras", name + "[noisy]", ice, (labels, y_pred), {}, expected / 16, KERAS_ALL_CLOSE, _mean
    )
    name += "_different_axis"
    yield Case(
      "keras",
      name + "[axis=0, exact]",
      ice,
      (labels, np.moveaxis(exact, 2, 0).copy()),
      {"axis": 0},
      0.0,
      KERAS_ALL_CLOSE,
      _mean,
    )
    moved = np.moveaxis(y_pred, 2, 0)
    yield Case(
      "keras",
      name + "[axis=0, noisy]",
      ice,
      (labels, moved.copy()),
      {"axis": 0},
      expected / 16,
      KERAS_ALL_CLOSE,
      _mean,
    )
    stacked = (np.stack([labels] * 3), np.stack([moved] * 3))
    yield Case(
      "keras",
      name + "[axis=1, noisy]",
      ice,
      stacked,
      {"axis": 1},
      expected / 16,
      KERAS_ALL_CLOSE,
      _mean,
    )


def _torch_cases():
  """torch.nn's documented formulas (CrossEntropyLoss, NLLLoss, BCELoss, BCEWithLogitsLoss,
  KLDivLoss) in numpy float64, on seeded inputs; ``reduction='mean'`` unless named."""
  rng = np.random.default_rng(2024)
  z = _a(rng.normal(size=(6, 5)) * 3)
  y = _y([0, 3, -100, 4, 1, -100])
  kept = y != -100
  y0 = np.where(kept, y, 2)  # the same labels, none ignored
  w = np.array([0.5, 2.0, 1.0, 3.0, 0.25])
  t = _a(np.exp(_log_softmax(rng.normal(size=(6, 5)))))
  nll = _int_xent(z, np.where(kept, y, 0))
  sparse, sce = "softmax_cross_entropy_with_integer_labels", "softmax_cross_entropy"
  src = TORCH + "CrossEntropyLoss"
  # Class indices: l_n = -w_{y_n} log softmax(x_n)_{y_n} 1{y_n != ignore_index}; the mean
  # divides by Σ_n w_{y_n} 1{y_n != ignore_index}.
  yield Case("torch", src + "()", sparse, (z, y0), {}, np.mean(_int_xent(z, y0)), TIGHT, _mean)
  w_y0 = _a(w[y0])
  yield Case(
    "torch",
    src + "(weight=w)",
    sparse,
    (z, y0),
    {"weights": w_y0},
    np.sum(w[y0] * _int_xent(z, y0)) / np.sum(w[y0]),
    TIGHT,
    lambda loss: np.sum(loss) / np.sum(w_y0),
  )
  mean_kept = lambda loss: np.sum(loss) / np.sum(kept)  # noqa: E731
  yield Case(
    "torch",
    src + "(ignore_index=-100)",
    sparse,
    (z, y),
    {"ignore_index": -100},
    np.mean(nll[kept]),
    TIGHT,
    mean_kept,
  )
  w_y = _a(np.where(kept, w[np.where(kept, y, 0)], 0.0))
  expected = np.sum(w_y * nll) / np.sum(w_y)
  yield Case(
    "torch",
    src + "(weight=w, ignore_index=-100)",
    sparse,
    (z, y),
    {"ignore_index": -100, "weights": w_y},
    expected,
    TIGHT,
    lambda loss: np.sum(loss) / np.sum(w_y),
  )
  yield Case(
    "torch",
    src + "(ignore_index=-100, reduction='sum')",
    sparse,
    (z, y),
    {"ignore_index": -100},
    np.sum(nll[kept]),
    TIGHT,
    np.sum,
  )
  yield Case(
    "torch",
    src + "(ignore_index=-100, reduction='none')",
    sparse,
    (z, y),
    {"ignore_index": -100},
    np.where(kept, nll, 0.0),
    TIGHT,
  )
  # label_smoothing=ε: the target becomes (1 - ε) one_hot(y) + ε / C.
  smoothed = 0.8 * _f64(_one_hot(y0, 5)) + 0.2 / 5
  yield Case(
    "torch",
    src + "(label_smoothing=0.2)",
    sparse,
    (z, y0),
    {"label_smoothing": 0.2},
    np.mean(_softmax_xent(z, smoothed)),
    TIGHT,
    _mean,
  )
  smoothed_kept = _softmax_xent(z, 0.8 * _f64(_one_hot(np.where(kept, y, 0), 5)) + 0.04)
  yield Case(
    "torch",
    src + "(label_smoothing=0.2, ignore_index=-100)",
    sparse,
    (z, y),
    {"label_smoothing": 0.2, "ignore_index": -100},
    np.mean(smoothed_kept[kept]),
    TIGHT,
    mean_kept,
  )
  # Probability targets: l_n = -Σ_c w_c y_{n,c} log softmax(x_n)_c; the mean divides by N.
  yield Case(
    "torch",
    src + "(probability targets)",
    sce,
    (z, t),
    {},
    np.mean(_softmax_xent(z, t)),
    TIGHT,
    _mean,
  )
  yield Case(
    "torch",
    src + "(weight=w, probability targets)",
    sce,
    (z, _a(t * w)),
    {},
    np.mean(_softmax_xent(z, _f64(t) * w)),
    TIGHT,
    _mean,
  )
  yield Case(
    "torch",
    src + "(label_smoothing=0.2, probability targets)",
    sce,
    (z, t),
    {"label_smoothing": 0.2},
    np.mean(_softmax_xent(z, 0.8 * _f64(t) + 0.04)),
    TIGHT,
    _mean,
  )
  # NLLLoss on log-probabilities: l_n = -w_{y_n} x_{n, y_n}, the same weighted mean.
  src = TORCH + "NLLLoss"
  yield Case(
    "torch",
    src + "(weight=w, ignore_index=-100) of log_softmax(x)",
    sparse,
    (z, y),
    {"ignore_index": -100, "weights": w_y},
    expected,
    TIGHT,
    lambda loss: np.sum(loss) / np.sum(w_y),
  )
  q = _a(np.exp(_log_softmax(z)))
  nll_q = -_log(np.take_along_axis(_f64(q), np.where(kept, y, 0)[:, None], axis=1)[:, 0])
  yield Case(
    "torch",
    src + "(weight=w, ignore_index=-100) of log(q)",
    "cross_entropy_with_integer_labels",
    (y, q),
    {"ignore_index": -100, "weights": w_y},
    np.sum(w_y * nll_q) / np.sum(w_y),
    TIGHT,
    lambda loss: np.sum(loss) / np.sum(w_y),
  )
  # BCELoss(weight): l_n = -w_n [y_n log x_n + (1 - y_n) log(1 - x_n)]; the mean over all.
  x, target = _a(rng.uniform(0.01, 0.99, size=(4, 3))), _a(rng.uniform(size=(4, 3)))
  w_n = rng.uniform(0.5, 2.0, size=(4, 3))
  src = TORCH + "BCELoss"
  yield Case(
    "torch",
    src + "()",
    "binary_cross_entropy",
    (target, x),
    {},
    np.mean(_bce(target, x)),
    TIGHT,
    _mean,
  )
  yield Case(
    "torch",
    src + "(weight=w)",
    "binary_cross_entropy",
    (target, x),
    {},
    np.mean(w_n * _bce(target, x)),
    TIGHT,
    lambda loss: np.mean(w_n * loss),
  )
  # BCEWithLogitsLoss(pos_weight=p_c): -[p_c y log σ(x) + (1 - y) log(1 - σ(x))], p_c per class.
  logits = _a(rng.normal(size=(4, 3)) * 4)
  labels = _a(rng.integers(0, 2, size=(4, 3)))
  pos_weight = _a(np.broadcast_to([0.5, 3.0, 1.0], (4, 3)))
  expected = np.mean(
    _mul0(_f64(pos_weight) * labels, _softplus(-_f64(logits)))
    + _mul0(1 - _f64(labels), _softplus(logits))
  )
  src = TORCH + "BCEWithLogitsLoss"
  yield Case(
    "torch",
    src + "(pos_weight=p)",
    "sigmoid_binary_cross_entropy",
    (logits, labels),
    {"pos_weight": pos_weight},
    expected,
    TIGHT,
    _mean,
  )
  yield Case(
    "torch",
    src + "(weight=w)",
    "sigmoid_binary_cross_entropy",
    (logits, labels),
    {},
    np.mean(w_n * _sigmoid_bce(logits, labels)),
    TIGHT,
    lambda loss: np.mean(w_n * loss),
  )
  # KLDivLoss(reduction='batchmean'): Σ target (log target - input) / N; input = log q.
  p = _a(np.exp(_log_softmax(rng.normal(size=(4, 5)) * 2)))
  p[0, 1] = 0.0  # 0·log 0 = 0 (torch uses xlogy)
  p[0] /= p[0].sum()
  log_q = _log_softmax(rng.normal(size=(4, 5)))
  src = TORCH + "KLDivLoss"
  batchmean = lambda loss: np.sum(loss) / len(loss)  # noqa: E731
  expected = np.sum(_xlogy(p, p) - _mul0(p, log_q)) / 4
  yield Case(
    "torch",
    src + "(reduction='batchmean')",
    "kl_divergence",
    (p, _a(np.exp(log_q))),
    {},
    expected,
    TIGHT,
    batchmean,
  )
  yield Case(
    "torch",
    src + "(reduction='batchmean', log_target=True)",
    "kl_divergence",
    (_a(np.exp(_log(p))), _a(np.exp(log_q))),
    {},
    expected,
    TIGHT,
    batchmean,
  )
  yield Case(
    "torch",
    src + "(reduction='sum')",
    "kl_divergence",
    (p, _a(np.exp(log_q))),
    {},
    4 * expected,
    TIGHT,
    np.sum,
  )


CASES = [*_optax_cases(), *_scipy_cases(), *_keras_cases(), *_torch_cases()]


# ----------------------------------------------------------------------------------------------
# Where we differ on purpose: our exact value, and the caller-side mapping that gives the
# anchor's number.


class Difference(NamedTuple):
  """An anchor case we answer differently, and why.

  ``ours`` is the call on the anchor's inputs, its ``expected`` our exact value (a float64
  formula); ``mapped`` applies the anchor's convention on the caller's side (normalise,
  clip, clamp) and must reproduce the anchor's number (its ``expected``, with the anchor's
  tolerance), which ``ours`` must not.
  """

  reason: str
  ours: Case
  mapped: Case


def _normalised(x, axis=-1):
  return _a(_f64(x) / np.sum(_f64(x), axis=axis, keepdims=True))


def _differences():
  normalises = "scipy normalises pk and qk to sum 1 first; we take them as given (checked rejects non-distributions)"
  pk2, qk2 = _a([[0.1, 0.2], [0.6, 0.3], [0.3, 0.5]]), _a([[0.2, 0.1], [0.3, 0.6], [0.5, 0.3]])
  tol = {"rtol": 1e-6}
  ones = _a(np.ones(16))
  case = functools.partial(Case, "scipy")
  yield Difference(
    normalises,
    case(
      SCIPY + "test_entropy_base[S=4]",
      "entropy",
      (ones[None],),
      {"base": 2.0},
      _entropy(ones) / math.log(2),
      TIGHT,
      _first,
    ),
    case(
      SCIPY + "test_entropy_base[S=4]",
      "entropy",
      (_normalised(ones)[None],),
      {"base": 2.0},
      4.0,
      {"atol": 1e-5},
      _first,
    ),
  )
  x = _a([0.0, 1.0, 2.0])
  yield Difference(
    normalises,
    case(SCIPY + "test_entropy_zero", "entropy", (x[None],), {}, _entropy(x), TIGHT, _first),
    case(
      SCIPY + "test_entropy_zero",
      "entropy",
      (_normalised(x)[None],),
      {},
      0.63651416829481278,
      tol,
      _first,
    ),
  )
  pk0, qk0 = _a([[0.0, 0.2], [0.6, 0.3], [0.3, 0.5]]), _a([[0.0, 0.1], [0.3, 0.6], [0.5, 0.3]])
  yield Difference(
    normalises,
    case(
      SCIPY + "test_entropy_2d_zero[p sums to 0.9]",
      "kl_divergence",
      (pk0, qk0),
      {"axis": 0},
      _kl(pk0, qk0, axis=0),
      TIGHT,
    ),
    case(
      SCIPY + "test_entropy_2d_zero[p sums to 0.9]",
      "kl_divergence",
      (_normalised(pk0, 0), _normalised(qk0, 0)),
      {"axis": 0},
      [0.17403988, 0.18609809],
      tol,
    ),
  )
  yield Difference(
    normalises,
    case(
      SCIPY + "test_entropy_base_2d_nondefault_axis", "entropy", (pk2,), {}, _entropy(pk2), TIGHT
    ),
    case(
      SCIPY + "test_entropy_base_2d_nondefault_axis",
      "entropy",
      (_normalised(pk2),),
      {},
      [0.63651417, 0.63651417, 0.66156324],
      tol,
    ),
  )
  yield Difference(
    normalises,
    case(
      SCIPY + "test_entropy_2d_nondefault_axis",
      "kl_divergence",
      (pk2, qk2),
      {},
      _kl(pk2, qk2),
      TIGHT,
    ),
    case(
      SCIPY + "test_entropy_2d_nondefault_axis",
      "kl_divergence",
      (_normalised(pk2), _normalised(qk2)),
      {},
      [0.23104906, 0.23104906, 0.12770641],
      tol,
    ),
  )
  rng = np.random.default_rng(74187315492831452)
  x, y = _a(rng.random(3)), _a(rng.random((2, 1)))
  xb, yb = (_a(a) for a in np.broadcast_arrays(x, y))  # we never broadcast p against q
  yield Difference(
    normalises + "; it also broadcasts p (3,) against q (2, 1), which we require done explicitly",
    case(SCIPY + "test_entropy_broadcasting", "kl_divergence", (xb, yb), {}, _kl(xb, yb), TIGHT),
    case(
      SCIPY + "test_entropy_broadcasting",
      "kl_divergence",
      (_normalised(xb), _normalised(yb)),
      {},
      _kl(_normalised(xb), _normalised(yb)),
      TIGHT,
    ),
  )

  # keras: binary cross-entropy on probabilities clips q to [1e-7, 1 - 1e-7] (float32).
  clips = "keras clips q to [1e-7, 1 - 1e-7], so q = 1 under p = 0 costs 15.9 instead of +inf"
  eps32 = np.float32(1e-7)
  p, q = _a([[1, 0], [1, 0]]), _a([[1, 1], [1, 0]])
  q_clipped = _a(np.clip(q.astype(np.float32), eps32, np.float32(1) - eps32))
  src, case = KERAS + "BinaryCrossentropyTest.", functools.partial(Case, "keras")
  for name, reduce, anchor in (
    ("test_unweighted[probs, q = 1]", _mean, 3.98559),
    ("test_scalar_weighted[probs, q = 1]", lambda loss: 2.3 * np.mean(loss), 9.1668),
    (
      "test_sample_weighted[probs, q = 1]",
      lambda loss: np.sum(loss.mean(-1) * [1.2, 3.4]) / 2,
      4.7827,
    ),
  ):
    yield Difference(
      clips,
      case(src + name, "binary_cross_entropy", (p, q), {}, np.inf, {"rtol": 0.0}, reduce),
      case(src + name, "binary_cross_entropy", (p, q_clipped), {}, anchor, DECIMAL_3, reduce),
    )
  # keras: categorical cross-entropies on probabilities divide q by its sum first.
  renormalises = (
    "keras divides q by its sum first (the row [0.5, 0.89, 0.6] sums to 1.99); we take q as given"
  )
  eye = _a(np.eye(3))
  q = _a([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]])
  labels = _y([0, 1, 2])
  raw = -_log(np.diag(_f64(q)))
  for cls, fn, args, mapped_args in (
    ("CategoricalCrossentropyTest.", "cross_entropy", (eye, q), (eye, _normalised(q))),
    (
      "SparseCategoricalCrossentropyTest.",
      "cross_entropy_with_integer_labels",
      (labels, q),
      (labels, _normalised(q)),
    ),
  ):
    for name, reduce, anchor in (
      ("test_unweighted[probs]", _mean, 0.3239),
      ("test_scalar_weighted[probs]", _weighted_mean(2.3), 0.7449),
      ("test_sample_weighted[probs]", _weighted_mean([1.2, 3.4, 5.6]), 1.0696),
    ):
      yield Difference(
        renormalises,
        case(KERAS + cls + name, fn, args, {}, reduce(raw), TIGHT, reduce),
        case(KERAS + cls + name, fn, mapped_args, {}, anchor, DECIMAL_3, reduce),
      )

  # torch: BCELoss clamps its log outputs at -100 (documented), so a confident miss costs 100.
  p, q = _a([[1.0, 0.0, 1.0]]), _a([[0.0, 1.0, 0.5]])
  src = TORCH + "BCELoss (log clamped to >= -100)"
  clamp = lambda loss: np.mean(np.minimum(loss, 100.0))  # noqa: E731
  yield Difference(
    "torch clamps log at -100 (an 'infinite loss' made finite); the exact loss is +inf",
    Case("torch", src, "binary_cross_entropy", (p, q), {}, np.inf, {"rtol": 0.0}, _mean),
    Case("torch", src, "binary_cross_entropy", (p, q), {}, (200 + math.log(2)) / 3, TIGHT, clamp),
  )


def _poly_differences():
  """optax's 1 - p_t is 1 - Σ_j t_j q_j, ours Σ_j t_j (1 - q_j): equal when Σ t = 1."""
  reason = (
    "optax's poly-1 term is ε(1 - Σ_j t_j q_j), ours ε Σ_j t_j (1 - q_j) (linear in the "
    "targets, each 1 - q_j tail-exact): equal when the targets sum to 1 over the classes, "
    "which these do not (a masked part of a distribution; distributions along another axis)"
  )
  cases = []
  for size in (5, 10):
    preds, targets, mask = _optax_mask_inputs(size)
    source = f"{OPTAX}PolyLossTest.test_mask[size={size}]"
    args = (preds[None], targets[None])
    cases.append((source, args, {"where": mask[None]}, preds[mask], targets[mask], _first))
  for axis in (0, 1):
    preds, targets, _ = _optax_axis_inputs(axis)
    z_last, t_last = np.moveaxis(preds, axis, -1), np.moveaxis(targets, axis, -1)
    source = f"{OPTAX}PolyLossTest.test_axis[axis={axis}]"
    cases.append((source, (preds, targets), {"axis": axis}, z_last, t_last, _identity))
  for source, args, kwargs, z, t, pick in cases:
    ce, q = _softmax_xent(z, t), np.exp(_log_softmax(z))
    t_sum = np.sum(_f64(t), axis=-1)
    ours = ce + 2.0 * np.sum(_f64(t) * (1 - q), axis=-1)
    yield Difference(
      reason,
      Case("optax", source, "poly_loss_cross_entropy", args, kwargs, ours, TIGHT, pick),
      # The caller adds ε (1 - Σ t) to get optax's value.
      Case(
        "optax",
        source,
        "poly_loss_cross_entropy",
        args,
        kwargs,
        _poly(z, t, 2.0),
        TIGHT,
        lambda loss, pick=pick, t_sum=t_sum: pick(loss) + 2.0 * (1 - t_sum),
      ),
    )


DIFFERENCES = [*_poly_differences(), *_differences()]


# ----------------------------------------------------------------------------------------------
# Derivatives and errors.


class GradientCase(NamedTuple):
  anchor: str
  source: str
  ours: Callable[[], Any]  # our derivatives (traced together with the others' in one jit)
  expected: Any  # the derivative formula in float64; None: finiteness is the assertion


def _gradient_cases():
  ys = _a([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]])
  ts = _a([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  p = np.exp(_log_softmax(ys))
  sce = jax.grad(lambda z, t: jnp.sum(xj.softmax_cross_entropy(z, t)), argnums=(0, 1))
  # check_grads of softmax_cross_entropy w.r.t. both arguments: softmax·Σt - t, -log softmax.
  expected = (p * np.sum(ts, -1, keepdims=True) - ts, -_log_softmax(ys))
  yield GradientCase(
    "optax", OPTAX + "SoftmaxCrossEntropyTest.test_gradient", lambda: sce(ys, ts), expected
  )
  yield GradientCase(
    "optax", OPTAX + "SafeSoftmaxCrossEntropyTest.test_gradient", lambda: sce(ys, ts), expected
  )
  vg = jax.value_and_grad(lambda z, t: jnp.sum(xj.softmax_cross_entropy(z, t)))
  yield GradientCase(
    "optax",
    OPTAX + "SafeSoftmaxCrossEntropyTest.test_against_plain_implementation",
    lambda: vg(ys[0], ts[0]),
    (_softmax_xent(ys[0], ts[0]), expected[0][0]),
  )
  labels = _y([1, 0])
  sparse = jax.grad(lambda z: jnp.sum(xj.softmax_cross_entropy_with_integer_labels(z, labels)))

  yield GradientCase(
    "optax",
    OPTAX + "SoftmaxCrossEntropyWithIntegerLabelsTest.test_gradient",
    lambda: (sparse(ys),),
    (p - _one_hot(labels, 3),),
  )
  # Focal loss at logits of ±50-100 with soft labels, γ = 0.5: value, gradient and Hessian
  # finite (optax's assertion), the value also equal to the formula.
  z, y = _a([100.0, -100.0, 75.0, -75.0, 50.0, -50.0]), _a([0.9, 0.1, 0.8, 0.2, 1.0, 0.0])

  def focal(z):
    return jnp.sum(xj.sigmoid_focal_loss(z, y, gamma=0.5))

  def run(z):
    return focal(z), jax.grad(focal)(z), jax.hessian(focal)(z)

  yield GradientCase(
    "optax",
    OPTAX + "SigmoidFocalLossTest.test_extreme_logits_finite_gradients",
    lambda: run(z),
    (np.sum(_focal(z, y, 0.5)), None, None),
  )


GRADIENT_CASES = list(_gradient_cases())


class RaisingCase(NamedTuple):
  anchor: str
  source: str
  call: Callable[[], Any]
  error: type


def _raising_cases():
  pk, qk = _a([[0.1, 0.2], [0.6, 0.3], [0.3, 0.5]]), _a([[0.1, 0.2], [0.6, 0.3]])
  yield RaisingCase(
    "scipy",
    SCIPY + "test_entropy_raises_value_error",
    lambda: xj.kl_divergence(pk, qk, axis=0),
    ValueError,
  )
  x, y = _a(np.ones((10, 1, 12))), _a(np.ones((11, 2)))
  yield RaisingCase(
    "scipy", SCIPY + "test_entropy_shape_mismatch", lambda: xj.kl_divergence(x, y), ValueError
  )
  yield RaisingCase(
    "scipy",
    SCIPY + "test_input_validation",
    lambda: xj.entropy(_a(np.ones(10)), base=-2),
    ValueError,
  )
  # keras casts y_true to the dtype of y_pred; a [3, 1] target against [3, 3] predictions.
  y_true, y_pred = (
    _a([[0], [1], [2]]),
    _a([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]]),
  )
  yield RaisingCase(
    "keras",
    KERAS + "BinaryCrossentropyTest.test_shape_mismatch",
    lambda: xj.binary_cross_entropy(y_true, y_pred),
    ValueError,
  )
  yield RaisingCase(
    "keras",
    KERAS + "CategoricalCrossentropyTest.test_shape_mismatch",
    lambda: xj.cross_entropy(y_true, y_pred),
    ValueError,
  )


RAISING_CASES = list(_raising_cases())


# ----------------------------------------------------------------------------------------------
# Our values, one jitted call per group of cases with the same function, options and shapes.

# Each program runs once on a few rows: XLA's LLVM optimisations would cost more than they save.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_ELEMENTWISE = ("sigmoid_binary_cross_entropy", "binary_cross_entropy", "sigmoid_focal_loss")


# Scalar options that the function also takes as arrays broadcast against its input: passed
# as such, cases with different values share a program (the value is the same).
_ELEMENTWISE_OPTIONS = {"sigmoid_focal_loss": ("gamma", "alpha")}


def _options(case: Case):
  """(array arguments, batched like the inputs; static options)."""
  arrays = {k: v for k, v in case.kwargs.items() if isinstance(v, np.ndarray)}
  for k in _ELEMENTWISE_OPTIONS.get(case.fn, ()):
    if k in case.kwargs:
      arrays[k] = np.full(case.args[0].shape, case.kwargs[k], DTYPE)
  static = tuple(sorted((k, v) for k, v in case.kwargs.items() if k not in arrays))
  return arrays, static


class _Layout(NamedTuple):
  """How a case's arrays stack with other cases': along ``axis`` of the full-rank ones (the
  class-axis-last ones flattened to rows first; elementwise ones flattened), axis 0 of the
  others (labels, per-example weights); ``out_shape``: its per-example output."""

  rank: int  # of the full-rank arrays (those with the class axes)
  axis: int
  flatten: bool
  out_shape: tuple


def _layout(case: Case) -> _Layout:
  arrays = (*case.args, *_options(case)[0].values())
  rank = max(a.ndim for a in arrays)
  full = next(a for a in arrays if a.ndim == rank)
  if case.fn in _ELEMENTWISE:
    return _Layout(rank, 0, True, full.shape)
  if "axis" not in case.kwargs:
    return _Layout(rank, 0, True, full.shape[:-1])
  axis = case.kwargs["axis"]
  classes = {a % rank for a in (axis if isinstance(axis, tuple) else (axis,))}
  batch = min(i for i in range(rank) if i not in classes)  # output axis 0
  return _Layout(rank, batch, False, tuple(n for i, n in enumerate(full.shape) if i not in classes))


def _stackable(case: Case, x: np.ndarray) -> np.ndarray:
  """``x`` in the form it is concatenated in: rows, or as is (stacked along the batch axis)."""
  layout = _layout(case)
  if not layout.flatten:
    return x
  if case.fn in _ELEMENTWISE or x.ndim < layout.rank:
    return x.reshape(-1)
  return x.reshape(-1, x.shape[-1])


def _group_key(case: Case):
  arrays, static = _options(case)
  layout = _layout(case)
  parts = [_stackable(case, a) for a in (*case.args, *arrays.values())]
  axes = [layout.axis if a.ndim == layout.rank else 0 for a in (*case.args, *arrays.values())]
  shapes = tuple(p.shape[:k] + p.shape[k + 1 :] for p, k in zip(parts, axes, strict=True))
  dtypes = tuple(p.dtype.str for p in parts)
  return (case.fn, static, tuple(sorted(arrays)), layout.axis, shapes, dtypes)


def _concatenate(cases: list[Case], get) -> np.ndarray:
  layout = _layout(cases[0])
  parts = [_stackable(c, get(c)) for c in cases]
  return np.concatenate(parts, axis=layout.axis if get(cases[0]).ndim == layout.rank else 0)


@functools.cache
def _ours() -> dict[int, np.ndarray]:
  """{index into CASES + the DIFFERENCES' calls: our per-example output}.

  The cases of a group (same function, options and shapes but the batch) run as one call
  on their examples concatenated; all the groups are traced into one jitted program (one
  compilation instead of one per group).
  """
  calls = [*CASES, *(c for d in DIFFERENCES for c in (d.ours, d.mapped))]
  groups = collections.defaultdict(list)
  for i, case in enumerate(calls):
    groups[_group_key(case)].append(i)
  groups = list(groups.values())
  fns, inputs = [], []
  for members in groups:
    cases = [calls[i] for i in members]
    arrays, static = _options(cases[0])
    args = [_concatenate(cases, lambda c, k=k: c.args[k]) for k in range(len(cases[0].args))]
    kwargs = {k: _concatenate(cases, lambda c, k=k: _options(c)[0][k]) for k in arrays}
    fns.append(functools.partial(getattr(xj, cases[0].fn), **dict(static)))
    inputs.append((args, kwargs))

  def run_all(inputs):
    return [fn(*args, **kwargs) for fn, (args, kwargs) in zip(fns, inputs, strict=True)]

  compiled = jax.jit(run_all).lower(inputs).compile(compiler_options=FAST_COMPILE)
  out = {}
  for members, result in zip(groups, compiled(inputs), strict=True):
    result = np.asarray(result)
    if _layout(calls[members[0]]).flatten:
      result = result.reshape(-1)  # examples (rows or elements) in order
    start = 0
    for i in members:
      shape = _layout(calls[i]).out_shape
      n = math.prod(shape) if _layout(calls[i]).flatten else shape[0]
      out[i] = result[start : start + n].reshape(shape)
      start += n
  return out


@functools.cache
def _derivatives() -> list:
  """Every GRADIENT_CASES' derivatives, from one compiled program."""
  run = jax.jit(lambda: [case.ours() for case in GRADIENT_CASES])
  return jax.tree.map(np.asarray, run.lower().compile(compiler_options=FAST_COMPILE)())


def _assert_close(got, expected, tol, what):
  np.testing.assert_allclose(
    np.asarray(got, np.float64),
    np.asarray(expected, np.float64),
    **{"rtol": 0.0, **tol},
    err_msg=what,
  )


def _count(anchor: str) -> tuple[int, int]:
  agree = sum(c.anchor == anchor for c in (*CASES, *GRADIENT_CASES, *RAISING_CASES))
  return agree, sum(d.ours.anchor == anchor for d in DIFFERENCES)


# (agreeing cases, cases we differ from on purpose), per anchor; test_counts keeps it current.
COUNTS = {"optax": (92, 4), "scipy": (12, 6), "keras": (51, 9), "torch": (20, 1)}


class AnchorParityTest(chex.TestCase):
  @parameterized.named_parameters((f"{i:03d}_{c.anchor}", i) for i, c in enumerate(CASES))
  def test_case_agrees(self, index):
    case = CASES[index]
    _assert_close(case.reduce(_ours()[index]), case.expected, case.tol, case.source)

  @parameterized.named_parameters(
    (f"{i:02d}_{d.ours.anchor}", i) for i, d in enumerate(DIFFERENCES)
  )
  def test_difference_on_purpose(self, index):
    d, ours = DIFFERENCES[index], _ours()
    offset = len(CASES) + 2 * index
    got, mapped = d.ours.reduce(ours[offset]), d.mapped.reduce(ours[offset + 1])
    _assert_close(got, d.ours.expected, d.ours.tol, f"{d.ours.source}: our exact value")
    _assert_close(mapped, d.mapped.expected, d.mapped.tol, f"{d.mapped.source}: mapped")
    differs = not np.allclose(
      np.asarray(got, np.float64),
      np.asarray(d.mapped.expected, np.float64),
      **{"rtol": 0.0, **d.mapped.tol},
    )
    self.assertTrue(differs, f"{d.ours.source} now agrees with the anchor: move it to CASES")

  @parameterized.named_parameters((f"{i}_{c.anchor}", i) for i, c in enumerate(GRADIENT_CASES))
  def test_derivatives(self, index):
    case = GRADIENT_CASES[index]
    got = _derivatives()[index]
    chex.assert_tree_all_finite(got)
    for g, e in zip(jax.tree.leaves(got), case.expected, strict=True):
      if e is not None:
        _assert_close(g, e, TIGHT, case.source)

  @parameterized.named_parameters((f"{i}_{c.anchor}", i) for i, c in enumerate(RAISING_CASES))
  def test_error(self, index):
    case = RAISING_CASES[index]
    with self.assertRaises(case.error, msg=case.source):
      case.call()

  def test_counts(self):
    self.assertEqual({a: _count(a) for a in COUNTS}, COUNTS)


if __name__ == "__main__":
  absltest.main()
