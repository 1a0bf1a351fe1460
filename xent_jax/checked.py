"""Runtime validation of the *values* passed to xent_jax's measures (SPEC §1, §5, §8).

Shapes, dtypes, ``axis``, ``where``, ``base`` and ``label_smoothing`` are checked by every
function at trace time. What cannot be known before the data arrives (a probability of 1.5,
a distribution summing to 0.97, a NaN, a label of -1, a ``+inf`` logit) is checked here with
:mod:`jax.experimental.checkify`, so that it also works under ``jax.jit`` and ``jax.vmap``.

``checked`` also wraps any function (a user's loss, a ``functools.partial``, a lambda): the
measures exported by ``xent_jax`` are :func:`checkable` wrappers that add their value checks
while a ``checked`` function is being traced (a ``jax.make_user_context`` flag, so that jit
caches tell a checked trace from a plain one) and cost nothing otherwise.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from xent_jax import _core
from xent_jax._static import Static
from xent_jax.classification import poly_loss_cross_entropy, sigmoid_focal_loss
from xent_jax.cross_entropy import (
  binary_cross_entropy,
  cross_entropy,
  cross_entropy_with_integer_labels,
  sigmoid_binary_cross_entropy,
  softmax_cross_entropy,
  softmax_cross_entropy_with_integer_labels,
)
from xent_jax.divergence import (
  generalized_kl_divergence,
  js_divergence,
  kl_divergence,
  kl_divergence_from_logits,
)
from xent_jax.entropy import (
  binary_entropy,
  binary_entropy_from_logits,
  entropy,
  entropy_from_logits,
)
from xent_jax.softmax import log_sigmoid, log_softmax, sigmoid, tanh_probability


class _Role(enum.Enum):
  """What an argument holds, and so which values are invalid for it."""

  PROBABILITY = enum.auto()  # elementwise probabilities: in [0, 1], no NaN
  DISTRIBUTION = enum.auto()  # in [0, 1], summing to 1 along `axis` over the `where` support
  LOGITS = enum.auto()  # softmax logits: no NaN, no +inf, a finite logit in every example
  BINARY_LOGITS = enum.auto()  # sigmoid logits: no NaN (±inf are the certain classes 0 and 1)
  LABELS = enum.auto()  # integer classes in [0, C) of the logits' class axis
  MEASURE = enum.auto()  # unnormalised non-negative masses: ≥ 0, no NaN


class _Spec(NamedTuple):
  roles: Mapping[str, _Role]
  padding: bool = False  # whether examples fully excluded by `where` are allowed (padding)


_P, _D, _Z, _B, _Y, _M = _Role  # short names for the table below
_SPECS: dict[Callable[..., jax.Array], _Spec] = {
  entropy: _Spec({"probs": _D}),
  entropy_from_logits: _Spec({"logits": _Z}),
  binary_entropy: _Spec({"p": _P}),
  binary_entropy_from_logits: _Spec({"logits": _B}),
  cross_entropy: _Spec({"p": _D, "q": _D}),
  # q first: the distribution's shape and class axis are the reference for the labels.
  cross_entropy_with_integer_labels: _Spec({"q": _D, "labels": _Y}, True),
  softmax_cross_entropy: _Spec({"logits": _Z, "targets": _D}),
  softmax_cross_entropy_with_integer_labels: _Spec({"logits": _Z, "labels": _Y}, True),
  binary_cross_entropy: _Spec({"p": _P, "q": _P}),
  sigmoid_binary_cross_entropy: _Spec({"logits": _B, "labels": _P}),
  kl_divergence: _Spec({"p": _D, "q": _D}),
  kl_divergence_from_logits: _Spec({"p_logits": _Z, "q_logits": _Z}),
  js_divergence: _Spec({"p": _D, "q": _D}),
  log_softmax: _Spec({"logits": _Z}),
  sigmoid: _Spec({"x": _B}),
  log_sigmoid: _Spec({"x": _B}),
  tanh_probability: _Spec({"x": _B}),
  sigmoid_focal_loss: _Spec({"logits": _B, "labels": _P}),
  poly_loss_cross_entropy: _Spec({"logits": _Z, "targets": _D}),
  generalized_kl_divergence: _Spec({"p": _M, "q": _M}),
}
_CLASS_AXIS_ROLES = (_Role.DISTRIBUTION, _Role.LOGITS)

# True while a checked function is traced: the measures then add their checks. Part of the
# jit cache key, so a function traced plainly before is traced again, with its checks.
_CHECKING = jax.make_user_context(default_value=False)


def checkable(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """The measure ``fn`` (one of :data:`_SPECS`), adding its value checks inside ``checked``.

  Outside a ``checked`` trace it is ``fn`` plus one flag lookup. This is what ``xent_jax``
  exports, so that ``checked(my_loss)`` checks the library calls inside ``my_loss``.
  """
  spec, signature = _SPECS[fn], inspect.signature(fn)

  @functools.wraps(fn)
  def measure(*args, **kwargs):
    out = fn(*args, **kwargs)  # first: trace-time errors (shapes, dtypes) are fn's own
    if _CHECKING.value:
      bound = signature.bind(*args, **kwargs)
      bound.apply_defaults()
      _add_checks(fn, spec, bound.arguments)
    return out

  return measure


def _add_checks(fn, spec: _Spec, arguments: Mapping[str, Any]) -> None:
  """The checkify checks of ``fn`` on its bound ``arguments`` (inside a checkify trace)."""
  _check_has_classes(fn.__name__, spec, arguments)
  arrays = {k: jnp.asarray(arguments[k]) for k in spec.roles}
  where = arguments.get("where")
  where = None if where is None else jnp.asarray(where)
  axis = arguments.get("axis")
  first = next(iter(spec.roles))
  axes = None if axis is None else _core.normalize_axis(axis, arrays[first].ndim, first, "")
  _check_values(fn, axes, axis, arrays, where, arguments.get("ignore_index"))


def _measure(fn):
  """The raw measure behind ``fn`` (itself or its :func:`checkable` wrapper), or None."""
  for candidate in (fn, getattr(fn, "__wrapped__", None)):
    try:
      if candidate in _SPECS:
        return candidate
    except TypeError:  # unhashable
      return None
  return None


def sum_tolerance(dtype: Any, num_classes: int) -> float:
  r"""The largest ``|Σ p - 1|`` that :func:`checked` accepts for a distribution.

  .. math::
    \mathrm{tol} = 2\,\varepsilon_{\mathrm{in}} + 8\,\varepsilon\,\sqrt{K}

  with K the number of classes along ``axis`` (masked ones included), ε_in the machine
  epsilon of the input dtype (rounding each entry to it moves the sum by at most ε_in / 2)
  and ε that of the dtype the sum is computed in (float32 for float16/bfloat16 inputs),
  for the rounding of the normalisation and of the sum (measured ≤ 1·ε·√K for softmax and
  ``x / x.sum()`` outputs up to K = 10⁵). For example float32: 3.3e-6 at K = 10, 3.0e-5
  at K = 1000; float64: 6.1e-15 at K = 10; bfloat16: 0.016.
  """
  dtype = jnp.dtype(dtype)
  compute = jnp.dtype(jnp.float32) if dtype in _core._LOW_PRECISION else dtype
  eps_in, eps = float(jnp.finfo(dtype).eps), float(jnp.finfo(compute).eps)
  return 2 * eps_in + 8 * eps * math.sqrt(num_classes)


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
  r"""Wraps a function so that invalid input *values* of xent_jax's measures raise an error.

  ``fn`` is a measure of xent_jax, or any function calling them: a user's loss, a
  ``functools.partial``, a lambda, a jitted function. Inside it, every call of a measure
  exported by ``xent_jax`` (``xj.cross_entropy``, ``xj.softmax_cross_entropy``, …; also the
  losses of :mod:`xent_jax.models`) is checked as below; the first failed check is raised
  as one line, with `` (inside NAME)`` naming ``fn``:

  >>> import jax.numpy as jnp
  >>> import xent_jax as xj
  >>> def my_loss(logits, p):
  ...   return xj.cross_entropy(p, jax.nn.softmax(logits)).mean()
  >>> xj.checked(my_loss)(jnp.zeros((2, 2)), jnp.array([[0.5, 0.5], [1.5, -0.5]]))
  ... # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  xent_jax.checked.CheckError: cross_entropy: `p` must lie in [0, 1]; ... (inside my_loss)

  The wrapped function has the signature of ``fn`` and the output of ``jax.jit(fn)`` (bit
  for bit: the same compiled ``fn``), and also checks, on the values, that

  - no float input holds NaN;
  - probabilities (``p``, ``q``, ``probs``, ``targets``, the ``labels`` of
    :func:`sigmoid_binary_cross_entropy`) lie in [0, 1];
  - distributions sum to 1 along ``axis`` over the classes included by ``where``, within
    :func:`sum_tolerance`: ``2·ε_in + 8·ε·√K`` (K classes, ε_in the machine epsilon of the
    input dtype, ε that of the computation dtype);
  - softmax logits are never ``+inf`` (``-inf`` is a class of probability 0) and every
    example has a finite logit; sigmoid logits may be ±inf (σ = 0 or 1), never NaN;
  - integer labels lie in ``[0, C)`` (negative ones included) and name a class included by
    ``where``, except in examples that ``where`` excludes entirely (padding);
  - ``where`` includes at least one class of every example (distribution functions);
  - ``base`` > 0 and != 1, shapes, dtypes and ``axis``: checked by ``fn`` at trace time.

  Entries excluded by ``where`` are never inspected, as they do not enter the result. The
  message names the function, the argument, the rule, and the first offending index (in
  row-major order) and value, e.g. ``kl_divergence: `q` must sum to 1 along axis -1
  (|sum - 1| ≤ 3.3e-06); first offending example at index (3,): sum = 0.97``.

  How it works: ``fn`` and a ``checkify.checkify`` of the value checks are compiled together
  by ``jax.jit`` (one program per shape, dtype and option values), which returns ``fn``'s
  output and a ``checkify.Error``. Eagerly, or under
  ``jax.vmap``/``jax.grad`` outside a jit, the error is raised at once as a
  ``jax.experimental.checkify.JaxRuntimeError`` (a ``ValueError``). Under an outer
  ``jax.jit`` (``jax.jit(checked(fn))`` or a jitted train step), the error is still raised,
  when the computation runs, by a host callback: XLA reports it as a
  ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``) whose message contains the same text.
  The checks cost one extra read of the inputs; use ``checked`` while debugging, or keep it.

  For a checked function the error is raised where it is called: eagerly, under
  ``jax.vmap``/``jax.grad``, and inside another ``checked`` function (put ``checked``
  outermost, e.g. ``checked(jax.jit(step))``, for a one-line error from a jitted step).
  Only under a plain outer ``jax.jit`` is the error left to the host callback above.

  Args:
    fn: one of the public measures of xent_jax (entropies, cross-entropies, divergences,
      ``log_softmax``, ``sigmoid``, ``log_sigmoid``, ``tanh_probability``), or any
      function that calls them.

  Returns:
    A function with the signature and docstring of ``fn`` that validates the values.

  >>> import jax.numpy as jnp
  >>> from xent_jax import checked, kl_divergence
  >>> safe_kl = checked(kl_divergence)
  >>> float(safe_kl(jnp.array([0.5, 0.5]), jnp.array([0.5, 0.5])))
  0.0
  >>> safe_kl(jnp.array([0.5, 0.5]), jnp.array([0.9, 0.2]))  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  xent_jax.checked.CheckError: kl_divergence: `q` must sum to 1 ...: sum = 1.1...
  """
  if not callable(fn):
    raise TypeError(f"checked: `fn` must be callable; got {fn!r:.80}.")
  measure = _measure(fn)
  if measure is None:
    return _checked_any(fn)
  given, fn, spec, signature = fn, measure, _SPECS[measure], inspect.signature(measure)

  @functools.wraps(given)
  def checked_fn(*args, **kwargs):
    if _CHECKING.value:  # inside another checked function: its checkify raises
      return checkable(fn)(*args, **kwargs)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    _check_has_classes(fn.__name__, spec, bound.arguments)
    # The checked roles and `where`, and any other array (`weights`): traced, not static.
    arrays = {
      k: v
      for k, v in bound.arguments.items()
      if k in spec.roles or k == "where" or (_is_array(v) and np.ndim(v) > 0)
    }
    options = tuple((k, _as_static(v)) for k, v in bound.arguments.items() if k not in arrays)
    try:
      hash(options)
      arrays = {k: None if v is None else jnp.asarray(v) for k, v in arrays.items()}
    except (TypeError, ValueError):
      fn(*args, **kwargs)  # raises the function's own error, which names the argument
      raise
    err, out = _run(fn, options, arrays)
    _raise_if_failed(err, fn.__name__)
    return out

  return checked_fn


def _check_has_classes(fn: str, spec: _Spec, arguments: Mapping[str, Any]) -> None:
  """A distribution over zero classes (a size-0 class axis) is an error, found statically.

  The functions themselves would fail inside ``jnp.max`` without naming the argument, or
  return 0 for the entropy of nothing. Any other invalid shape or axis is left to ``fn``.
  """
  if arguments.get("axis") is None:
    return
  for name, role in spec.roles.items():
    shape = np.shape(arguments[name])
    try:
      axes = _core.normalize_axis(arguments["axis"], len(shape), name, fn)
    except (TypeError, ValueError):
      return
    if role in _CLASS_AXIS_ROLES and any(shape[a] == 0 for a in axes):
      raise ValueError(f"{fn}: `{name}` has no class along axis {axes} (shape {shape}).")


def _checked_any(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``checked`` of a function that is not a measure: checkify of it, traced with the flag."""
  static_fn = Static(fn)
  name = getattr(
    inspect.unwrap(fn.func if isinstance(fn, functools.partial) else fn), "__name__", repr(fn)
  )

  @functools.wraps(fn)
  def checked_fn(*args, **kwargs):
    if _CHECKING.value:  # inside another checked function: its checkify raises
      return fn(*args, **kwargs)
    leaves, treedef = jax.tree.flatten((args, kwargs))
    # Arrays are traced; anything else (ints, strings, options) is static, by value.
    is_array = [isinstance(leaf, jax.Array | np.ndarray | np.generic) for leaf in leaves]
    arrays = [leaf for leaf, a in zip(leaves, is_array, strict=True) if a]
    static = tuple(None if a else Static(leaf) for leaf, a in zip(leaves, is_array, strict=True))
    err, out = _run_any(arrays, fn=static_fn, treedef=treedef, static=static)
    _raise_if_failed(err, name, f" (inside {name})")
    return out

  return checked_fn


