"""Functions as jit-static arguments compared by value, not by identity.

``jax.jit`` caches a compiled program per value of each static argument, comparing them
with ``==``. A function compares by identity, so ``optax.adam(1e-3)`` built twice, a fresh
``functools.partial(loss, l2=0.1)`` or a lambda re-created in a loop each recompile the
whole run (1–5 s per call, measured). :class:`Static` wraps such an object with a key built
from what the object *does*: for a Python function its code and the values it closes
over, for a partial its function, arguments and keywords, for a tuple of functions (an
optax ``GradientTransformation``) its members. Two objects with equal keys trace to the
same program, so a cache hit on an equal key is correct.

What cannot be compared by value is compared by identity (and kept alive by the key, so
that an ``id`` is never reused): large arrays, objects without ``==``, cycles, and lists and
sets, which a function usually closes over to append to (a log, a counter), as JAX itself
treats a closure. Dicts are compared by value (optax closes over dicts of settings).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import jax
import numpy as np

_MAX_DEPTH = 12  # closures nest (optax chains of chains); deeper than this: identity
_MAX_ARRAY_SIZE = 64  # larger concrete arrays are compared by identity, not by content


class _Identity:
  """Compares by ``is``; holds a reference so that its ``id`` stays unique."""

  __slots__ = ("obj",)

  def __init__(self, obj):
    self.obj = obj

  def __eq__(self, other):
    return isinstance(other, _Identity) and other.obj is self.obj

  def __hash__(self):
    return id(self.obj)


def value_key(obj: Any, depth: int = 0) -> Any:
  """A hashable key such that equal keys mean interchangeable objects under tracing."""
  if depth > _MAX_DEPTH:
    return _Identity(obj)
  key = functools.partial(value_key, depth=depth + 1)
  if obj is None or isinstance(obj, bool | int | str | bytes | type | types.ModuleType):
    return (type(obj), obj)
  if isinstance(obj, float):
    return (float, obj.hex())  # hex: -0.0 and 0.0 differ, every NaN equals itself
  if isinstance(obj, functools.partial):
    keywords = tuple((k, key(v)) for k, v in obj.keywords.items())
    return (functools.partial, key(obj.func), tuple(map(key, obj.args)), keywords)
  if isinstance(obj, types.FunctionType):
    closure = tuple(key(_cell_contents(c)) for c in obj.__closure__ or ())
    defaults = key(obj.__defaults__), key(obj.__kwdefaults__)
    return (types.FunctionType, obj.__code__, _Identity(obj.__globals__), closure, defaults)
  if isinstance(obj, types.MethodType):
    return (types.MethodType, key(obj.__func__), key(obj.__self__))
  if isinstance(obj, tuple):  # NamedTuples (GradientTransformation) keep their type
    return (type(obj), tuple(map(key, obj)))
  if isinstance(obj, dict):
    return (dict, tuple((key(k), key(v)) for k, v in obj.items()))
  if isinstance(obj, np.ndarray | np.generic | jax.Array) and not isinstance(obj, jax.core.Tracer):
    if np.size(obj) <= _MAX_ARRAY_SIZE:
      a = np.asarray(obj)
      return (type(obj), a.dtype.str, a.shape, a.tobytes())
    return _Identity(obj)
  try:
    hash(obj)
  except TypeError:
    return _Identity(obj)
  return (type(obj), obj)  # its own ==: frozen dataclasses by value, the rest by identity


_EMPTY_CELL = object()


def _cell_contents(cell):
  try:
    return cell.cell_contents
  except ValueError:  # a cell not yet assigned (a function referring to itself)
    return _EMPTY_CELL


class Static:
  """A jit-static wrapper of ``value`` that hashes and compares by :func:`value_key`."""

  __slots__ = ("value", "_key", "_hash")

  def __init__(self, value: Any):
    self.value = value
    self._key = value_key(value)
    self._hash = hash(self._key)

  def __eq__(self, other):
    return isinstance(other, Static) and self._hash == other._hash and self._key == other._key

  def __hash__(self):
    return self._hash

  def __repr__(self):
    return f"Static({self.value!r})"
