"""The function × transformation table of SPEC §2, checked cell by cell, and the README's copy.

Every public function runs under jit, grad, value_and_grad, vjp, jvp, linearize, jacfwd,
jacrev, hessian, grad-of-grad, vmap (in_axes 0, 1 and None), checkpoint, lax.scan,
eval_shape and sharded inputs, on the fast path (class axis last, no `where`, no smoothing)
and on the general path (axis=0, a `where` mask with NaN in the excluded entries, label
smoothing). Each case batches benign examples with hard ones (a dominant class, a -inf logit,
probabilities next to 0 and 1); a cell holds when every value it produces is finite and
equals what it must:

- jit: the mpmath value (benign examples); grad / value_and_grad: the mpmath gradient;
- vjp = grad; jvp = linearize = the vjp-derived directional derivative (Σ J t from jacrev)
  = a central finite difference in float64; jacfwd = jacrev;
- hessian: symmetric, = a float64 finite difference of the gradient; grad-of-grad
  (reverse over reverse) = the Hessian-vector product;
- vmap (over examples, in_axes 0 and 1, and None for the second argument) = a Python loop;
  lax.scan = the same loop, its gradient = grad; checkpoint's gradient = grad;
- eval_shape = the shape and dtype of the result; sharding: inputs put on a NamedSharding
  over every device give the unsharded value and gradient.

All transforms of one case are traced into one jitted function (an eager transformation
compiles every primitive separately); a transformation that raises while tracing fails its
cell only. The table is rendered as markdown and compared with README.md's block between
the ``transform-table`` markers; ``XENT_WRITE_TABLE=1`` rewrites that block instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import pathlib
import re
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import xent_jax as xj
from tests.library import _grids
from tests.library import _mp_reference as ref
from xent_jax._measures import REGISTRY, Role

jax.config.update("jax_numpy_rank_promotion", "raise")

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- transform-table:start -->", "<!-- transform-table:end -->"

TRANSFORMS = (
  "jit",
  "grad",
  "value_and_grad",
  "vjp",
  "jvp",
  "linearize",
  "jacfwd",
  "jacrev",
  "hessian",
  "grad-of-grad",
  "vmap",
  "checkpoint",
  "scan",
  "eval_shape",
  "sharding",
)
# Every measure of xent_jax._measures.REGISTRY, in the README's order: module by module as
# xent_jax's docstring lists them, and within a module in the order it defines them.
_MODULES = re.findall(r":mod:`xent_jax\.(\w+)`", xj.__doc__)


def _readme_rank(name):
  module = REGISTRY[name].fn.__module__.rpartition(".")[2]
  if module not in _MODULES:
    raise AssertionError(f"{name}: its module xent_jax.{module} is not in xent_jax's docstring")
  return _MODULES.index(module), list(REGISTRY).index(name)


FUNCTIONS = tuple(sorted(REGISTRY, key=_readme_rank))
# Elementwise measures take no class axis; the others reduce over `axis`.
ELEMENTWISE = tuple(
  name for name in FUNCTIONS if "axis" not in inspect.signature(getattr(xj, name)).parameters
)

DTYPE = _grids.DTYPES[-1]  # float64 when x64 is on: the finite differences need it
FD_STEP = 1e-6
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# Two computations of the same derivative (different transformations) agree to this.
RTOL = 1e-4 if DTYPE == np.float32 else 1e-9
REF_RTOL = 1e-5 if DTYPE == np.float32 else 1e-12  # against mpmath, benign examples
FD_RTOL = 1e-5  # central differences, step 1e-6, float64

# ----------------------------------------------------------------------------------------------
# Inputs: 4 examples of 4 classes, the first two benign, the last two hard.

HARD = np.array([False, False, True, True])
_LOGITS = [
  [0.3, -1.2, 2.0, 0.5],
  [1.5, 0.2, -0.7, -2.1],
  [40.0, 0.0, -3.0, 1.0],
  [-np.inf, 0.5, -1.0, 2.0],
]
_Q_LOGITS = [
  [-0.4, 0.9, 1.1, -0.2],
  [0.1, -1.3, 0.6, 0.8],
  [2.0, 35.0, 1.0, 0.0],
  [-np.inf, 1.5, -2.0, 0.0],
]
_P = [
  [0.1, 0.2, 0.3, 0.4],
  [0.25, 0.5, 0.125, 0.125],
  [1 - 3e-6, 1e-6, 1e-6, 1e-6],
  [1e-12, 0.5, 0.25, 0.25],
]
_Q = [
  [0.4, 0.3, 0.2, 0.1],
  [0.125, 0.25, 0.5, 0.125],
  [0.25, 0.25, 0.25, 0.25],
  [0.5, 1e-6, 0.25, 0.25 - 1e-6],
]
_WHERE = [
  [True, True, False, True],
  [True, False, True, True],
  [True, True, True, False],
  [False, True, True, True],
]
_T = [
  [0.1, 0.2, 0.3, 0.4],
  [0.25, 0.5, 0.125, 0.125],
  [1 - 3e-6, 1e-6, 1e-6, 1e-6],
  [0.0, 0.5, 0.25, 0.25],
]
_LABELS = [3, 0, 0, 3]  # kept by _WHERE; the dominant class of example 2
_PROB_LABELS = [3, 0, 0, 1]  # of _P, kept by _WHERE; example 2's is 1 - 3e-6
_X = [0.3, -1.7, 30.0, -80.0]  # elementwise logits
_PROB = [0.3, 0.8, 1e-6, 1 - 2**-20]  # elementwise probabilities
_PROB_Q = [0.6, 0.1, 1 - 2**-20, 1e-6]


class Case(NamedTuple):
  """One way of calling a function: ``call(*args)`` with every argument batch-leading.

  ``args[:n_diff]`` are differentiable (derivatives are taken w.r.t. ``args[0]``); the
  reference is the mpmath jet ``ref_name`` at ``ref_arrays`` (the untransposed inputs).
  """

  call: Callable
  args: tuple
  n_diff: int
  ref_name: str
  ref_arrays: dict
  ref_kwargs: dict
  out_mask: np.ndarray | None = None  # outputs compared (log_softmax: not the -inf ones)


def _a(x, dtype=DTYPE):
  return np.asarray(x, dtype)


def _with_garbage(x, where):
  return np.where(where, x, np.nan).astype(x.dtype)


def _row_case(name, arg_names, arrays, *, general, extra=(), options=None):
  """The fast path (axis -1, nothing masked) or the general one (axis 0, where, smoothing)."""
  fn = getattr(xj, name)
  options = dict(options or {})
  n_diff = len(arrays)
  ref_name = "softmax_cross_entropy" if extra else name
  ref_arrays = dict(zip(arg_names, arrays, strict=True))
  if extra:
    ref_arrays["targets"] = ref.one_hot(extra[0], arrays[0].shape[-1], DTYPE)
  if not general:
    return Case(lambda *a: fn(*a, **options), (*arrays, *extra), n_diff, ref_name, ref_arrays, {})
  where = np.array(_WHERE)
  if not extra:  # probabilities: distributions over the kept classes
    arrays = tuple(
      x
      if "logits" in a
      else _a(np.where(where, x, 0) / np.sum(np.where(where, x, 0), -1, keepdims=True))
      for a, x in zip(arg_names, arrays, strict=True)
    )
    ref_arrays = dict(zip(arg_names, arrays, strict=True))
  garbage = tuple(_with_garbage(x, where) for x in arrays)
  ref_kwargs = {"where": where, **options}
  if extra:  # integer labels keep the class axis last: the general path is `where`
    return Case(
      lambda *a: fn(*a[:-1], where=a[-1], **options),
      (*garbage, *extra, where),
      n_diff,
      ref_name,
      ref_arrays,
      ref_kwargs,
    )

  def call(*a):  # the class axis first
    *xs, w = a
    return fn(*(x.T for x in xs), axis=0, where=w.T, **options)

  return Case(call, (*garbage, where), n_diff, ref_name, ref_arrays, ref_kwargs)


def _log_softmax_case(general):
  z = _a(_LOGITS)
  where = np.array(_WHERE) if general else np.ones(z.shape, bool)
  finite = where & np.isfinite(z)  # the -inf outputs are constant: compared as 0

  if general:

    def call(z, w, keep):
      return jnp.where(keep, xj.log_softmax(z.T, axis=0, where=w.T).T, 0)

    args = (_with_garbage(z, where), where, finite)
  else:

    def call(z, keep):
      return jnp.where(keep, xj.log_softmax(z), 0)

    args = (z, finite)
  return Case(call, args, 1, "log_softmax", {"logits": z}, {"where": where}, finite)


def _elementwise_case(name, arg_names, arrays, options=None):
  fn = functools.partial(getattr(xj, name), **dict(options or {}))
  ref_arrays = dict(zip(arg_names, arrays, strict=True))
  return Case(fn, tuple(arrays), len(arrays), name, ref_arrays, dict(options or {}))


def _integer_label_probs_case(general):
  """cross_entropy_with_integer_labels(labels, q): q first in the Case (the derivative);
  the reference is the cross-entropy of the exact one-hot targets."""
  q, labels = _a(_P), np.array(_PROB_LABELS)
  name = "cross_entropy_with_integer_labels"
  ref_arrays = {"q": q, "p": ref.one_hot(labels, q.shape[-1], DTYPE)}
  if not general:
    return Case(
      lambda q, y: xj.cross_entropy_with_integer_labels(y, q), (q, labels), 1, name, ref_arrays, {}
    )
  where = np.array(_WHERE)

  def call(q, y, w):  # the class axis first
    return xj.cross_entropy_with_integer_labels(y, q.T, axis=0, where=w.T)

  return Case(call, (_with_garbage(q, where), labels, where), 1, name, ref_arrays, {"where": where})


# The inputs follow from the roles of the arguments (xent_jax._measures.REGISTRY): the i-th
# argument of a role gets the i-th example of it. Row measures take [4, 4] arrays, elementwise
# ones [4] arrays; the probabilities that go with logits (targets, labels) have their own.
_ROW_EXAMPLES = {
  Role.LOGITS: (_LOGITS, _Q_LOGITS),
  Role.DISTRIBUTION: (_P, _Q),
  Role.MEASURE: (_P, _Q),
}
_ELEMENTWISE_EXAMPLES = {Role.BINARY_LOGITS: (_X,), Role.PROBABILITY: (_PROB, _PROB_Q)}
_TARGETS = {Role.LOGITS: _T, Role.BINARY_LOGITS: [1.0, 0.8, 1.0, 0.0]}  # the labels of logits
# (a soft label of 0.8: at 0.3 the two parts of the focal loss's ∂/∂z nearly cancel at
# x = -1.7, and rounding x alone moves it by 5e-5 in float32, more than REF_RTOL)
# The general path sets each option a measure takes to one of these (not its default).
GENERAL_OPTIONS = {"label_smoothing": 0.1, "epsilon": -0.5, "alpha": 0.25, "gamma": 1.5}


def _inputs(name):
  """(argument names, arrays, integer labels or ()) of a measure, from its roles."""
  roles = REGISTRY[name].roles
  examples = _ELEMENTWISE_EXAMPLES if name in ELEMENTWISE else _ROW_EXAMPLES
  primary = next(iter(roles.values()))
  names, arrays, labels, used = [], [], (), {}
  for arg, role in roles.items():
    if role is Role.LABELS:
      labels = (np.array(_LABELS),)
      continue
    if arrays and role is not primary and primary in _TARGETS:
      example = _TARGETS[primary]  # the targets of logits
    else:
      example = examples[role][used.get(role, 0)]
      used[role] = used.get(role, 0) + 1
    names.append(arg)
    arrays.append(_a(example))
  return tuple(names), tuple(arrays), labels


def _general_options(name):
  params = inspect.signature(REGISTRY[name].fn).parameters
  return {k: v for k, v in GENERAL_OPTIONS.items() if k in params}


def cases(name) -> dict[str, Case]:
  """The fast-path and general-path cases of a function."""
  if name == "log_softmax":
    return {"fast": _log_softmax_case(False), "general": _log_softmax_case(True)}
  if name == "cross_entropy_with_integer_labels":  # labels first: its own case
    return {"fast": _integer_label_probs_case(False), "general": _integer_label_probs_case(True)}
  arg_names, arrays, labels = _inputs(name)
  options = _general_options(name)
  if name in ELEMENTWISE:
    out = {"fast": _elementwise_case(name, arg_names, arrays)}
    if options:
      out["general"] = _elementwise_case(name, arg_names, arrays, options=options)
    return out
  return {
    "fast": _row_case(name, arg_names, arrays, general=False, extra=labels),
    "general": _row_case(name, arg_names, arrays, general=True, extra=labels, options=options),
  }


# ----------------------------------------------------------------------------------------------
# Every transformation of one case, traced into one jitted function.


def _transformed(case: Case, weights, tangent, vector):
  """{transform: outputs}; a transformation that raises while tracing gives the exception."""
  args = case.args

  def f(x):
    return case.call(x, *args[1:])

  def loss(x):
    return jnp.sum(weights * f(x))

  def row(i_args):
    return case.call(*(a[None] for a in i_args))[0]

  def run(x):
    out, errors = {}, {}

    def attempt(key, thunk):
      try:
        out[key] = thunk()
      except Exception as e:  # noqa: BLE001 - a refused transformation fails its cell
        errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"

    n = x.shape[0]
    attempt("jit", lambda: f(x))
    # grad w.r.t. every differentiable argument; the first is the one compared.
    attempt(
      "grad_all",
      lambda: jax.grad(
        lambda *d: jnp.sum(weights * case.call(*d, *args[case.n_diff :])),
        argnums=tuple(range(case.n_diff)),
      )(x, *args[1 : case.n_diff]),
    )
    if "grad_all" in out:
      out["grad"] = out["grad_all"][0]
    attempt("value_and_grad", lambda: jax.value_and_grad(loss)(x))
    attempt("vjp", lambda: jax.vjp(f, x)[1](weights)[0])
    attempt("jvp", lambda: jax.jvp(f, (x,), (tangent,)))
    attempt("linearize", lambda: jax.linearize(f, x)[1](tangent))
    attempt("jacfwd", lambda: jax.jacfwd(f)(x))
    attempt("jacrev", lambda: jax.jacrev(f)(x))
    attempt("hessian", lambda: jax.hessian(loss)(x))
    attempt("grad-of-grad", lambda: jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), vector))(x))
    basis = jnp.eye(x.size, dtype=x.dtype).reshape(x.size, *x.shape)
    if x.dtype == np.float64:  # central differences of the gradient, both sides in one vmap
      attempt(
        "fd_hessian",
        lambda: jax.vmap(jax.grad(loss))(x[None] + FD_STEP * jnp.concatenate([basis, -basis])),
      )
    batched = (x, *(jnp.asarray(a) for a in args[1:]))
    # vmap over the examples; the examples are independent, so the same vmap also gives the
    # central differences f(x ± h t) example by example: [x, x + h t, x - h t] stacked.
    stacked = jnp.concatenate([x, x + FD_STEP * tangent, x - FD_STEP * tangent])
    stacked = (stacked, *(jnp.concatenate([a, a, a]) for a in batched[1:]))
    attempt("vmap0", lambda: jax.vmap(lambda *a: row(a))(*stacked))

    def vmap1():  # the examples along axis 1
      if x.ndim == 1:  # elementwise: [1, N] arrays, each slice a [1] array
        return jax.vmap(lambda *a: case.call(*a)[0], in_axes=1)(*(a[None] for a in batched))
      axes = tuple(1 if a.ndim == 2 else 0 for a in batched)
      return jax.vmap(lambda *a: row(a), in_axes=axes)(*(a.T for a in batched))

    attempt("vmap1", vmap1)
    if len(batched) > 1:  # the other arguments (mask included) shared by every example,
      # so the examples are example 0 rescaled (garbage and -inf where its mask says).
      shared = tuple(a[0] for a in batched[1:])
      scale = jnp.linspace(1.0, 0.7, n, dtype=x.dtype).reshape((n,) + (1,) * (x.ndim - 1))
      x_none = x[:1] * scale
      attempt("vmap_none", lambda: jax.vmap(lambda xi: row((xi, *shared)))(x_none))
      out["x_none"] = x_none
    attempt("checkpoint", lambda: jax.grad(jax.checkpoint(loss))(x))

    def scan_loss(x):
      def step(total, i_args):
        i, *a = i_args
        value = row(a)
        return total + jnp.sum(jnp.asarray(weights)[i] * value), value

      return jax.lax.scan(step, jnp.zeros((), x.dtype), (jnp.arange(n), x, *args[1:]))

    attempt("scan", lambda: jax.value_and_grad(lambda x: scan_loss(x), has_aux=True)(x))
    return out, errors

  return run


def _compile(fn, *args):
  """jax.jit(fn) compiled for ``args`` without LLVM's optimisation passes (XLA's own passes
  still run): each function here runs once, and optimising its machine code would cost more
  than it saves."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


