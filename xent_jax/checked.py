"""Runtime validation of the *values* passed to xent_jax's measures (SPEC §1, §5, §8).

Shapes, dtypes, ``axis``, ``where``, ``base`` and ``label_smoothing`` are checked by every
function at trace time. What cannot be known before the data arrives (a probability of 1.5,
a distribution summing to 0.97, a NaN, a label of -1, a ``+inf`` logit) is checked here with
:mod:`jax.experimental.checkify`, so that it also works under ``jax.jit`` and ``jax.vmap``.

``checked`` also wraps any function (a user's loss, a ``functools.partial``, a lambda): each
measure of ``xent_jax`` is defined with the ``@measure`` decorator of
:mod:`xent_jax._measures`, which records the roles of its arguments (probabilities,
distributions, logits, labels) and makes it add their value checks while a ``checked``
function is being traced (a ``jax.make_user_context`` flag, so that jit caches tell a
checked trace from a plain one); otherwise they cost one flag lookup.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from xent_jax import _core, _measures
from xent_jax._measures import Role, sum_tolerance
from xent_jax._static import Static

__all__ = ["CheckError", "checked", "sum_tolerance"]


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
  - :func:`linear_softmax_cross_entropy`: labels in ``[0, V)`` (V = ``weight.shape[1]``),
    finite ``hidden`` rows and finite, non-negative ``weights`` for the tokens included
    (an excluded or ``ignore_index`` token is never inspected, as it never enters the
    result); ``weight`` and ``bias`` finite throughout. Nothing of size N × V is formed;
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
      ``log_softmax``, ``sigmoid``, ``log_sigmoid``, ``tanh_probability``,
      ``linear_softmax_cross_entropy``), or any function that calls them.

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
  spec = _measures.spec_of(fn)
  if spec is None:
    return _checked_any(fn)
  given, fn, signature = fn, spec.fn, inspect.signature(spec.fn)

  @functools.wraps(given)
  def checked_fn(*args, **kwargs):
    if _measures.CHECKING.value:  # inside another checked function: its checkify raises
      return spec.exported(*args, **kwargs)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    _measures.check_has_classes(spec, bound.arguments)
    # The checked roles and `where`, and any other array (`weights`): traced, not static.
    arrays = {
      k: v
      for k, v in bound.arguments.items()
      if k in spec.roles or k == "where" or (_is_array(v) and np.ndim(v) > 0)
    }
    options = tuple((k, _as_static(v)) for k, v in bound.arguments.items() if k not in arrays)
    try:
      hash(options)
      arrays = {k: None if v is None else jnp.asarray(_host(spec, k, v)) for k, v in arrays.items()}
    except (TypeError, ValueError):
      fn(*args, **kwargs)  # raises the function's own error, which names the argument
      raise
    err, out = _run(fn, options, arrays)
    _raise_if_failed(err, fn.__name__)
    return out

  return checked_fn


def _host(spec: _measures.MeasureSpec, name: str, value: Any) -> Any:
  """An argument before it becomes a JAX array: 64-bit labels clipped, not wrapped (x64 off)."""
  return _core.clip_host_labels(value) if spec.roles.get(name) is Role.LABELS else value


def _name(fn: Callable[..., Any]) -> str:
  """The name of the function under wrappers and partials (``jax.jit(partial(step, ...))``
  is ``step``; its repr was the whole partial, with every keyword)."""
  inner = fn
  for _ in range(16):
    inner = inspect.unwrap(inner)
    if not isinstance(inner, functools.partial):
      break
    inner = inner.func
  return getattr(inner, "__name__", None) or type(fn).__name__


def _checked_any(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``checked`` of a function that is not a measure: checkify of it, traced with the flag."""
  static_fn = Static(fn)
  name = _name(fn)

  @functools.wraps(fn)
  def checked_fn(*args, **kwargs):
    if _measures.CHECKING.value:  # inside another checked function: its checkify raises
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
    with _measures.CHECKING(True):
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
  spec = _measures.spec_of(fn)

  def checks(arrays):  # the options stay static: only the arrays are traced by checkify
    _measures.add_checks(spec, {**arrays, **options})

  err, _ = checkify.checkify(checks, errors=checkify.user_checks)(arrays)
  return err, out


def _is_array(value) -> bool:
  return isinstance(value, np.ndarray | jax.Array)
