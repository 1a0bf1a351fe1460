"""The bad-input matrix: every invalid input of every public function, and valid edge inputs.

Part 1, the measures (below); part 2, the training layer (`_training_cases`, SPEC §8): every
public entry of models, training, fit, optimum and data, one bad argument at a time.

`_VALID` gives, per public measure, a valid call on [4, 3] arrays whose rows are edge cases
(zeros, ones, -inf logits, entries masked by `where`): it follows from the roles of the
measure's arguments (`@measure` in xent_jax/_measures.py), one example array per role. Its
value is checked against the measure's exact value from the mpmath reference
(tests/library/_mp_reference.py, or the jet its own test file defines). The bad cases are
derived from it by replacing one argument, so that every function meets every rule that
applies to it:

- trace time, on the function itself: wrong dtype, rank or shape, `axis`, `where`, `base`,
  `label_smoothing` → TypeError/ValueError naming the argument;
- through `xent_jax.checked`: NaN, probabilities outside [0, 1], sums ≠ 1, labels out of
  range, +inf logits, examples without support → an error naming the argument, the first
  offending index and value.

Every value case keeps the shapes of the valid call, so each function compiles once.
"""

import collections
import functools
import inspect
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from jax.experimental import checkify

import xent_jax as xj
from tests.library import _mp_reference as ref
from xent_jax import data, fit, models, optimum, training
from xent_jax._measures import REGISTRY, Role

jax.config.update("jax_numpy_rank_promotion", "raise")

INF, NAN = np.inf, np.nan
_W = np.array([[True] * 3] * 3 + [[True, True, False]])  # class 2 of example 3 excluded

# ---------------------------------------------------------------------------------------
# The valid calls: [4, 3] arrays whose rows are edge cases. Entries excluded by `_W` hold
# values that would be invalid (7.0, inf) to show that they are never looked at.


def _f32(rows):
  return np.array(rows, np.float32)


_P = _f32([[1, 0, 0], [0.5, 0.5, 0], [0.25, 0.25, 0.5], [0.5, 0.5, 7.0]])
_Q = _f32([[1, 0, 0], [0.25, 0.75, 0], [0.5, 0.25, 0.25], [0.25, 0.75, INF]])
_Z = _f32([[0, -INF, -INF], [0, 0, -INF], [50, 50, 50], [7, -80, INF]])
_Z2 = _f32([[0, -INF, -INF], [0, -INF, 0], [-1, -1, -1], [0, 0, 0]])
_U = _f32([[0, 1, 0.5], [0.25, 0.75, 1], [1e-30, 0.5, 1 - 2**-24], [0.1, 0.9, 0.5]])
_X = _f32([[-INF, INF, 0], [-80, 80, 0], [-30, 30, 1], [0, 2, -2]])
_Y = np.array([0, 1, 2, 0])

_M = _f32([[0, 1, 2], [0.5, 0, 3], [1e-30, 2, 0.25], [1, 0.5, -1.0]])  # unnormalised masses
_M2 = _f32([[1, 0.5, 2], [0.25, 0.5, 3], [2, 1e-30, 0.25], [0.5, 2, INF]])

# The valid call of every measure follows from its roles (xent_jax._measures.REGISTRY): the
# i-th argument of a role gets the i-th example below, and `where=_W` where it is taken.
_EXAMPLES = {
  Role.DISTRIBUTION: (_P, _Q),
  Role.PROBABILITY: (_U, _U[::-1].copy()),
  Role.LOGITS: (_Z, _Z2),
  Role.BINARY_LOGITS: (_X,),
  Role.LABELS: (_Y,),
  Role.MEASURE: (_M, _M2),
}
_CLASS_ROLES = (Role.DISTRIBUTION, Role.LOGITS)


def _valid_call(name):
  """(keyword arguments of a valid call, {argument: role}), the primary argument first."""
  roles = REGISTRY[name].roles
  kwargs, used = {}, collections.Counter()
  for arg, role in roles.items():
    kwargs[arg] = _EXAMPLES[role][used[role]]
    used[role] += 1
  if _takes(name, "where"):
    kwargs["where"] = _W
  return kwargs, roles


def _takes(name, option):
  return option in inspect.signature(REGISTRY[name].fn).parameters


_VALID = {name: _valid_call(name) for name in REGISTRY}


def _replace(name, **changes):
  return {**_VALID[name][0], **changes}


# ---------------------------------------------------------------------------------------
# Bad inputs found at trace time: (function, case, kwargs, exception, argument named).

