"""Checks at the public entries of the training layer (models, training, fit, optimum, data).

Every check raises a ``ValueError`` or ``TypeError`` whose message starts with the public
function and names the argument, e.g. ``fit_logistic_regression: `y_N` must lie in [0, 1];
found y_N[3] = 2``. Shapes and dtypes are checked always (also on tracers, at trace time);
values only when they are concrete (under a caller's ``jax.jit`` they are not known, and
nothing is checked in the compiled loop).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """Whether the values of ``x`` (any pytree) are known, i.e. it holds no tracer."""
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def count(fn: str, name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
  """An integer (not a bool) ``>= minimum`` (and ``<= maximum``)."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise TypeError(f"{fn}: `{name}` must be an integer; got {name}={value!r}.")
  if value < minimum:
    raise ValueError(f"{fn}: `{name}` must be >= {minimum}; got {name}={value}.")
  if maximum is not None and value > maximum:
    raise ValueError(f"{fn}: `{name}` must be <= {maximum}; got {name}={value}.")
  return int(value)


def real(
  fn: str,
  name: str,
  value: Any,
  *,
  low: float = -math.inf,
  high: float = math.inf,
  open_low: bool = False,
  open_high: bool = False,
) -> None:
  """A finite real scalar in the interval ``[low, high]`` (ends open as asked).

  A traced value (a hyperparameter swept under the caller's ``jax.jit``) passes unseen.
  """
  if isinstance(value, jax.core.Tracer):
    return
  dtype = np.asarray(value).dtype if not isinstance(value, bool) else np.dtype(bool)
  if np.shape(value) != () or dtype.kind not in "iuf":
    raise TypeError(f"{fn}: `{name}` must be a real number; got {name}={value!r}.")
  v = float(value)
  below = v <= low if open_low else v < low
  above = v >= high if open_high else v > high
  if not math.isfinite(v) or below or above:
    raise ValueError(
      f"{fn}: `{name}` must be {_range_text(low, high, open_low, open_high)}; got {name}={v!r}."
    )


def _range_text(low, high, open_low, open_high) -> str:
  if math.isinf(low) and math.isinf(high):
    return "finite"
  if math.isinf(high):
    return f"finite and {'>' if open_low else '>='} {low:g}"
  return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def is_real_dtype(dtype) -> bool:
  """Bool, integer or floating (bfloat16 included): a dtype the training layer computes with."""
  dtype = np.dtype(dtype)
  return dtype.kind in "biuf" or dtype == jnp.bfloat16


def array(fn: str, name: str, x: Any, *, ndim: int | None = None, what: str = "") -> Any:
  """``x`` as an array (numpy stays numpy, JAX stays JAX) of real or bool dtype, rank ``ndim``."""
  if not isinstance(x, np.ndarray | jax.Array):
    try:
      x = np.asarray(x)
    except (TypeError, ValueError) as e:
      raise TypeError(f"{fn}: `{name}` must be an array{what}; got {type(x).__name__}.") from e
  if not is_real_dtype(x.dtype):
    raise TypeError(f"{fn}: `{name}` must hold real numbers{what}; got {name}.dtype={x.dtype}.")
  if ndim is not None and x.ndim != ndim:
    raise ValueError(f"{fn}: `{name}` must have rank {ndim}{what}; got {name}.shape={x.shape}.")
  return x