@functools.cache
def _compiled(name, path):
  case = cases(name)[path]
  x = case.args[0]
  rng = np.random.default_rng(len(name))
  weights = rng.uniform(0.5, 2.0, x.shape[0] if case.out_mask is None else x.shape).astype(DTYPE)
  if case.out_mask is not None:
    weights = np.where(case.out_mask, weights, 0).astype(DTYPE)
  tangent = rng.normal(size=x.shape).astype(DTYPE)
  vector = rng.normal(size=x.shape).astype(DTYPE)
  run = _transformed(case, weights, tangent, vector)
  errors = {}

  def outputs(x):
    out, errs = run(x)
    errors.update(errs)
    return out

  out = jax.tree.map(np.asarray, _compile(outputs, x)(x))
  # The Python loops, one jitted example at a time (unrolled in the bundle they would
  # multiply its compile time).
  n = x.shape[0]
  try:
    row = _compile(lambda *a: case.call(*(ai[None] for ai in a))[0], *(a[0] for a in case.args))
    out["loop"] = np.stack([row(*(a[i] for a in case.args)) for i in range(n)])
    if "x_none" in out:
      out["loop_none"] = np.stack(
        [row(out["x_none"][i], *(a[0] for a in case.args[1:])) for i in range(n)]
      )
  except Exception as e:  # noqa: BLE001 - the loop's failure fails the vmap cell
    errors["loop"] = errors["loop_none"] = f"{type(e).__name__}: {str(e)[:300]}"
  return case, weights, tangent, vector, out, errors