_TRACED = object()  # stands for a value passed through jax.jit (a tracer)


def _trace_time_cases():
  for name, (kwargs, roles) in _VALID.items():
    arrays = list(roles)
    for arg, role in roles.items():
      x = kwargs[arg]
      if role is Role.LABELS:
        bad = {"float": x.astype(np.float32), "bool": x > 0, "string": "0"}
      else:
        bad = {"complex": x.astype(np.complex64), "string": "abc", "ragged": [[0.5], [0.5, 0.5]]}
        if not (role is Role.PROBABILITY and arg == "labels"):  # 0/1 integer labels allowed
          bad |= {"int": np.zeros(x.shape, np.int32), "bool": np.ones(x.shape, bool)}
      for case, value in bad.items():
        yield name, f"{arg}_{case}", _replace(name, **{arg: value}), TypeError, arg
      if len(arrays) == 2 and arg == arrays[1]:  # shapes must match the first argument
        shapes = {"extra_axis": x[None], "transposed": x.T, "one_row": x[:1]}
        if role is Role.LABELS:
          shapes = {"trailing_axis": x[:, None], "scalar": x[0], "short": x[:3]}
        for case, value in shapes.items():
          yield name, f"{arg}_{case}", _replace(name, **{arg: value}), ValueError, arg
    if _takes(name, "axis"):
      scalars = {a: kwargs[a][0, 0] for a in arrays if a != "labels"}
      yield name, "rank_0", _replace(name, where=None, **scalars), ValueError, "axis"
      axes = {
        "2": 2,
        "-3": -3,
        "repeated": (1, 1),
        "empty": (),
        "float": 1.5,
        "none": None,
        "string": "1",
      }
      for case, axis in axes.items():
        value_error = ("2", "-3", "repeated", "empty")
        error = ValueError if case in value_error else TypeError
        yield name, f"axis_{case}", _replace(name, axis=axis), error, "axis"
      if roles.get("labels"):  # two class axes leave no example axis for the [4] labels
        yield name, "axis_pair", _replace(name, axis=(0, 1)), ValueError, "labels"
    if "where" in kwargs:
      wheres = {"float": _W.astype(np.float32), "int": _W.astype(np.int32), "string": "abc"}
      for case, where in wheres.items():
        yield name, f"where_{case}", _replace(name, where=where), TypeError, "where"
      for case, where in {"short": _W[0, :2], "transposed": _W.T, "extra": _W[None, None]}.items():
        yield name, f"where_{case}", _replace(name, where=where), ValueError, "where"
    options = {
      "base": (
        {"0": 0, "-1": -1.0, "1": 1, "1.0": 1.0, "inf": INF, "nan": NAN},
        {"str": "2", "complex": 2j, "array": np.array([2.0, 3.0]), "traced": _TRACED},
      ),
      "label_smoothing": (
        {"-0.1": -0.1, "1.5": 1.5, "nan": NAN},
        {"str": "0.1", "none": None, "traced": _TRACED},
      ),
      # The focal loss's options: scalars or arrays broadcastable to the logits.
      "gamma": (
        {"-1": -1.0, "nan": NAN, "shape_2": np.array([1.0, 2.0])},
        {"str": "2", "none": None},
      ),
      "alpha": ({"-0.1": -0.1, "1.5": 1.5, "shape_2": np.array([0.2, 0.3])}, {"str": "0.25"}),
      "ignore_index": (  # beyond int64 (and int32 with x64 off): no label can equal it
        {"2**70": 2**70, "-2**70": -(2**70)},
        {"float": 1.5, "str": "1", "bool": True, "array": np.array([1, 2]), "traced": _TRACED},
      ),
    }
    for option, (bad_values, bad_types) in options.items():
      if not _takes(name, option):
        continue
      for case, value in bad_values.items():
        yield name, f"{option}_{case}", _replace(name, **{option: value}), ValueError, option
      for case, value in bad_types.items():
        yield name, f"{option}_{case}", _replace(name, **{option: value}), TypeError, option


# ---------------------------------------------------------------------------------------
# Bad values, through xent_jax.checked: (function, case, kwargs, argument, rule, index, value).


def _set(x, index, value):
  x = x.copy()
  x[index] = value
  return x