def values_in(
  fn: str, name: str, x: Any, *, low: float = -math.inf, high: float = math.inf, rule: str = ""
) -> None:
  """Every entry finite and in ``[low, high]``, else a ValueError at the first one (row-major).

  Concrete values only. A numpy array, or a JAX array in this process's CPU memory (read
  as a view: no copy, no compilation), is checked with one sum first (no temporary the size
  of X), element by element only if that sum is not finite or a bound is finite. Any other
  JAX array (an accelerator's, or sharded over hosts) is reduced where it lives by one
  small compiled program; only the verdict comes back.
  """
  if not is_concrete(x) or np.size(x) == 0 or x.dtype == bool:
    return
  on_host = not isinstance(x, jax.Array) or (
    x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())
  )
  if not on_host:  # an accelerator's array: reduce it there, bring back only the verdict
    with jax.ensure_compile_time_eval():  # concrete data inside a caller's trace: run it now
      bad, index, value = (np.asarray(v) for v in _first_violation(x, low, high))
  else:
    x = np.asarray(x)  # a CPU jax.Array: a view, no copy and no compilation
    unbounded = math.isinf(low) and math.isinf(high)
    if unbounded and (x.dtype.kind in "iu" or np.isfinite(np.sum(x))):
      return  # a finite sum has finite terms (an overflowing one is looked at below)
    with np.errstate(invalid="ignore"):
      flat = x.reshape(-1)
      bad_N = ~(np.isfinite(flat) & (flat >= low) & (flat <= high))
    index = int(np.argmax(bad_N))
    bad, value = bad_N[index], flat[index]
  if bad:
    where = np.unravel_index(int(index), np.shape(x))
    at = ", ".join(map(str, where))
    rule = rule or "must be finite"
    raise ValueError(f"{fn}: `{name}` {rule}; found {name}[{at}] = {value}.")


@jax.jit
def _first_violation(x, low, high):
  flat = x.reshape(-1)
  bad = ~(jnp.isfinite(flat) & (flat >= low) & (flat <= high))
  index = jnp.argmax(bad)
  return bad[index], index, flat[index]


def regression_data(fn: str, x_NxD: Any, y_N: Any, num_classes: int | None = None):
  """(x, y) of a regression solver, checked: a non-empty ``[N, D]`` x of finite reals; y of
  shape ``[N]``, in [0, 1] (``num_classes`` None) or integer classes in ``[0, K)``."""
  if hasattr(x_NxD, "x_DxN"):  # data.FeatureMajor (not imported here: data imports us)
    raise TypeError(
      f"{fn}: `x_NxD` must be an [N, D] array; got a FeatureMajor (pass its x_DxN.T: the "
      "solvers read rows)."
    )
  x = array(fn, "x_NxD", x_NxD, ndim=2, what=" [N, D]")
  y = array(fn, "y_N", y_N)
  if x.shape[0] == 0:
    raise ValueError(f"{fn}: `x_NxD` must be a non-empty [N, D] array; got shape {x.shape}.")
  if y.shape != x.shape[:1]:
    raise ValueError(
      f"{fn}: `y_N` must have shape ({x.shape[0]},) to match `x_NxD`; got {y.shape}."
    )
  values_in(fn, "x_NxD", x)
  if num_classes is None:
    values_in(fn, "y_N", y, low=0, high=1, rule="must lie in [0, 1]")
    return x, y
  if y.dtype.kind not in "iu":
    raise TypeError(f"{fn}: `y_N` must hold integer class labels; got y_N.dtype={y.dtype}.")
  rule = f"must be a class label in [0, {num_classes})"
  values_in(fn, "y_N", y, low=0, high=num_classes - 1, rule=rule)
  return x, y


def prng_key(fn: str, name: str, key: Any, *, ndim: int = 0) -> None:
  """A typed PRNG key array of rank ``ndim`` (``jax.random.key``), or raw uint32 keys
  ``[..., 2]`` (``jax.random.PRNGKey``); an integer seed is refused, as ``jax.random`` does."""
  dtype, shape = getattr(key, "dtype", None), np.shape(key) if hasattr(key, "shape") else None
  typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
  raw = dtype == np.uint32 and shape is not None and len(shape) == ndim + 1 and shape[-1] == 2
  if not ((typed and len(shape) == ndim) or raw):
    want = "a PRNG key, e.g. jax.random.key(0)" if ndim == 0 else "[S] PRNG keys, e.g. "
    want += "" if ndim == 0 else "jax.random.split(jax.random.key(0), S)"
    got = f"shape {shape}, dtype {dtype}" if dtype is not None else type(key).__name__
    raise TypeError(f"{fn}: `{name}` must be {want}; got {got}.")


def callable_(fn: str, name: str, value: Any, *, optional: bool = False) -> None:
  if not (callable(value) or (optional and value is None)):
    raise TypeError(f"{fn}: `{name}` must be callable; got {name}={value!r:.80}.")