@functools.partial(jax.jit, static_argnames=("fn", "treedef", "static"))
def _run_any(arrays, *, fn, treedef, static):
  def body(arrays):
    it = iter(arrays)
    leaves = [next(it) if s is None else s.value for s in static]
    args, kwargs = jax.tree.unflatten(treedef, leaves)
    with _CHECKING(True):
      return fn.value(*args, **kwargs)

  return checkify.checkify(body, errors=checkify.user_checks)(arrays)


class CheckError(checkify.JaxRuntimeError):
  """A failed value check of :func:`checked`: one line naming the function, the argument,
  the rule and the first offending index and value (a ``checkify.JaxRuntimeError``)."""


def _raise_if_failed(err: checkify.Error, name: str, where: str = "") -> None:
  leaves, treedef = jax.tree.flatten(err)
  if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
    # Under an outer transformation the verdict is only known when the computation runs: a
    # host callback raises it then (XLA wraps it in a jax.errors.JaxRuntimeError). Host
    # callbacks run on JAX's CPU backend; without one, say so now, in one line.
    _core.check_host_callbacks(
      f"checked({name})", "under jax.jit, jax.vmap or jax.grad a failed check is raised"
    )
    jax.debug.callback(functools.partial(_throw, treedef, where), *leaves)
  else:
    _throw(treedef, where, *leaves)