def _value_cases():
  for name, (kwargs, roles) in _VALID.items():
    for arg, role in roles.items():
      x = kwargs[arg]
      if role is Role.LABELS:
        for bad in (-1, 3, 2**20):
          yield (
            name,
            f"{arg}_label_{bad}",
            _replace(name, **{arg: _set(x, 2, bad)}),
            arg,
            "must be in [0, 3)",
            "(2,)",
            str(bad),
          )
        yield (
          name,
          f"{arg}_on_excluded_class",
          _replace(name, **{arg: _set(x, 3, 2)}),
          arg,
          "must name a class included by `where`",
          "(3,)",
          "2",
        )
        continue
      yield (
        name,
        f"{arg}_nan",
        _replace(name, **{arg: _set(x, (2, 1), NAN)}),
        arg,
        "must not contain NaN",
        "(2, 1)",
        "nan",
      )
      if role in (Role.PROBABILITY, Role.DISTRIBUTION):
        for bad in (1.5, -0.25, INF):
          yield (
            name,
            f"{arg}_{bad}",
            _replace(name, **{arg: _set(x, (2, 1), bad)}),
            arg,
            "must lie in [0, 1]",
            "(2, 1)",
            f"{bad:g}",
          )
      if role is Role.MEASURE:
        yield (
          name,
          f"{arg}_negative",
          _replace(name, **{arg: _set(x, (2, 1), -0.25)}),
          arg,
          "must be ≥ 0",
          "(2, 1)",
          "-0.25",
        )
      if role is Role.DISTRIBUTION:
        yield (
          name,
          f"{arg}_sum_0.9",
          _replace(name, **{arg: _set(x, 2, x[2] * 0.9)}),
          arg,
          "must sum to 1 along axis -1",
          "(2,)",
          "0.89999998",
        )
      if role is Role.LOGITS:
        yield (
          name,
          f"{arg}_plus_inf",
          _replace(name, **{arg: _set(x, (2, 1), INF)}),
          arg,
          "must not be +inf",
          "(2, 1)",
          "inf",
        )
        yield (
          name,
          f"{arg}_all_minus_inf",
          _replace(name, **{arg: _set(x, 2, -INF)}),
          arg,
          "must have a finite logit",
          "(2,)",
          "-inf",
        )
    if "where" in kwargs and "labels" not in roles:
      yield (
        name,
        "where_excludes_a_whole_example",
        _replace(name, where=_set(_W, 2, False)),
        "where",
        "must include at least one class of every example",
        "(2,)",
        "0",
      )


def _zero_class_cases():
  """A class axis of size 0: no distribution at all (found before any computation)."""
  for name, (_, roles) in _VALID.items():
    if roles[next(iter(roles))] in _CLASS_ROLES:
      empty = {a: np.zeros((4, 0), np.float32) for a, r in roles.items() if r is not Role.LABELS}
      yield name, "zero_classes", _replace(name, where=None, **empty), next(iter(roles))


# ---------------------------------------------------------------------------------------
# Valid edge inputs beyond the valid calls: one class and an empty batch (functions with a
# class axis), float16 and bfloat16 (all).


def _edge_cases():
  for name, (kwargs, roles) in _VALID.items():
    arrays = {a: kwargs[a] for a in roles}
    if roles[next(iter(roles))] in _CLASS_ROLES:
      one_class = {
        Role.LABELS: np.zeros(4, int),
        Role.DISTRIBUTION: np.ones((4, 1), np.float32),
        Role.LOGITS: _f32([[0], [5], [-80], [80]]),
      }
      yield (
        name,
        "one_class",
        _replace(name, where=None, **{a: one_class[r] for a, r in roles.items()}),
      )
      yield (
        name,
        "empty_batch",
        _replace(
          name,
          **{a: x[:0] for a, x in arrays.items()},
          **({"where": _W[:0]} if "where" in kwargs else {}),
        ),
      )
    for low in (jnp.float16, jnp.bfloat16):
      low_arrays = {
        a: jnp.asarray(x, low) for a, x in arrays.items() if roles[a] is not Role.LABELS
      }
      yield name, f"{jnp.dtype(low).name}", _replace(name, **low_arrays)


def _params(cases):
  return [(f"{c[0]}__{c[1]}", *c[:1], *c[2:]) for c in cases]


def _reference(name, kwargs):
  """The exact value of a valid call (tests/library/_mp_reference.py, 50 digits): the measure's
  own reference function where it has one (it takes the library's arguments), else its jet's
  value."""
  is_float = lambda v: v is not None and jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)
  # float16 and bfloat16 inputs widen exactly to float64.
  as64 = {k: np.asarray(v, np.float64) if is_float(v) else v for k, v in kwargs.items()}
  primary = as64[next(iter(REGISTRY[name].roles))]
  if primary.size == 0:  # an empty batch: no examples, no values (log_softmax: one per class)
    reduces = _takes(name, "axis") and name != "log_softmax"
    return np.zeros(primary.shape[:-1] if reduces else primary.shape)
  own = getattr(ref, name, None)
  if own is not None:
    return own(**as64).value
  arrays = {a: as64[a] for a in ref.jet_args(name)}
  if _takes(name, "axis"):
    return ref.value_ref(name, arrays, as64.get("where")).value
  # Elementwise: the jet takes [N] arrays.
  flat = {a: x.ravel() for a, x in arrays.items()}
  return ref.value_ref(name, flat, as64.get("where")).value.reshape(primary.shape)


