"""Functions as jit-static arguments compared by value, not by identity.

``jax.jit`` caches a compiled program per value of each static argument, comparing them
with ``==``. A function compares by identity, so ``optax.adam(1e-3)`` built twice, a fresh
``functools.partial(loss, l2=0.1)`` or a lambda re-created in a loop each recompile the
whole run (1–5 s per call, measured). :class:`Static` wraps such an object with a key built
from what the object *does*, read when it is wrapped (at each call): for a Python function
its code, the values it closes over, its defaults and the module globals its code reads
(a sweep variable of a script or notebook is one); for a partial its function, arguments
and keywords; for a tuple of functions (an optax ``GradientTransformation``) its members.
Two objects with equal keys trace to the same program, so a cache hit on an equal key is
correct.

A function that reads something whose value cannot be compared (a list or a set, an
object without its own ``==``, a numpy array of more than 2^20 entries, which may all
change in place) is compared by identity as a whole, as ``jax.jit`` compares it: a new
function object traces again, the same object reuses its program (and, as under
``jax.jit``, sees such a change only if it retraces). Small numpy arrays are compared by
content, jax arrays (immutable) by identity.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import pathlib
import sysconfig
import types
from typing import Any

import jax
import numpy as np

_MAX_DEPTH = 12  # closures nest (optax chains of chains); deeper than this: identity
_MAX_ARRAY_SIZE = 64  # concrete arrays up to this size are compared by their bytes
_MAX_DIGEST_SIZE = 2**20  # numpy arrays up to this size by a digest of their bytes
# Functions of installed packages (and of xent_jax): their module globals are taken as
# constants (their closures and defaults are still read: optax's hyperparameters).
_LIBRARY_DIRS = tuple(
  {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
  | {str(pathlib.Path(__file__).resolve().parent)}
)


class _Identity:
  """Compares by ``is``; holds a reference so that its ``id`` stays unique."""

  __slots__ = ("obj",)

  def __init__(self, obj):
    self.obj = obj

  def __eq__(self, other):
    return isinstance(other, _Identity) and other.obj is self.obj

  def __hash__(self):
    return id(self.obj)


class _Mutable(Exception):
  """A function reads a value that cannot be compared: it is compared by identity."""


def value_key(obj: Any) -> Any:
  """A hashable key such that equal keys mean interchangeable objects under tracing."""
  return _Keys().key(obj, 0, inside=False)


class _Keys:
  """One :func:`value_key` computation: functions already keyed, and those in progress
  (a function that reaches itself through its globals)."""

  def __init__(self):
    self.done: dict[int, Any] = {}
    self.active: set[int] = set()

  def key(self, obj: Any, depth: int, inside: bool) -> Any:
    """``inside``: within what a function reads, where a value that cannot be compared
    raises :class:`_Mutable` (caught by the outermost function)."""
    if depth > _MAX_DEPTH:
      return _Identity(obj)
    key = functools.partial(self.key, depth=depth + 1, inside=inside)
    if obj is None or isinstance(obj, bool | int | str | bytes | type | types.ModuleType):
      return (type(obj), obj)
    if obj is _EMPTY_CELL:
      return _EMPTY_CELL
    if isinstance(obj, float):
      return (float, obj.hex())  # hex: -0.0 and 0.0 differ, every NaN equals itself
    if isinstance(obj, functools.partial):
      keywords = tuple((k, key(v)) for k, v in obj.keywords.items())
      return (functools.partial, key(obj.func), tuple(map(key, obj.args)), keywords)
    if isinstance(obj, types.FunctionType):
      return self.function(obj, depth, inside)
    if isinstance(obj, types.MethodType):  # its object by identity, as Python compares methods
      return (types.MethodType, key(obj.__func__), _Identity(obj.__self__))
    if isinstance(obj, tuple):  # NamedTuples (GradientTransformation) keep their type
      return (type(obj), tuple(map(key, obj)))
    if isinstance(obj, dict):
      return (dict, tuple((key(k), key(v)) for k, v in obj.items()))
    if isinstance(obj, np.ndarray | np.generic | jax.Array) and not isinstance(
      obj, jax.core.Tracer
    ):
      return self.array(obj, inside)
    try:
      hash(obj)
    except TypeError:  # lists, sets, dicts of settings objects: mutable
      return self.mutable(obj, inside)
    if type(obj).__eq__ is object.__eq__ and not (callable(obj) or isinstance(obj, enum.Enum)):
      return self.mutable(obj, inside)  # an object compared by identity: its state may change
    return (type(obj), obj)  # its own ==: frozen dataclasses by value

  def mutable(self, obj: Any, inside: bool) -> Any:
    if inside:
      raise _Mutable
    return _Identity(obj)

  def array(self, obj: Any, inside: bool) -> Any:
    size = np.size(obj)
    if size <= _MAX_ARRAY_SIZE:
      a = np.asarray(obj)
      return (type(obj), a.dtype.str, a.shape, a.tobytes())
    if isinstance(obj, jax.Array):
      return _Identity(obj)  # immutable
    if size <= _MAX_DIGEST_SIZE:
      a = np.ascontiguousarray(obj)
      digest = hashlib.blake2b(a.view(np.uint8).reshape(-1), digest_size=32).digest()
      return (type(obj), a.dtype.str, a.shape, digest)
    return self.mutable(obj, inside)

  def function(self, fn: types.FunctionType, depth: int, inside: bool) -> Any:
    if id(fn) in self.done:
      return self.done[id(fn)]
    if id(fn) in self.active:  # recursion through its globals or closure
      return _Identity(fn)
    self.active.add(id(fn))
    try:
      key = functools.partial(self.key, depth=depth + 1, inside=True)
      closure = tuple(key(_cell_contents(c)) for c in fn.__closure__ or ())
      defaults = key(fn.__defaults__), key(fn.__kwdefaults__)
      env = (closure, defaults, self.globals_read(fn, key))
    except _Mutable:
      if inside:
        raise
      return _Identity(fn)
    finally:
      self.active.discard(id(fn))
    out = (types.FunctionType, fn.__code__, _Identity(fn.__globals__), env)
    self.done[id(fn)] = out
    return out

  @staticmethod
  def globals_read(fn: types.FunctionType, key) -> tuple:
    """The keys of the module globals ``fn``'s code (and the code nested in it) names."""
    code = fn.__code__
    if code.co_filename.startswith(_LIBRARY_DIRS):
      return ()
    names = set()
    todo = [code]
    while todo:
      c = todo.pop()
      names.update(c.co_names)
      todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    g = fn.__globals__
    return tuple((name, key(g[name])) for name in sorted(names) if name in g)


def holds_nan(obj: Any) -> bool:
  """Whether a float NaN is among the values ``obj`` is keyed by (a setting in a closure:
  ``optax.sgd(float("nan"))`` trains silently to NaN parameters)."""
  todo = [value_key(obj)]
  while todo:
    key = todo.pop()
    if isinstance(key, tuple):
      if len(key) == 2 and key[0] is float and key[1] == "nan":
        return True
      todo.extend(key)
  return False


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