def _throw(treedef, where, *leaves) -> None:
  message = jax.tree.unflatten(treedef, leaves).get()
  if message is not None:
    # checkify appends " (`check` failed)"; the rule and the index already say what failed.
    raise CheckError(message.removesuffix(" (`check` failed)") + where)


class _QuietCheckFailures(logging.Filter):
  """Keeps jax.debug.callback from logging a traceback for a failed check: it is raised."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, CheckError)


logging.getLogger("jax._src.debugging").addFilter(_QuietCheckFailures())


def _as_static(value):
  """Options (axis, base, label_smoothing) as hashable jit-static values: lists to tuples."""
  if isinstance(value, list | tuple):
    return tuple(_as_static(v) for v in value)
  if (
    isinstance(value, np.ndarray | jax.Array)
    and value.shape == ()
    and not isinstance(value, jax.core.Tracer)
  ):
    return value.item()
  return value


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(fn, options, arrays) -> tuple[checkify.Error, jax.Array]:
  """fn and its value checks, compiled together: one program per shape and dtype."""
  options = dict(options)
  out = fn(**arrays, **options)  # every trace-time check (shapes, dtypes, base, ...) runs here
  where = arrays.pop("where", None)
  axis = options.get("axis")
  first = next(iter(_SPECS[fn].roles))  # (jit hands `arrays` back with its keys sorted)
  axes = None if axis is None else _core.normalize_axis(axis, arrays[first].ndim, first, "")
  run = functools.partial(_check_values, fn, axes, axis, ignore=options.get("ignore_index"))
  err, _ = checkify.checkify(run, errors=checkify.user_checks)(arrays, where)
  return err, out


def _is_array(value) -> bool:
  return isinstance(value, np.ndarray | jax.Array)


def _flatten_class_axes(x: jax.Array, axis) -> jax.Array:
  """The class axes of ``x`` moved to the end in the order given and flattened into one,
  as the integer-label losses do (a label is a flat index over them)."""
  given = tuple(int(a) % x.ndim for a in axis)
  batch = tuple(i for i in range(x.ndim) if i not in given)
  return x.transpose(batch + given).reshape(tuple(x.shape[i] for i in batch) + (-1,))


def _check_values(fn, axes, axis, arrays, where, ignore=None) -> None:
  """Adds one checkify check per rule, in argument order; the first failure is reported."""
  spec, name = _SPECS[fn], fn.__name__
  first = next(iter(spec.roles))
  labels = [arrays[a] for a, role in spec.roles.items() if role is _Role.LABELS]
  if labels and len(axes) > 1:  # integer labels index the flattened class axes
    if where is not None:
      where = _flatten_class_axes(jnp.broadcast_to(where, arrays[first].shape), axis)
    arrays = {**arrays, first: _flatten_class_axes(arrays[first], axis)}
    axes = (arrays[first].ndim - 1,)
  shape = arrays[first].shape
  mask = None if where is None else jnp.broadcast_to(where, shape)
  if ignore is not None and labels:  # skipped examples are padding: never inspected
    keep = jnp.broadcast_to(jnp.expand_dims(labels[0] != ignore, axes[0]), shape)
    mask = keep if mask is None else mask & keep
  if mask is not None and not spec.padding:
    _check(
      name,
      ~jnp.any(mask, axis=axes),
      jnp.sum(mask, axis=axes),
      "`where` must include at least one class of every example",
      "example",
      "included classes",
    )
  for arg, role in spec.roles.items():
    x = arrays[arg]
    if role is _Role.LABELS:
      _check_labels(name, x, arrays[first].shape[axes[0]], mask, axes[0], ignore)
      continue
    eps_dtype = x.dtype
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)  # 0/1 integer labels of sigmoid_binary_cross_entropy
    x = _core.as_float(x, arg, name)
    included = jnp.ones(x.shape, bool) if mask is None else mask
    _check(name, included & jnp.isnan(x), x, f"`{arg}` must not contain NaN")
    if role in (_Role.PROBABILITY, _Role.DISTRIBUTION):
      _check(name, included & ~((x >= 0) & (x <= 1)), x, f"`{arg}` must lie in [0, 1]")
    if role is _Role.MEASURE:
      _check(name, included & (x < 0), x, f"`{arg}` must be ≥ 0")
    # Examples that `where` excludes entirely are padding where the spec allows it.
    required = jnp.any(mask, axis=axes) if mask is not None and spec.padding else True
    if role is _Role.DISTRIBUTION:
      total = jnp.sum(_core.masked(x, mask), axis=axes)
      k = math.prod(x.shape[a] for a in axes)
      tol = sum_tolerance(eps_dtype, k)
      _check(
        name,
        required & (jnp.abs(total - 1) > tol),
        total,
        f"`{arg}` must sum to 1 along axis {axis!r} (|sum - 1| ≤ {tol:.2g})",
        "example",
        "sum",
      )
    if role is _Role.LOGITS:
      _check(
        name,
        included & (x == jnp.inf),
        x,
        f"`{arg}` must not be +inf (-inf is a class of probability 0)",
      )
      finite = jnp.any(included & (x > -jnp.inf), axis=axes)
      # Every example needs a class of positive probability; padding examples need none.
      _check(
        name,
        required & ~finite,
        jnp.max(jnp.where(included, x, -jnp.inf), axis=axes),
        f"`{arg}` must have a finite logit among the included classes of every example",
        "example",
        "max logit",
      )


def _check_labels(name, labels, num_classes, mask, axis, ignore=None) -> None:
  """Labels in [0, C) naming an included class, except in examples fully excluded (by
  ``where``, or by the label ``ignore``, the ``ignore_index`` of the integer-label loss)."""
  row_included = jnp.ones(labels.shape, bool) if mask is None else jnp.any(mask, axis=axis)
  skipped = "fully excluded by `where`"
  if ignore is not None:
    row_included &= labels != ignore
    skipped += f" or labelled ignore_index={ignore}"
  in_range = (labels >= 0) & (labels < num_classes)
  _check(
    name,
    row_included & ~in_range,
    labels,
    f"`labels` must be in [0, {num_classes}) except in examples {skipped}",
    "example",
    "label",
  )
  if mask is not None:
    safe = jnp.expand_dims(jnp.where(in_range, labels, 0), axis)
    label_included = jnp.squeeze(jnp.take_along_axis(mask, safe, axis=axis), axis)
    _check(
      name,
      row_included & in_range & ~label_included,
      labels,
      "`labels` must name a class included by `where`",
      "example",
      "label",
    )


def _check(fn, bad, values, rule, kind="entry", value_name="value") -> None:
  """checkify.check(not any(bad)) with the first offending index and value in the message."""
  if bad.size == 0:
    return
  flat = jnp.argmax(bad.ravel())  # the first True in row-major order
  # Unravelled with plain integer ops (flat ≥ 0): jnp.unravel_index's sign handling and
  # bounds clamping would triple the size of the compiled checks.
  as_int = functools.partial(jnp.asarray, dtype=flat.dtype)
  index = [
    jax.lax.rem(jax.lax.div(flat, as_int(math.prod(bad.shape[k + 1 :]))), as_int(bad.shape[k]))
    for k in range(bad.ndim)
  ]
  slots = ", ".join(["{}"] * bad.ndim) + ("," if bad.ndim == 1 else "")
  rule = rule.replace("{", "{{").replace("}", "}}")
  # float32 needs 8 digits to tell 1 + k·eps from 1; float64 and ints print exactly with {}.
  value_slot = "{:.8g}" if values.dtype == jnp.float32 else "{}"
  msg = f"{fn}: {rule}; first offending {kind} at index ({slots}): {value_name} = {value_slot}"
  checkify.check(~bad.ravel()[flat], msg, *index, values.ravel()[flat])