def _assert_accurate(got, expected):
  """Float32 output against the float64 value: relative 2e-6 where it is a normal float32."""
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=np.finfo(np.float32).tiny)


# Gaps in the library, reported and not fixed here (outside xent_jax/_core.py).
_KNOWN_GAPS = {}  # (function, case) -> reason, for a case the library does not meet yet


# ---------------------------------------------------------------------------------------
# Part 2, the training layer: (case, call, error, function named, argument named). Each call
# fails in Python before any compilation, so the table costs milliseconds per row.

_RNG = np.random.default_rng(0)
_XT = _RNG.normal(size=(8, 3)).astype(np.float32)  # 8 examples, 3 features
_Y2 = np.array([0, 1] * 4)  # binary labels
_Y3 = np.array([0, 1, 2] * 2 + [0, 1])  # 3 classes
_LOGISTIC = {"w": np.zeros(3, np.float32), "b": np.zeros((), np.float32)}
_SOFTMAX = {"w": np.zeros((3, 3), np.float32), "b": np.zeros(3, np.float32)}


def _with(x, index, value):
  x = np.array(x, dtype=np.result_type(x, type(value)))
  x[index] = value
  return x


# Bad features and labels, shared by every function taking (x_NxD, y_N): (case, x, y, error,
# argument); `labels` picks the binary or the class-label variant.
def _bad_data(labels):
  y = _Y2 if labels == "binary" else _Y3
  cases = [
    ("x_nan", _with(_XT, (2, 1), np.nan), y, ValueError, "x_NxD"),
    ("x_inf", _with(_XT, (5, 0), -np.inf), y, ValueError, "x_NxD"),
    ("x_complex", _XT.astype(np.complex64), y, TypeError, "x_NxD"),
    ("x_string", _XT.astype(str), y, TypeError, "x_NxD"),
    ("x_rank_1", _XT[:, 0], y, ValueError, "x_NxD"),
    ("y_short", _XT, y[:-1], ValueError, "y_N"),
    ("y_string", _XT, y.astype(str), TypeError, "y_N"),
    ("y_complex", _XT, y.astype(np.complex64), TypeError, "y_N"),
    ("y_minus_1", _XT, _with(y, 3, -1), ValueError, "y_N"),
    ("x_no_examples", _XT[:0], y[:0], ValueError, "x_NxD"),  # a mean over none: NaN
  ]
  if labels == "binary":
    cases += [
      ("y_2", _XT, _with(y, 3, 2), ValueError, "y_N"),
      ("y_nan", _XT, _with(y, 3, np.nan), ValueError, "y_N"),
      ("y_1.5", _XT, _with(y, 3, 1.5), ValueError, "y_N"),
    ]
  else:
    cases += [
      ("y_K", _XT, _with(y, 3, 3), ValueError, "y_N"),
      ("y_float", _XT, y.astype(np.float32), TypeError, "y_N"),
    ]
  return cases


_MODEL_FUNCTIONS = {
  "binary": (
    (models.logistic_regression_loss, _LOGISTIC),
    (models.logistic_regression_grad, _LOGISTIC),
    (models.seed_section_4_1_loss, _LOGISTIC),
  ),
  "classes": (
    (models.softmax_regression_loss, _SOFTMAX),
    (models.softmax_regression_grad, _SOFTMAX),
  ),
}
_SGD = training.sgd(0.1)
_STATE = {"binary": training.init_train_state(_LOGISTIC, _SGD)}
_STATE["classes"] = training.init_train_state(_SOFTMAX, _SGD)
_LOSS = {
  "binary": functools.partial(models.logistic_regression_loss, l2=0.1),
  "classes": models.softmax_regression_loss,
}
_KEY = jax.random.key(0)


def _user_loss(params, x, y):
  return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))


