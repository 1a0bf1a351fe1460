"""What a public measure is: its argument roles, the value checks they imply, and a registry.

Nothing here is public API. A measure of xent_jax (an entropy, a cross-entropy, a
divergence, ``log_softmax``, ...) is defined once, in its module, by one decorator::

  @measure(logits=Role.LOGITS, targets=Role.DISTRIBUTION)
  def softmax_cross_entropy(logits, targets, axis=-1, *, where=None, ...): ...

The decorator records what each array argument holds (its :class:`Role`) in
:data:`REGISTRY`, and returns the function wrapped so that, while
:func:`xent_jax.checked` traces a function, each call adds the checkify checks of its roles
(a probability of 1.5, a distribution summing to 0.97, a NaN, a label of -1, a ``+inf``
logit). Outside a ``checked`` trace the wrapper costs one flag lookup.

Everything that lists the measures follows from the registry: ``checked`` reads the roles
from it, and the tests that cover every public measure (bad inputs, the transform table,
the README's copy of it) iterate it or fail naming the measure they miss.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from xent_jax import _core


class Role(enum.Enum):
  """What an argument of a measure holds, and so which values are invalid for it."""

  PROBABILITY = enum.auto()  # elementwise probabilities: in [0, 1], no NaN
  DISTRIBUTION = enum.auto()  # in [0, 1], summing to 1 along `axis` over the `where` support
  LOGITS = enum.auto()  # softmax logits: no NaN, no +inf, a finite logit in every example
  BINARY_LOGITS = enum.auto()  # sigmoid logits: no NaN (±inf are the certain classes 0 and 1)
  LABELS = enum.auto()  # integer classes in [0, C), C the primary's class axis or `num_classes`
  MEASURE = enum.auto()  # unnormalised non-negative masses: ≥ 0, no NaN
  # The roles of a measure whose class axis is implicit (see `measure`'s `num_classes`):
  FEATURES = enum.auto()  # per example, trailing feature axes (hidden states): finite
  PARAMETER = enum.auto()  # shared by every example (an output projection, a bias): finite
  WEIGHTS = enum.auto()  # per example loss weights: finite, ≥ 0


# Roles whose argument has a class axis (`axis`) that must not be empty.
_CLASS_AXIS_ROLES = (Role.DISTRIBUTION, Role.LOGITS)


class MeasureSpec(NamedTuple):
  """A measure as :func:`measure` defined it."""

  fn: Callable[..., jax.Array]  # the function as written, without the checks
  exported: Callable[..., jax.Array]  # fn with its checks inside `checked`: what xent_jax exports
  roles: Mapping[str, Role]  # its array arguments, the primary one (shapes, class axis) first
  allow_padding: bool  # whether an example that `where` excludes entirely is valid
  # C from the bound arguments where no argument holds a class axis (the fused loss), else None
  num_classes: Callable[[Mapping[str, Any]], int] | None = None

  @property
  def name(self) -> str:
    return self.fn.__name__

  @property
  def primary(self) -> str:
    """The argument whose shape and class axis the others are checked against."""
    return next(iter(self.roles))


# Every public measure of SPEC §1 by name, in the order their modules define them (a
# measure with `num_classes`, whose arguments the roles alone do not describe, is not here).
REGISTRY: dict[str, MeasureSpec] = {}
# The spec of each defined function and of its checkable wrapper.
_SPEC_OF: dict[Callable[..., Any], MeasureSpec] = {}

# True while a checked function is traced: the measures then add their checks. Part of the
# jit cache key, so a function traced plainly before is traced again, with its checks.
CHECKING = jax.make_user_context(default_value=False)


def measure(
  *,
  allow_padding: bool = False,
  num_classes: Callable[[Mapping[str, Any]], int] | None = None,
  **roles: Role,
):
  """Defines a public measure: records the ``roles`` of its array arguments.

  Args:
    allow_padding: whether an example that ``where`` excludes entirely is valid (a padding
      example of an integer-label loss) rather than an error.
    num_classes: for a measure whose class axis is implicit (the fused loss: its logits
      ``hidden @ weight`` are never formed), the number of classes C as a function of the
      bound arguments. Its examples are then the entries of its ``LABELS`` argument,
      ``where`` and ``ignore_index`` exclude examples, and its other arguments are per
      example (``FEATURES``, ``WEIGHTS``) or shared by all (``PARAMETER``). Such a measure
      is checkable but not in :data:`REGISTRY`.
    **roles: the :class:`Role` of each array argument, by parameter name. The first is the
      primary argument: the others' shapes and the labels' class axis refer to it.

  Returns:
    A decorator. ``measure(...)(fn)`` is ``fn`` that, inside a ``checked`` trace, also adds
    the value checks of its roles; :data:`REGISTRY` holds its spec under ``fn.__name__``.
  """
  if not roles or not all(isinstance(r, Role) for r in roles.values()):
    raise TypeError(f"measure: give each array argument a Role, got {roles!r}.")

  def define(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    signature = inspect.signature(fn)
    unknown = sorted(set(roles) - set(signature.parameters))
    if unknown:
      raise TypeError(f"measure: {fn.__name__} has no parameter {', '.join(unknown)}.")
    if fn.__name__ in REGISTRY:
      raise ValueError(f"measure: {fn.__name__} is defined twice.")

    @functools.wraps(fn)
    def checkable(*args, **kwargs):
      if not CHECKING.value:
        return fn(*args, **kwargs)
      # A measure that fn calls is an internal step, not the user's call: unchecked.
      with CHECKING(False):
        out = fn(*args, **kwargs)  # first: trace-time errors (shapes, dtypes) are fn's own
      bound = signature.bind(*args, **kwargs)
      bound.apply_defaults()
      add_checks(spec, bound.arguments)
      return out

    spec = MeasureSpec(fn, checkable, dict(roles), allow_padding, num_classes)
    if num_classes is None:
      REGISTRY[fn.__name__] = spec
    _SPEC_OF[fn] = _SPEC_OF[checkable] = spec
    return checkable

  return define


def spec_of(fn: Any) -> MeasureSpec | None:
  """The spec of ``fn`` (a measure, its checkable wrapper, or a ``functools.wraps`` of
  either), or None when ``fn`` is not a measure."""
  for candidate in (fn, getattr(fn, "__wrapped__", None)):
    try:
      spec = _SPEC_OF.get(candidate)
    except TypeError:  # unhashable
      return None
    if spec is not None:
      return spec
  return None


def add_checks(spec: MeasureSpec, arguments: Mapping[str, Any]) -> None:
  """The checkify checks of a call on its bound ``arguments`` (inside a checkify trace)."""
  if spec.num_classes is not None:
    check_example_values(spec, arguments)
    return
  check_has_classes(spec, arguments)
  arrays = {k: jnp.asarray(arguments[k]) for k in spec.roles}
  where = arguments.get("where")
  where = None if where is None else jnp.asarray(where)
  axis = arguments.get("axis")
  ndim = arrays[spec.primary].ndim
  axes = None if axis is None else _core.normalize_axis(axis, ndim, spec.primary, "")
  check_values(spec, axes, axis, arrays, where, arguments.get("ignore_index"))


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
  compute = jnp.dtype(jnp.float32) if dtype in _core.LOW_PRECISION else dtype
  eps_in, eps = float(jnp.finfo(dtype).eps), float(jnp.finfo(compute).eps)
  return 2 * eps_in + 8 * eps * math.sqrt(num_classes)


def check_has_classes(spec: MeasureSpec, arguments: Mapping[str, Any]) -> None:
  """A distribution over zero classes (a size-0 class axis) is an error, found statically.

  The functions themselves would fail inside ``jnp.max`` without naming the argument, or
  return 0 for the entropy of nothing. Any other invalid shape or axis is left to the
  function.
  """
  if arguments.get("axis") is None:
    return
  for name, role in spec.roles.items():
    shape = np.shape(arguments[name])
    try:
      axes = _core.normalize_axis(arguments["axis"], len(shape), name, spec.name)
    except (TypeError, ValueError):
      return
    if role in _CLASS_AXIS_ROLES and any(shape[a] == 0 for a in axes):
      raise ValueError(f"{spec.name}: `{name}` has no class along axis {axes} (shape {shape}).")


def _flatten_class_axes(x: jax.Array, axis) -> jax.Array:
  """The class axes of ``x`` moved to the end in the order given and flattened into one,
  as the integer-label losses do (a label is a flat index over them)."""
  given = tuple(int(a) % x.ndim for a in axis)
  batch = tuple(i for i in range(x.ndim) if i not in given)
  return x.transpose(batch + given).reshape(tuple(x.shape[i] for i in batch) + (-1,))


def check_values(spec: MeasureSpec, axes, axis, arrays, where, ignore=None) -> None:
  """Adds one checkify check per rule, in argument order; the first failure is reported."""
  name, primary = spec.name, spec.primary
  arrays = {  # narrow integer labels widened, as the measures do (no wrap against C)
    a: _core.as_labels(x, a, name) if spec.roles.get(a) is Role.LABELS else x
    for a, x in arrays.items()
  }
  labels = [arrays[a] for a, role in spec.roles.items() if role is Role.LABELS]
  if labels and len(axes) > 1:  # integer labels index the flattened class axes
    if where is not None:
      where = _flatten_class_axes(jnp.broadcast_to(where, arrays[primary].shape), axis)
    arrays = {**arrays, primary: _flatten_class_axes(arrays[primary], axis)}
    axes = (arrays[primary].ndim - 1,)
  shape = arrays[primary].shape
  mask = None if where is None else jnp.broadcast_to(where, shape)
  if ignore is not None and labels:  # skipped examples are padding: never inspected
    keep = jnp.broadcast_to(jnp.expand_dims(labels[0] != ignore, axes[0]), shape)
    mask = keep if mask is None else mask & keep
  if mask is not None and not spec.allow_padding:
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
    if role is Role.LABELS:
      rows = None if mask is None else jnp.any(mask, axis=axes[0])
      _check_labels(name, x, arrays[primary].shape[axes[0]], rows, ignore, mask, axes[0])
      continue
    input_dtype = x.dtype
    included = jnp.ones(x.shape, bool) if mask is None else mask
    x = _check_entries(name, arg, role, x, included)
    # Examples that `where` excludes entirely are padding where the spec allows it.
    required = jnp.any(mask, axis=axes) if mask is not None and spec.allow_padding else True
    if role is Role.DISTRIBUTION:
      total = jnp.sum(_core.masked(x, mask), axis=axes)
      tol = sum_tolerance(input_dtype, math.prod(x.shape[a] for a in axes))
      _check(
        name,
        required & (jnp.abs(total - 1) > tol),
        total,
        f"`{arg}` must sum to 1 along axis {axis!r} (|sum - 1| ≤ {tol:.2g})",
        "example",
        "sum",
      )
    if role is Role.LOGITS:
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


def check_example_values(spec: MeasureSpec, arguments: Mapping[str, Any]) -> None:
  """The checks of a measure whose class axis is implicit (``spec.num_classes``).

  Its examples are the entries of its labels. An example that ``where`` excludes, or that
  is labelled ``ignore_index``, is never inspected: its label, features and weight do not
  enter the result. ``PARAMETER`` arguments are inspected whole: each entry enters every
  included example's logits, and the gradient even when every example is excluded.
  Nothing of the size examples × classes is formed.
  """
  name = spec.name
  label_arg = next(a for a, role in spec.roles.items() if role is Role.LABELS)
  labels = _core.as_labels(arguments[label_arg], label_arg, name)
  where, ignore = arguments.get("where"), arguments.get("ignore_index")
  rows = None if where is None else jnp.broadcast_to(jnp.asarray(where), labels.shape)
  included = jnp.ones(labels.shape, bool) if rows is None else rows
  if ignore is not None:
    included = included & (labels != ignore)
  for arg, role in spec.roles.items():
    if arguments[arg] is None:  # an optional argument not given (a bias, token weights)
      continue
    if role is Role.LABELS:
      _check_labels(name, labels, spec.num_classes(arguments), rows, ignore)
      continue
    x = jnp.asarray(arguments[arg])
    if role is Role.PARAMETER:
      mask = jnp.ones(x.shape, bool)
    else:  # per example, [...] or [..., D]: an example's entries share its inclusion
      x = jnp.broadcast_to(x, labels.shape + x.shape[labels.ndim :])
      mask = jnp.expand_dims(included, tuple(range(labels.ndim, x.ndim)))
      mask = jnp.broadcast_to(mask, x.shape)
    _check_entries(name, arg, role, x, mask)


def _check_entries(name, arg, role, x, included) -> jax.Array:
  """The rules of ``role`` on each entry of ``x`` where ``included``; returns ``x`` as
  the measures compute with it (float32 at least)."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)  # 0/1 integer labels of sigmoid_binary_cross_entropy
  x = _core.as_float(x, arg, name)
  _check(name, included & jnp.isnan(x), x, f"`{arg}` must not contain NaN")
  if role in (Role.PROBABILITY, Role.DISTRIBUTION):
    _check(name, included & ~((x >= 0) & (x <= 1)), x, f"`{arg}` must lie in [0, 1]")
  if role in (Role.MEASURE, Role.WEIGHTS):
    _check(name, included & (x < 0), x, f"`{arg}` must be ≥ 0")
  if role in (Role.FEATURES, Role.PARAMETER, Role.WEIGHTS):
    _check(name, included & jnp.isinf(x), x, f"`{arg}` must be finite")
  return x


def _check_labels(name, labels, num_classes, rows, ignore=None, mask=None, axis=None) -> None:
  """Labels in [0, C) naming an included class, except in the examples skipped: those
  where ``rows`` is False (excluded entirely by ``where``) and those labelled ``ignore``
  (the ``ignore_index`` of an integer-label loss). ``mask``: ``where`` over the classes,
  along ``axis``, or None."""
  row_included = jnp.ones(labels.shape, bool) if rows is None else rows
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
