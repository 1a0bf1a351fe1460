"""Seeded test grids for the accuracy tests (SPEC §2): extreme logits, -inf, exact 0 and 1.

Every grid is built in float64 with numpy and rounded once to the dtype under test, so the
reference (tests/library/_mp_reference.py) sees exactly the values the library sees.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Each dtype's grids run in one mode of the suite (`make test` runs both): float32 with
# x64 off, float64 with x64 on (float64 arrays silently become float32 with x64 off).
# Float32 inputs are computed in float32 in either mode: transforms_test's
# Float32UnderX64Test checks that no function or derivative forms a float64 value from
# float32 inputs when x64 is on, so the float32 grids would repeat the same arithmetic.
DTYPES = (np.float64,) if jax.config.jax_enable_x64 else (np.float32,)

# Largest logit magnitude of the grids (SPEC §2): 80 in float32, 700 in float64.
MAX_LOGIT = {np.dtype(np.float32): 80.0, np.dtype(np.float64): 700.0}

# Class counts of the reduction grids; the large ones hold very few rows (mpmath is slow).
CLASS_COUNTS = (2, 3, 10, 1000, 32000)


def dtype_params(**extra_axes) -> list[dict]:
  """named_parameters over DTYPES × the given {name: values} axes."""
  params = [{"testcase_name": np.dtype(d).name, "dtype": d} for d in DTYPES]
  for key, values in extra_axes.items():
    params = [
      {**p, "testcase_name": f"{p['testcase_name']}_{key}{v}", key: v}
      for p in params
      for v in values
    ]
  return params


def _margins(dtype) -> list[float]:
  m = [1e-6, 1e-3, 0.5, 1.0, 5.0, 15.0, 16.5, 17.0, 20.0, 30.0, 50.0, 80.0]
  if np.dtype(dtype) == np.float64:
    m += [36.0, 37.5, 40.0, 100.0, 300.0, 700.0]
  return m


def _c2(rng, dtype) -> np.ndarray:
  rows = [[0.0, -d] for d in _margins(dtype)] + [[-d, 0.0] for d in _margins(dtype)]
  rows += [[0.0, 0.0], [0.0, -np.inf], [-np.inf, 3.0], [5.0, 5.0 + 2**-10]]
  big = MAX_LOGIT[np.dtype(dtype)]
  rows += [[big, -big], [-big, big / 2], [big, big]]
  rows += (rng.normal(size=(10, 2)) * 3).tolist()
  return np.array(rows)


def _c3(rng, dtype) -> np.ndarray:
  rows = [[0.0, -d, -d - 1.0] for d in _margins(dtype)]
  rows += [[0.0, -np.inf, -1.0], [-np.inf, -np.inf, 2.0], [1.0, 1.0, 1.0]]
  rows += (rng.normal(size=(10, 3)) * 5).tolist()
  rows += (rng.normal(size=(4, 3)) + 50.0).tolist()  # a large common offset
  return np.array(rows)


def _c10(rng, dtype) -> np.ndarray:
  big = MAX_LOGIT[np.dtype(dtype)]
  z = np.concatenate(
    [
      rng.normal(size=(10, 10)),
      rng.normal(size=(10, 10)) * 4,
      rng.normal(size=(5, 10)) * 20,
      rng.uniform(-big, big, size=(5, 10)),
    ]
  )
  dominant = rng.normal(size=(10, 10))
  dominant[np.arange(10), rng.integers(0, 10, 10)] += np.linspace(10, big, 10)
  z = np.concatenate([z, dominant])
  impossible = rng.random(z.shape) < 0.2
  impossible[:, 0] &= np.arange(len(z)) % 3 != 0
  impossible[np.arange(len(z)), z.argmax(axis=1)] = False  # at least one possible class
  return np.where(impossible, -np.inf, z)


def _large(rng, dtype, c: int) -> np.ndarray:
  rows = [rng.normal(size=c) * 2, rng.normal(size=c) * 2] if c <= 1000 else []
  dominant = rng.normal(size=c) * 2
  dominant[rng.integers(c, size=c // 10)] = -np.inf
  dominant[rng.integers(c)] = 40.0 if np.dtype(dtype) == np.float32 else 200.0
  rows.append(dominant)
  return np.array(rows)


@functools.cache
def logits(c: int, dtype) -> np.ndarray:
  """A [N, c] logit grid in ``dtype`` (read-only; shared across tests)."""
  rng = np.random.default_rng(1000 + c)
  build = {2: _c2, 3: _c3, 10: _c10}.get(c)
  z = build(rng, dtype) if build else _large(rng, dtype, c)
  z = z.astype(dtype)
  z.setflags(write=False)
  return z


def softmax64(z: np.ndarray) -> np.ndarray:
  """A float64 softmax over the last axis (plain numpy; for building probability grids)."""
  z = np.asarray(z, np.float64)
  m = np.max(z, axis=-1, keepdims=True)
  e = np.exp(z - m)
  return e / e.sum(axis=-1, keepdims=True)


@functools.cache
def probs(c: int, dtype, seed: int = 0) -> np.ndarray:
  """A [N, c] probability grid: softmaxes of the logit grid (with exact zeros), one-hots.

  Rows are rounded to ``dtype`` (so they sum to 1 only up to rounding, as real data does).
  ``seed`` != 0 gives an independent grid of the same shape (a second distribution q).
  """
  z = np.asarray(logits(c, dtype), np.float64)
  if seed:  # shuffle the finite logits of each row and rescale them
    rng = np.random.default_rng(seed * 7919 + c)
    z = z.copy()
    for row in z:
      finite = np.isfinite(row)
      row[finite] = rng.permutation(row[finite]) * rng.uniform(0.2, 1.5)
  p = softmax64(z)
  if c <= 10:  # exact 0/1 rows and the uniform distribution (small C: mpmath is slow)
    one_hot = np.arange(c) == ((np.arange(min(c, 3)) + seed) % c)[:, None]
    p = np.concatenate([p, one_hot, np.full((1, c), 1.0 / c)])
  # XLA on CPU treats subnormal floats as zero (denormals-are-zero), so the grid holds none.
  p = p.astype(dtype)
  p[np.abs(p) < np.finfo(dtype).tiny] = 0
  p.setflags(write=False)
  return p


def mask(shape: tuple[int, int], seed: int) -> np.ndarray:
  """A random boolean mask with at least one True per row."""
  rng = np.random.default_rng(seed)
  m = rng.random(shape) < 0.7
  m[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = True
  return m


def elementwise_logits(dtype) -> np.ndarray:
  """1-D logits for the binary measures: a dense sweep of ±MAX_LOGIT, specials, ±inf."""
  big = MAX_LOGIT[np.dtype(dtype)]
  rng = np.random.default_rng(7)
  sweep = np.concatenate(
    [
      np.linspace(-big, big, 161),
      [0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1e-3, -1e-3, 16.5, 17.0, -17.0, 30.0, -30.0],
      rng.normal(size=40) * 10,
      [np.inf, -np.inf],
    ]
  )
  return sweep.astype(dtype)


def elementwise_probs(dtype) -> np.ndarray:
  """1-D probabilities: exact 0 and 1, tiny values, values next to 1, a uniform sweep."""
  eps = np.finfo(dtype).eps
  tiny_exp = -30 if np.dtype(dtype) == np.float32 else -300
  logspace = np.logspace(tiny_exp, -0.31, 40)
  p = np.concatenate(
    [
      [0.0, 1.0, 0.5, eps, 1 - eps, 1 - eps / 2, np.finfo(dtype).tiny],
      logspace,
      1 - logspace,
      np.random.default_rng(11).random(30),
    ]
  )
  return p.astype(dtype)


class _Jitted:
  """xent_jax's functions under jax.jit, options static.

  An eager call compiles every primitive separately (about 6x the cost of one jit), so tests
  that do not compare jit with no-jit call the library through ``JIT.<name>``.
  """

  def __getattr__(self, name: str):
    return _jitted(name)


@functools.cache
def _jitted(name: str):
  import inspect

  import xent_jax

  fn = getattr(xent_jax, name)
  params = inspect.signature(fn).parameters
  static = [a for a in ("axis", "base", "label_smoothing") if a in params]
  return jax.jit(fn, static_argnames=static)


JIT = _Jitted()


# The eager (without_jit) variant compiles every primitive separately (~1 s per call): it runs
# on these class counts only; the with_jit variant runs on every grid.
EAGER_CLASS_COUNTS = (2, 10)


def skip_eager_unless(test, c: int) -> None:
  """Skips the without_jit variant of a grid test for class counts outside EAGER_CLASS_COUNTS."""
  if test._testMethodName.endswith("without_jit") and c not in EAGER_CLASS_COUNTS:
    test.skipTest(f"eager path covered on class counts {EAGER_CLASS_COUNTS}")


def edge_rows(dtype) -> np.ndarray:
  """[11, 5] logits whose rows take every branch of the softmax losses' forward-mode JVP."""
  margin = {np.dtype(np.float32): 85.0, np.dtype(np.float64): 700.0}[np.dtype(dtype)]
  inf, nan = np.inf, np.nan
  rows = [
    [0, -inf, 1, 2, 3],  # an impossible class
    [0, inf, 1, 2, 3],  # +inf
    [inf, 0, 1, 2, 3],
    [0, -margin, -margin, -margin, -margin],  # terms next to the underflow threshold
    [90, 0, -3, 5, 1],  # a class 90 nats below the maximum
    [1, 2, 3, 4, 5],
    [1, 2, 3, 4, 5],
    [0.3, -1.2, 2.5, 0.7, -0.4],
    [3, 3, 3, 3, 3],  # ties
    [nan, 0, 1, 2, 3],
    [5, 0, 0, 0, 0],  # a dominant class (L < log 2)
  ]
  return np.array(rows, dtype)


def assert_forward_is_transpose(loss, args, tangents, dtype):
  """Asserts jax.jvp(loss) = Σ_j grad_j · tangent_j per row (grads from reverse mode)."""
  _, got = jax.jit(lambda args, tangents: jax.jvp(loss, args, tangents))(args, tangents)
  grads = jax.jit(jax.grad(lambda args: jnp.sum(loss(*args))))(args)
  terms = sum(
    np.asarray(g, np.float64) * np.asarray(t, np.float64)
    for g, t in zip(grads, tangents, strict=True)
  )
  scale = sum(
    np.abs(np.asarray(g, np.float64) * np.asarray(t, np.float64))
    for g, t in zip(grads, tangents, strict=True)
  )
  expected = terms.sum(axis=1)
  rtol = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}[np.dtype(dtype)]
  np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
  finite = np.isfinite(expected)
  error = np.abs(np.asarray(got, np.float64) - expected)[finite]
  # Terms below the smallest normal number are out of scope (subnormals are flushed on CPU;
  # either side may keep or drop them).
  atol = np.finfo(dtype).tiny * len(tangents) * np.shape(tangents[0])[-1]
  np.testing.assert_array_less(error, rtol * scale.sum(axis=1)[finite] + atol)
  return expected