def _trainers(labels):
  """(name, call(x, y)) for each trainer, on the labels' model."""
  state, loss = _STATE[labels], _LOSS[labels]
  run = dict(loss_fn=loss, optimizer=_SGD)
  init = (
    functools.partial(models.init_logistic_regression, 3)
    if labels == "binary"
    else functools.partial(models.init_softmax_regression, 3, 3)
  )
  return [
    ("train_step", lambda x, y: training.train_step(state, (x, y), **run)),
    ("train_full_batch", lambda x, y: training.train_full_batch(state, (x, y), num_steps=2, **run)),
    (
      "train_minibatch",
      lambda x, y: training.train_minibatch(state, (x, y), _KEY, num_epochs=1, batch_size=2, **run),
    ),
    (
      "train_seeds",
      lambda x, y: training.train_seeds(
        jax.random.split(_KEY, 2), (x, y), init_fn=lambda k: init(key=k), num_epochs=1, **run
      ),
    ),
  ]


def _reference_solvers(labels):
  if labels == "binary":
    return [
      ("fit_logistic_regression", fit.fit_logistic_regression),
      ("logistic_regression_optimum", optimum.logistic_regression_optimum),
      (
        "logistic_regression_objective",
        lambda x, y: optimum.logistic_regression_objective(_LOGISTIC, x, y),
      ),
    ]
  return [
    ("fit_softmax_regression", lambda x, y: fit.fit_softmax_regression(x, y, 3)),
    ("softmax_regression_optimum", lambda x, y: optimum.softmax_regression_optimum(x, y, 3)),
    (
      "softmax_regression_objective",
      lambda x, y: optimum.softmax_regression_objective(_SOFTMAX, x, y),
    ),
  ]


def _data_cases():
  """Bad features and labels through every function that takes them."""
  for labels in ("binary", "classes"):
    calls = [(f.__name__, functools.partial(f, p)) for f, p in _MODEL_FUNCTIONS[labels]]
    calls += _trainers(labels) + _reference_solvers(labels)
    for name, call in calls:
      for case, x, y, error, arg in _bad_data(labels):
        if case == "x_rank_1" and name.startswith("train_seeds"):
          continue  # same check as train_full_batch; a rank-1 x would not reach it first
        yield f"{name}__{labels}_{case}", functools.partial(call, x, y), error, name, arg


def _user_loss_cases():
  """A loss the library does not know: real dtypes, finite values, one example axis."""
  state = training.init_train_state(_LOGISTIC, _SGD)
  run = functools.partial(
    training.train_full_batch, state, loss_fn=_user_loss, optimizer=_SGD, num_steps=1
  )
  y = _Y2.astype(np.float32)
  t = "train_full_batch"
  yield f"{t}__user_loss_x_nan", lambda: run((_with(_XT, 0, np.nan), y)), ValueError, t, "x_NxD"
  fm_1d = data.FeatureMajor(jnp.ones(len(y)))
  yield f"{t}__user_loss_fm_1d", lambda: run((fm_1d, y)), ValueError, t, "x_NxD.x_DxN"
  fm_nan = data.feature_major(_with(_XT, (1, 2), np.nan))  # found at x_DxN[2, 1]
  yield f"{t}__user_loss_fm_x_nan", lambda: run((fm_nan, y)), ValueError, t, "x_NxD.x_DxN"
  yield f"{t}__user_loss_y_inf", lambda: run((_XT, _with(y, 0, np.inf))), ValueError, t, "y_N"
  yield f"{t}__user_loss_y_string", lambda: run((_XT, y.astype(str))), TypeError, t, "y_N"
  yield f"{t}__user_loss_sizes", lambda: run((_XT, y[:5])), ValueError, t, "batch"
  yield f"{t}__user_loss_not_a_pair", lambda: run((_XT, y, y)), TypeError, t, "batch"
  yield f"{t}__user_loss_no_examples", lambda: run((_XT[:0], y[:0])), ValueError, t, "batch"