# ----------------------------------------------------------------------------------------------
# The checks of each cell.


def _close(got, expected, rtol, what, rows=None):
  """|got - expected| ≤ rtol·(|expected| + 1e-3·max|expected|), finite, on ``rows``."""
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  if got.shape != expected.shape:
    raise AssertionError(f"{what}: shape {got.shape} != {expected.shape}")
  if rows is not None:
    got, expected = got[rows], expected[rows]
  if not np.all(np.isfinite(got)):
    raise AssertionError(f"{what}: not finite: {got[~np.isfinite(got)][:4]}")
  scale = np.abs(expected) + 1e-3 * np.max(np.abs(expected), initial=0.0)
  bad = ~(np.abs(got - expected) <= rtol * scale)
  if bad.any():
    i = np.argwhere(bad)[0]
    raise AssertionError(
      f"{what}: {bad.sum()} entries differ, e.g. at {tuple(i)}: {got[tuple(i)]!r} vs {expected[tuple(i)]!r}"
    )


def _finite(x, what):
  for leaf in jax.tree.leaves(x):
    if not np.all(np.isfinite(leaf)):
      raise AssertionError(f"{what}: NaN or inf in {np.asarray(leaf).ravel()[:8]}")


def _mpmath(case: Case, weights):
  """The mpmath value and gradient (w.r.t. args[0]) of the benign examples."""
  a = case.ref_name
  kw = case.ref_kwargs
  if a == "log_softmax":
    value = ref.log_softmax(case.ref_arrays["logits"], where=kw["where"]).value
    grad = ref.log_softmax_vjp(case.ref_arrays["logits"], weights, where=kw["where"]).ref.value
    return np.where(case.out_mask, value, 0), grad
  value = ref.value_ref(a, case.ref_arrays, **kw).value
  grad = ref.vjp(a, case.ref_arrays, ref.jet_args(a)[0], cotangent=weights, **kw).ref.value
  return value, grad