def _setting_cases():
  """Counts, fractions, optimiser settings, keys, hooks: one bad keyword argument per row."""
  state, loss, batch = _STATE["binary"], _LOSS["binary"], (_XT, _Y2)
  run = dict(loss_fn=loss, optimizer=_SGD)
  full = functools.partial(training.train_full_batch, state, batch, **run)
  mini = functools.partial(training.train_minibatch, state, batch, key=_KEY, num_epochs=1, **run)
  init = lambda k: models.init_logistic_regression(3, key=k)
  keys = jax.random.split(_KEY, 2)
  seeds = functools.partial(training.train_seeds, keys_S=keys, batch=batch, init_fn=init, **run)
  sgd, lr = training.sgd, dict(learning_rate=0.1)
  fit_l = functools.partial(fit.fit_logistic_regression, _XT, _Y2)
  fit_s = functools.partial(fit.fit_softmax_regression, _XT, _Y3)
  opt_l = functools.partial(optimum.logistic_regression_optimum, _XT, _Y2)
  opt_s = functools.partial(optimum.softmax_regression_optimum, _XT, _Y3)
  obj_l = functools.partial(optimum.logistic_regression_objective, x_NxD=_XT, y_N=_Y2)
  init_l, init_s = models.init_logistic_regression, models.init_softmax_regression
  loss_l = functools.partial(models.logistic_regression_loss, _LOGISTIC, _XT, _Y2)
  grad_s = functools.partial(models.softmax_regression_grad, _SOFTMAX, _XT, _Y3)
  logits_l = functools.partial(models.logistic_regression_logits, x_NxD=_XT)
  probs_s = functools.partial(models.softmax_regression_probs, x_NxD=_XT)
  logistic, softmax = data.make_logistic_data, data.make_softmax_data
  cancer, digits, standardize = data.load_breast_cancer, data.load_digits, data.standardize
  nan_x, short_x = _with(_XT, 0, np.nan), _XT[:, :2]
  V, T = ValueError, TypeError
  # (function, call, keyword arguments; the last one is bad and must be named, error)
  rows = [
    ("sgd", sgd, dict(learning_rate=0.0), V),
    ("sgd", sgd, dict(learning_rate=-0.1), V),
    ("sgd", sgd, dict(learning_rate=np.inf), V),
    ("sgd", sgd, dict(learning_rate=np.nan), V),
    ("sgd", sgd, dict(learning_rate="0.1"), T),
    ("sgd", sgd, dict(learning_rate=0.1j), T),
    ("sgd", sgd, dict(**lr, momentum=1.0), V),
    ("sgd", sgd, dict(**lr, momentum=-0.5), V),
    ("sgd", sgd, dict(**lr, momentum=np.nan), V),
    ("sgd", sgd, dict(**lr, nesterov="yes"), T),
    ("train_full_batch", full, dict(num_steps=-1), V),
    ("train_full_batch", full, dict(num_steps=0), V),
    ("train_full_batch", full, dict(num_steps=2.5), T),
    ("train_full_batch", full, dict(num_steps=True), T),
    ("train_full_batch", full, dict(num_steps=2, log_every=0), V),
    ("train_full_batch", full, dict(num_steps=2, hook=print), V),
    ("train_full_batch", full, dict(num_steps=2, log_every=1, hook="print"), T),
    ("train_full_batch", full, dict(num_steps=2, donate="yes"), T),
    ("train_full_batch", full, dict(num_steps=2, optimizer=0.1), T),
    ("train_full_batch", full, dict(num_steps=2, loss_fn="mse"), T),
    ("train_full_batch", full, dict(num_steps=2, optimizer=optax.sgd(np.nan)), V),
    ("train_full_batch", full, dict(num_steps=2, optimizer=optax.adam(1e-3, b1=np.nan)), V),
    ("train_step", training.train_step, dict(batch=batch, **run, state=_LOGISTIC), T),
    ("train_minibatch", mini, dict(batch_size=0), V),
    ("train_minibatch", mini, dict(batch_size=9), V),
    ("train_minibatch", mini, dict(batch_size=2.0), T),
    ("train_minibatch", mini, dict(batch_size=2, num_epochs=0), V),
    ("train_minibatch", mini, dict(batch_size=2, key=0), T),
    ("train_minibatch", mini, dict(batch_size=2, batch_sharding="batch"), T),
    ("shard_batch", functools.partial(training.shard_batch, batch), dict(mesh="batch"), T),
    ("replicate", functools.partial(training.replicate, {"w": _XT}), dict(mesh=None), T),
    ("train_seeds", seeds, dict(num_epochs=1, keys_S=_KEY), T),
    ("train_seeds", seeds, dict(num_epochs=0), V),
    ("train_seeds", seeds, dict(num_epochs=1, batch_size=0), V),
    ("train_seeds", seeds, dict(num_epochs=1, init_fn=None), T),
    ("init_train_state", training.init_train_state, dict(params={}, optimizer=1), T),
    ("init_logistic_regression", init_l, dict(num_features=0), V),
    ("init_logistic_regression", init_l, dict(num_features=2.0), T),
    ("init_logistic_regression", init_l, dict(num_features=2, scale=-1.0), V),
    ("init_logistic_regression", init_l, dict(num_features=2, dtype=np.int32), T),
    ("init_softmax_regression", init_s, dict(num_features=2, num_classes=0), V),
    ("init_logistic_regression", init_l, dict(num_features=2, key=0), T),
    ("init_logistic_regression", init_l, dict(num_features=2, key=keys), T),  # [2] keys
    ("init_softmax_regression", init_s, dict(num_features=2, num_classes=2, key=7), T),
    ("logistic_regression_loss", loss_l, dict(l2=-1.0), V),
    ("softmax_regression_grad", grad_s, dict(l2=np.nan), V),
    ("logistic_regression_logits", logits_l, dict(params=_SOFTMAX), V),
    ("softmax_regression_probs", probs_s, dict(params={"w": 1}), V),
    (
      "fit_logistic_regression",
      fit.fit_logistic_regression,
      dict(y_N=_Y2, x_NxD=data.feature_major(_XT)),
      T,
    ),
    (
      "fit_softmax_regression",
      fit.fit_softmax_regression,
      dict(x_NxD=_XT, y_N=-np.ones(len(_Y3), int)),
      V,
    ),
    (
      "softmax_regression_objective",
      functools.partial(optimum.softmax_regression_objective, x_NxD=_XT, y_N=_Y3),
      dict(params={"w": np.zeros(3), "b": np.zeros(())}),
      V,
    ),
    (
      "logistic_regression_loss",
      functools.partial(models.logistic_regression_loss, x_NxD=_XT, y_N=_Y2),
      dict(params={"w": np.array(["a", "b", "c"]), "b": 0.0}),
      T,
    ),
    ("fit_logistic_regression", fit_l, dict(tol=-1.0), V),
    ("fit_logistic_regression", fit_l, dict(tol=0.0), V),
    ("fit_logistic_regression", fit_l, dict(l2=-1.0), V),
    ("fit_logistic_regression", fit_l, dict(max_iter=0), V),
    ("fit_logistic_regression", fit_l, dict(memory=0), V),
    ("fit_logistic_regression", fit_l, dict(warm_start=-1), V),
    ("fit_softmax_regression", fit_s, dict(num_classes=0), V),
    ("fit_softmax_regression", fit_s, dict(tol=np.nan), V),
    ("logistic_regression_optimum", opt_l, dict(tol=0.0), V),
    ("logistic_regression_optimum", opt_l, dict(max_iter=-1), V),
    ("logistic_regression_optimum", opt_l, dict(l2=-1.0), V),
    ("softmax_regression_optimum", opt_s, dict(num_classes=0), V),
    ("logistic_regression_objective", obj_l, dict(params={"w": np.zeros(4), "b": 0.0}), V),
    ("make_logistic_data", logistic, dict(seed=0, num_train=0), V),
    ("make_logistic_data", logistic, dict(seed=0, num_train=-5), V),
    ("make_logistic_data", logistic, dict(seed=0, num_features=0), V),
    ("make_logistic_data", logistic, dict(seed=0, num_test=-1), V),
    ("make_logistic_data", logistic, dict(seed=-1), V),
    ("make_logistic_data", logistic, dict(seed=0.5), T),
    ("make_logistic_data", logistic, dict(seed=0, weight_scale=-1.0), V),
    ("make_logistic_data", logistic, dict(seed=0, bias=np.nan), V),
    ("make_softmax_data", softmax, dict(seed=0, num_classes=1), V),
    ("make_softmax_data", softmax, dict(seed=0, num_train=0), V),
    ("load_breast_cancer", cancer, dict(test_fraction=1.5), V),
    ("load_breast_cancer", cancer, dict(test_fraction=0.0), V),
    ("load_breast_cancer", cancer, dict(test_fraction=0.001), V),  # a class missing
    ("load_breast_cancer", cancer, dict(test_fraction="0.2"), T),
    ("load_breast_cancer", cancer, dict(seed=-1), V),
    ("load_breast_cancer", cancer, dict(seed=2**40), V),
    ("load_digits", digits, dict(test_fraction=1.0), V),
    ("standardize", standardize, dict(x_test_MxD=_XT, x_train_NxD=nan_x), V),
    ("standardize", standardize, dict(x_train_NxD=_XT, x_test_MxD=_XT.astype(complex)), T),
    ("standardize", standardize, dict(x_train_NxD=_XT, x_test_MxD=short_x), V),
    ("feature_major", data.feature_major, dict(x_NxD=_XT[0]), V),
    ("feature_major", data.feature_major, dict(x_NxD=_XT.astype(str)), T),
  ]
  for fn, call, kwargs, error in rows:
    arg, value = list(kwargs.items())[-1]
    case = f"{fn}__{arg}_{re.sub(r'[^0-9A-Za-z.]+', '_', str(value)[:12])}"
    yield case, functools.partial(call, **kwargs), error, fn, arg
  # An optax.inject_hyperparams state holding a NaN rate (it trained to NaN parameters).
  injected = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  state = training.init_train_state(_LOGISTIC, injected)
  hyperparams = {**state.opt_state.hyperparams, "learning_rate": jnp.asarray(np.nan)}
  state = state._replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))
  run = functools.partial(training.train_full_batch, state, batch, loss_fn=loss, num_steps=1)
  arg = "state.opt_state.hyperparams['learning_rate']"
  yield (
    "train_full_batch__injected_nan",
    functools.partial(run, optimizer=injected),
    V,
    "train_full_batch",
    arg,
  )


def _training_cases():
  cases = [*_data_cases(), *_user_loss_cases(), *_setting_cases()]
  names = [c[0] for c in cases]
  duplicates = {n for n in names if names.count(n) > 1}
  # Rows that differ only in a value that prints alike get a counter.
  counts = {}
  for case, *rest in cases:
    if case in duplicates:
      counts[case] = counts.get(case, 0) + 1
      case = f"{case}_{counts[case]}"
    yield (case, *rest)


class BadInputTest(chex.TestCase):
  @parameterized.named_parameters(_params(_trace_time_cases()))
  def test_trace_time_error_names_the_argument(self, name, kwargs, error, arg):
    gap = _KNOWN_GAPS.get((name, self._testMethodName.split("__")[-1]))
    if gap:
      self.skipTest(f"known gap: {gap}")
    fn = getattr(xj, name)
    traced = [k for k, v in kwargs.items() if v is _TRACED]
    with self.assertRaises(error) as raised:
      if traced:
        jax.jit(lambda v: fn(**{**kwargs, traced[0]: v}))(2.0)
      else:
        fn(**kwargs)
    self.assertIn(name, str(raised.exception))
    self.assertIn(f"`{arg}`", str(raised.exception))

  @parameterized.named_parameters(_training_cases())
  def test_training_layer_error_names_the_function_and_argument(self, call, error, fn, arg):
    with self.assertRaises(error) as raised:
      call()
    message = str(raised.exception)
    self.assertTrue(message.startswith(f"{fn}: `{arg}`"), message)
    self.assertEqual(len(message.splitlines()), 1, message)

  @parameterized.named_parameters(_params(_value_cases()))
  def test_checked_rejects_bad_values(self, name, kwargs, arg, rule, index, value):
    pattern = (
      f"^{name}: `{re.escape(arg)}` {re.escape(rule)}.*; first offending \\w+ at "
      f"index {re.escape(index)}: [\\w ]+ = {re.escape(value)}$"
    )
    with self.assertRaisesRegex(checkify.JaxRuntimeError, pattern):
      xj.checked(getattr(xj, name))(**kwargs)

  @parameterized.named_parameters(_params(_zero_class_cases()))
  def test_checked_rejects_zero_classes(self, name, kwargs, arg):
    with self.assertRaisesRegex(ValueError, f"^{name}: `{arg}` has no class along axis"):
      xj.checked(getattr(xj, name))(**kwargs)

  @parameterized.named_parameters((name, name) for name in _VALID)
  def test_valid_edge_inputs_through_checked(self, name):
    kwargs = _VALID[name][0]
    fn = getattr(xj, name)
    got = xj.checked(fn)(**kwargs)
    # Passed through unchanged: checked(fn) runs the program of jax.jit(fn).
    np.testing.assert_array_equal(got, jax.jit(lambda kw: fn(**kw))(kwargs))
    expected = _reference(name, kwargs)
    self.assertEqual(got.dtype, np.float32)
    self.assertFalse(np.any(np.isnan(got)), "a valid input gave NaN")
    _assert_accurate(got, expected)

  @parameterized.named_parameters(_params(_edge_cases()))
  def test_valid_edge_inputs(self, name, kwargs):
    got = jax.jit(lambda kw: getattr(xj, name)(**kw))(kwargs)
    expected = _reference(name, kwargs)
    self.assertEqual(got.dtype, np.float32)  # float16/bfloat16 computed and returned in float32
    self.assertEqual(got.shape, expected.shape)
    self.assertFalse(np.any(np.isnan(got)), "a valid input gave NaN")
    _assert_accurate(got, expected)


if __name__ == "__main__":
  absltest.main()