def _mpmath_hessian(case: Case, weights) -> np.ndarray:
  """The exact Hessian of Σ w·f w.r.t. args[0], as an [x.size, x.size] matrix."""
  a, kw = case.ref_name, case.ref_kwargs
  if a == "log_softmax":  # Σ w log softmax(z) = H(-w, softmax z)
    z = case.ref_arrays["logits"]
    jets, _ = ref.jets("softmax_cross_entropy", {"logits": z, "targets": -weights}, **kw)
    blocks = [np.array(j.hess[("logits", "logits")], np.float64) for j in jets]
  else:
    first = ref.jet_args(a)[0]
    jets, _ = ref.jets(a, case.ref_arrays, **kw)
    blocks = [
      w * np.array(j.hess[(first, first)], np.float64) for j, w in zip(jets, weights, strict=True)
    ]
  size = sum(b.shape[0] for b in blocks)
  out, i = np.zeros((size, size)), 0
  for b in blocks:
    out[i : i + len(b), i : i + len(b)] = b
    i += len(b)
  return out


def _cell_checks(name, path):
  """{transform: [error messages]} for one case."""
  case, w, t, v, out, errors = _compiled(name, path)
  x = case.args[0]
  benign = ~HARD
  fd = DTYPE == np.float64
  checks: dict[str, list[Callable[[], None]]] = {k: [] for k in TRANSFORMS}
  value, grad = _mpmath(case, w)
  elementwise = name in ELEMENTWISE
  n = x.shape[0]

  def add(transform, check):
    checks[transform].append(check)

  def jac_contract(j, vec):  # Σ_in J[out, in] vec[in]
    return np.tensordot(j, vec, axes=vec.ndim)

  o = out
  hm = lambda: np.asarray(o["hessian"]).reshape(x.size, x.size)  # noqa: E731
  directional = lambda: jac_contract(o["jacrev"], t)  # noqa: E731
  add("jit", lambda: _close(o["jit"], value, REF_RTOL, "jit value vs mpmath", benign))
  add("jit", lambda: _finite(o["jit"], "jit value"))
  add("grad", lambda: _close(o["grad"], grad, REF_RTOL, "grad vs mpmath", benign))
  add("grad", lambda: _finite(o["grad"], "grad"))
  add("grad", lambda: _finite(o["grad_all"], "grad w.r.t. every differentiable argument"))
  add("grad", lambda: _close(o["grad_all"][0], o["grad"], RTOL, "grad argnums=all vs grad"))
  add("value_and_grad", lambda: _close(o["value_and_grad"][0], np.sum(w * o["jit"]), RTOL, "value"))
  add("value_and_grad", lambda: _close(o["value_and_grad"][1], o["grad"], RTOL, "its grad vs grad"))
  add("vjp", lambda: _close(o["vjp"], o["grad"], RTOL, "vjp vs grad"))
  add("vjp", lambda: _close(o["vjp"], grad, REF_RTOL, "vjp vs mpmath", benign))
  add("jvp", lambda: _close(o["jvp"][0], o["jit"], RTOL, "jvp primal"))
  add("jvp", lambda: _close(o["jvp"][1], directional(), RTOL, "jvp vs Σ J t (jacrev)"))
  add("linearize", lambda: _close(o["linearize"], o["jvp"][1], RTOL, "linearize vs jvp"))
  add("linearize", lambda: _close(o["linearize"], directional(), RTOL, "linearize vs Σ J t"))
  if fd:
    fd_value = lambda: (o["vmap0"][n : 2 * n] - o["vmap0"][2 * n :]) / (2 * FD_STEP)  # noqa: E731
    add("jvp", lambda: _close(o["jvp"][1], fd_value(), FD_RTOL, "jvp vs FD", benign))
    add("linearize", lambda: _close(o["linearize"], fd_value(), FD_RTOL, "vs FD", benign))
  add("jacfwd", lambda: _close(o["jacfwd"], o["jacrev"], RTOL, "jacfwd vs jacrev"))
  add("jacfwd", lambda: _close(jac_contract(o["jacfwd"], t), o["jvp"][1], RTOL, "J t vs jvp"))
  add("jacrev", lambda: _finite(o["jacrev"], "jacrev"))
  add("jacrev", lambda: _close(np.tensordot(w, o["jacrev"], axes=w.ndim), o["grad"], RTOL, "wᵀJ"))
  add("hessian", lambda: _finite(o["hessian"], "hessian"))
  add("hessian", lambda: _close(hm(), hm().T, RTOL, "hessian symmetry"))

  def hessian_vs_mpmath():
    block = np.repeat(benign, x.size // n)
    keep = block[:, None] & block[None, :]
    _close(hm()[keep], _mpmath_hessian(case, w)[keep], RTOL, "hessian vs mpmath")

  add("hessian", hessian_vs_mpmath)
  if fd:  # the examples are independent: compare the benign examples' blocks

    def hessian_vs_fd():
      plus, minus = np.split(np.asarray(o["fd_hessian"]).reshape(2 * x.size, x.size), 2)
      fd_h = (plus - minus) / (2 * FD_STEP)
      block = np.repeat(benign, x.size // n)
      keep = block[:, None] & block[None, :]
      _close(hm()[keep], fd_h[keep], FD_RTOL, "hessian vs FD of grad")

    add("hessian", hessian_vs_fd)
  hv = lambda: (hm() @ v.ravel()).reshape(x.shape)  # noqa: E731
  add("grad-of-grad", lambda: _close(o["grad-of-grad"], hv(), RTOL, "grad of (grad · v) vs H v"))
  if elementwise:
    add("grad-of-grad", lambda: _close(o["grad-of-grad"] / v, np.diag(hm()), RTOL, "vs diag H"))
  add("vmap", lambda: _close(o["vmap0"][:n], o["loop"], RTOL, "vmap in_axes=0 vs loop"))
  add("vmap", lambda: _close(o["vmap1"], o["loop"], RTOL, "vmap in_axes=1 vs loop"))
  add("vmap", lambda: _close(o["loop"], o["jit"], RTOL, "loop vs batched call"))
  if len(case.args) > 1:
    add("vmap", lambda: _close(o["vmap_none"], o["loop_none"], RTOL, "in_axes=None vs loop"))
  add("checkpoint", lambda: _close(o["checkpoint"], o["grad"], RTOL, "checkpoint grad vs grad"))
  add("scan", lambda: _close(o["scan"][0][1], o["loop"], RTOL, "scan vs loop"))
  add("scan", lambda: _close(o["scan"][1], o["grad"], RTOL, "grad through scan vs grad"))
  add("eval_shape", lambda: _check_eval_shape(case, o["jit"]))
  add("sharding", lambda: _check_sharding(name, path, o["jit"], o["grad"]))

  missing = {k: e for k, e in errors.items()}
  result = {}
  for transform, fns in checks.items():
    messages = []
    for fn in fns:
      try:
        fn()
      except KeyError as e:
        key = e.args[0]
        messages.append(f"{key} failed to trace: {missing.get(key, '?')}")
      except Exception as e:  # noqa: BLE001 - every failed check is reported
        messages.append(f"{type(e).__name__}: {str(e)[:400]}")
    result[transform] = sorted(set(messages))
  return result


def _check_eval_shape(case, value):
  shape = jax.eval_shape(case.call, *case.args)
  chex.assert_shape(value, shape.shape)
  if shape.dtype != np.dtype(DTYPE):
    raise AssertionError(f"eval_shape dtype {shape.dtype} != {DTYPE}")
  grad_shape = jax.eval_shape(
    jax.grad(lambda x: jnp.sum(case.call(x, *case.args[1:]))), case.args[0]
  )
  chex.assert_shape(case.args[0], grad_shape.shape)


def _check_sharding(name, path, value, grad):
  case, w, *_ = _compiled(name, path)
  n = case.args[0].shape[0]
  devices = jax.devices()
  count = max(d for d in range(1, len(devices) + 1) if n % d == 0)
  mesh = Mesh(np.array(devices[:count]), ("batch",))
  sharding = NamedSharding(mesh, PartitionSpec("batch"))
  args = [jax.device_put(a, sharding) for a in case.args]

  def run(*args):
    def loss(x):
      value = case.call(x, *args[1:])
      return jnp.sum(w * value), value

    return jax.value_and_grad(loss, has_aux=True)(args[0])

  (_, got_value), got_grad = _compile(run, *args)(*args)
  _close(got_value, value, RTOL, "sharded value")
  _close(got_grad, grad, RTOL, "sharded grad")
  if len(got_value.sharding.device_set) != count and count > 1:
    raise AssertionError(f"sharded output lives on {got_value.sharding.device_set}")


@functools.cache
def row_results(name) -> dict[str, list[str]]:
  """{transform: failures} over the fast and the general path of ``name``."""
  out = {k: [] for k in TRANSFORMS}
  for path in cases(name):
    try:
      cells = _cell_checks(name, path)
    except Exception as e:  # noqa: BLE001 - the case itself did not run: every cell fails
      cells = {k: [f"{type(e).__name__}: {str(e)[:300]}"] for k in TRANSFORMS}
    for k, messages in cells.items():
      out[k] += [f"{path}: {m}" for m in messages]
  return out


# ----------------------------------------------------------------------------------------------
# The table.


def render(results: dict[str, dict[str, list[str]]]) -> str:
  header = "| function | " + " | ".join(TRANSFORMS) + " |"
  lines = [header, "|---|" + "---|" * len(TRANSFORMS)]
  for name in FUNCTIONS:
    marks = ["✓" if not results[name][k] else "✗" for k in TRANSFORMS]
    lines.append(f"| `{name}` | " + " | ".join(marks) + " |")
  return "\n".join(lines)


def readme_table() -> dict[str, dict[str, bool]]:
  """The README block as {function: {transform: claimed}}."""
  text = README.read_text()
  match = re.search(re.escape(START) + r"(.*?)" + re.escape(END), text, re.S)
  if not match:
    raise AssertionError(f"README.md has no {START} ... {END} block")
  rows = [line for line in match.group(1).strip().splitlines() if line.startswith("| `")]
  table = {}
  for line in rows:
    cells = [c.strip() for c in line.strip("|").split("|")]
    table[cells[0].strip("`")] = dict(zip(TRANSFORMS, (c == "✓" for c in cells[1:]), strict=True))
  return table


def write_readme(table: str) -> None:
  text = README.read_text()
  block = f"{START}\n{table}\n{END}"
  text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
  README.write_text(text)


class TransformsTest(chex.TestCase):
  def test_every_measure_has_an_mpmath_reference(self):
    # Every measure's reference is its jet (@_mp_reference.jet, in _mp_reference.py or in the
    # measure's own test file), except log_softmax's (ref.log_softmax) and the integer-label
    # softmax cross-entropy's (the dense one of one-hot targets).
    own = ("log_softmax", "softmax_cross_entropy_with_integer_labels")
    missing = [n for n in REGISTRY if n not in own and not ref.has_jet(n)]
    self.assertEqual(missing, [], f"measures without an mpmath jet (@_mp_reference.jet): {missing}")

  @parameterized.named_parameters((name, name) for name in FUNCTIONS)
  def test_row(self, name):
    results = row_results(name)
    claimed = readme_table().get(name)
    self.assertIsNotNone(claimed, f"README's transform table has no row for {name}")
    broken = [f"{k}: " + "; ".join(results[k]) for k in TRANSFORMS if claimed[k] and results[k]]
    stale = [k for k in TRANSFORMS if not claimed[k] and not results[k]]
    self.assertEqual(broken, [], f"{name}: cells the README claims are broken")
    self.assertEqual(stale, [], f"{name}: cells now hold; rerun with XENT_WRITE_TABLE=1")

  def test_readme_table_is_current(self):
    """The README block is the rendering of the claims that test_row checks cell by cell.

    Rebuilding every row here would repeat test_row's work; the claims are read back,
    rendered and compared instead (same functions, same transforms, same layout). With
    XENT_WRITE_TABLE=1 every row is computed and the block rewritten.
    """
    if os.environ.get("XENT_WRITE_TABLE") == "1":
      write_readme(render({name: row_results(name) for name in FUNCTIONS}))
    claimed = readme_table()
    missing = [name for name in FUNCTIONS if name not in claimed]
    self.assertEqual(missing, [], "README's transform table has no row for these functions")
    self.assertEqual(list(claimed), list(FUNCTIONS), "README's table lists other functions")
    as_results = {
      name: {k: [] if claimed[name][k] else ["claimed broken"] for k in TRANSFORMS}
      for name in FUNCTIONS
    }
    self.assertIn(render(as_results), README.read_text(), "README's transform table is malformed")


# ----------------------------------------------------------------------------------------------
# Float32 inputs with x64 on: float32 arithmetic, as with x64 off.


def _float64_values(jaxpr) -> list[str]:
  """The primitives of ``jaxpr`` (sub-jaxprs included) with a float64 input or output.

  Weakly typed float64 scalars (Python floats such as ``jnp.nan`` in ``jnp.where``) are
  not counted: they take the dtype of the array they meet.
  """
  found = []
  for eqn in jaxpr.eqns:
    avals = [v.aval for v in (*eqn.invars, *eqn.outvars) if hasattr(v, "aval")]
    if any(getattr(a, "dtype", None) == np.float64 and not a.weak_type for a in avals):
      found.append(eqn.primitive.name)
    for param in eqn.params.values():
      for p in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(p, "jaxpr", p)
        if hasattr(inner, "eqns"):
          found += _float64_values(inner)
  return found


class Float32UnderX64Test(chex.TestCase):
  """With x64 on, float32 inputs never meet a float64 value, in any function or derivative.

  So float32 computes the same arithmetic in both modes of the suite, and the float32
  accuracy grids run with x64 off only (see ``_grids.DTYPES``). Integer labels are int64
  here. Checked on the traced programs (value, every first derivative, forward mode), both
  paths of every function: a float64 constant, a float64 intermediate or a float64 result
  fails the test.
  """

  @parameterized.named_parameters((name, name) for name in FUNCTIONS)
  def test_no_float64_value(self, name):
    if not jax.config.jax_enable_x64:
      self.skipTest("float64 values exist only with JAX_ENABLE_X64=1")
    for path, case in cases(name).items():
      args = tuple(
        a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a for a in case.args
      )
      diff = tuple(range(case.n_diff))

      def loss(*a, case=case):
        return jnp.sum(case.call(*a))

      def jvp(*a, case=case, diff=diff):
        def fixed(*xs):
          return case.call(*xs, *a[case.n_diff :])

        return jax.jvp(fixed, a[: case.n_diff], tuple(jnp.ones_like(a[i]) for i in diff))

      programs = {"value": case.call, "grad": jax.grad(loss, argnums=diff), "jvp": jvp}
      for what, fn in programs.items():
        closed = jax.make_jaxpr(fn)(*args)
        outs = [a.dtype for a in closed.out_avals]
        self.assertTrue(all(d == np.float32 for d in outs), f"{path} {what}: outputs {outs}")
        found = sorted(set(_float64_values(closed.jaxpr)))
        self.assertEqual(found, [], f"{name} {path} {what}: float64 values in {found}")

  def test_no_float64_value_in_the_fused_loss(self):
    if not jax.config.jax_enable_x64:
      self.skipTest("float64 values exist only with JAX_ENABLE_X64=1")
    rng = np.random.default_rng(0)
    h, w = (rng.normal(size=s).astype(np.float32) for s in ((8, 4), (4, 16)))
    b, y = np.zeros(16, np.float32), np.arange(8) % 16
    options = {"bias": b, "label_smoothing": 0.1, "z_loss": 1e-4, "logit_softcap": 30.0}

    def loss(h, w):
      return xj.linear_softmax_cross_entropy(h, w, y, **options)

    programs = {
      "value": loss,
      "grad": jax.grad(lambda h, w: jnp.sum(loss(h, w)), argnums=(0, 1)),
      "jvp": lambda h, w: jax.jvp(loss, (h, w), (h, w)),
    }
    for what, fn in programs.items():
      closed = jax.make_jaxpr(fn)(h, w)
      outs = [a.dtype for a in closed.out_avals]
      self.assertTrue(all(d == np.float32 for d in outs), f"{what}: outputs {outs}")
      found = sorted(set(_float64_values(closed.jaxpr)))
      self.assertEqual(found, [], f"linear_softmax_cross_entropy {what}: float64 values in {found}")


if __name__ == "__main__":
  absltest.main()
