r"""Training with ``jax.value_and_grad`` + optax: one pure step, whole runs under ``lax.scan``.

The seed's §4.2: minimise the cross-entropy by gradient descent,

.. math::
  \theta_{t+1} = \theta_t - \eta\, \nabla_\theta L(\theta_t)
  \quad \text{(or any optax update rule)}.

* :func:`train_step` — pure ``(state, batch) -> (state, metrics)``, any optax
  ``GradientTransformation``; :func:`sgd` is the default (learning rate, optional momentum).
* :func:`train_full_batch` / :func:`train_minibatch` — a whole run compiled as one
  ``jax.lax.scan`` under ``jax.jit`` (minibatches: a fresh ``jax.random`` permutation per
  epoch), returning per-step metrics (loss before the step, gradient norm).
* :func:`train_seeds` — many runs at once, ``jax.vmap`` over PRNG keys (purejaxrl style).
* Data parallel — :func:`make_data_mesh`, :func:`shard_batch`, :func:`replicate`: the batch
  axis is sharded over a ``Mesh``, the train state replicated, and the *same* jitted
  functions run SPMD; the mean over the batch becomes an all-reduce inserted by XLA, so the
  result equals the single-device one up to the order of floating-point summation.

``loss_fn(params, x_NxD, y_N) -> scalar`` is any loss: one of :mod:`xent_jax.models`, e.g.
``functools.partial(logistic_regression_loss, l2=1e-2)``, or your own. The models' losses
compute in true float32 on accelerators too (``jax.lax.Precision.HIGHEST``, SPEC §9);
``functools.partial(softmax_regression_loss, precision="tensorfloat32")`` trades that for
speed, and the trainers honour it (a static argument compared by value: no recompile). For
full-batch training on CPU, pass the features as :func:`xent_jax.data.feature_major`
(``[D, N]`` in memory): the gradient's two products over X then both stream memory
(measured: 40% → 110% of the two-reads-of-X roofline per logistic-regression step,
N = 200k, D = 100); a loss outside :mod:`xent_jax.models` receives them as ``[N, D]``. A
models loss is recognised by identity (itself or a ``functools.partial`` of it): a
function wrapping one (``functools.wraps``, ``jax.jit``, ``checked``) is a loss of your own.

The whole runs respect the caller (SPEC §8):

* nothing passed in is donated (the ``params`` and ``state`` you pass stay usable for the
  next run of a sweep); ``donate=True`` lets XLA reuse ``state``'s buffers when you ask;
* one compilation per shape and structure: ``loss_fn``, ``optimizer`` and ``init_fn`` are
  static arguments compared by *value* (:mod:`xent_jax._static`), so the same settings
  built again (a new ``sgd(0.1)``, ``optax.adam(1e-3)``, partial or lambda) share the
  compiled run, and hyperparameters are traced: those of :func:`sgd` live in the optimiser
  state, and the ``l2`` of a partial of a models loss (as a float: ``l2=0`` and ``l2=0.1``
  share a program) and any array keyword of a partial are passed as arguments (a loss of
  your own that needs such a keyword's value while traced, e.g. ``np.asarray(kw)``, gets
  it as a constant instead). Other optax optimisers sweep without recompiling when built
  with ``optax.inject_hyperparams``;
* every argument and the data are checked at the Python entry, where the data are concrete
  (finite features; for a models loss, labels in range), not in the compiled loop; inside a
  caller's ``jax.jit`` only shapes and dtypes can be checked;
* ``log_every``/``hook`` report progress (:class:`Progress`: step k/n, loss, elapsed) from
  inside the scan through ``jax.debug.callback``; off by default, with no callback compiled.

Multi-host
----------
The same code runs on several hosts (processes), each with its own devices::

  jax.distributed.initialize()            # before any other JAX call; reads the cluster env
  mesh = make_data_mesh()                 # all devices of all processes: jax.devices()
  batch = shard_batch(local_batch, mesh)  # each process passes ONLY its own rows
  state = replicate(init_train_state(params, optimizer), mesh)  # same values everywhere
  state, metrics = train_full_batch(state, batch, loss_fn=..., optimizer=..., num_steps=...)

:func:`shard_batch` builds the global array with ``jax.make_array_from_process_local_data``,
so with one process the local rows *are* the global batch and nothing changes. Every
process runs the identical program (SPMD); metrics come back replicated, so any process can
log them (conventionally ``jax.process_index() == 0``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import io_callback
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xent_jax import _core, _validate, models
from xent_jax._static import Static, holds_nan
from xent_jax.data import FeatureMajor

Params = Any  # A pytree of arrays, e.g. {"w": [D], "b": []}.
Batch = tuple[jax.Array, jax.Array]  # (x_NxD, y_N); `xent_jax.data.Batch` is one.
LossFn = Callable[[Params, jax.Array, jax.Array], jax.Array]

__all__ = [
  "TrainState",
  "Progress",
  "init_train_state",
  "sgd",
  "print_progress",
  "train_step",
  "train_full_batch",
  "train_minibatch",
  "train_seeds",
  "make_data_mesh",
  "data_sharding",
  "shard_batch",
  "replicate",
]


class TrainState(NamedTuple):
  """Everything a run carries from step to step.

  Attributes:
    params: model parameters (a pytree).
    opt_state: the optax optimiser state.
    step: number of steps taken, int32 scalar.
  """

  params: Params
  opt_state: optax.OptState
  step: jax.Array


class Progress(NamedTuple):
  """What a progress hook receives, on the host, every ``log_every`` steps of a run.

  Attributes:
    step: k, the steps done (1 ≤ k ≤ n).
    num_steps: n, the steps of the whole run (minibatch runs: epochs × minibatches).
    loss: the loss of step k, before its update (a minibatch's loss in minibatch runs).
    elapsed_s: seconds since the compiled run started executing (compilation excluded),
      read on the host at run time: each execution of a run compiled once, or traced
      inside a caller's ``jax.jit``, is timed from its own start.
  """

  step: int
  num_steps: int
  loss: float
  elapsed_s: float


def print_progress(progress: Progress) -> None:
  """The default progress hook: one line per report, ``step 100/1000  loss 0.3125  1.20 s``.

  >>> print_progress(Progress(100, 1000, 0.3125, 1.2))
  step 100/1000  loss 0.3125  1.20 s
  """
  k, n, loss, elapsed = progress
  print(f"step {k}/{n}  loss {loss:.6g}  {elapsed:.2f} s", flush=True)


def init_train_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
  """The state before the first step.

  Args:
    params: initial parameters (kept, not copied: the trainers never delete them unless
      asked to with ``donate=True``).
    optimizer: the optax transformation that will train them.

  Returns:
    ``TrainState(params, optimizer.init(params), step=0)``.

  >>> init_train_state({"w": jnp.zeros(2)}, sgd(0.1)).step
  Array(0, dtype=int32)
  """
  _check_optimizer("init_train_state", optimizer)
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def sgd(
  learning_rate: float, *, momentum: float | None = None, nesterov: bool = False
) -> optax.GradientTransformation:
  r"""Stochastic gradient descent, the default optimiser (``optax.sgd``), hyperparameters traced.

  .. math::
    v_{t+1} = \mu v_t + g_t, \qquad \theta_{t+1} = \theta_t - \eta\, v_{t+1}
    \quad (\mu = 0: \ \theta_{t+1} = \theta_t - \eta g_t)

  (Nesterov: :math:`\theta_{t+1} = \theta_t - \eta (g_t + \mu v_{t+1})`.)

  Built with ``optax.inject_hyperparams``: η and μ live in the optimiser *state*
  (``opt_state.hyperparams``) as arrays, not in the compiled program, so a sweep over
  them compiles the trainers once (``sgd(0.1)`` and ``sgd(0.2)`` share a compilation).
  The trainers use the η and μ of the optimiser they are passed, also with a state built
  by another ``sgd`` of the same form (both with momentum, or both without); a state
  another optimiser built is refused with an error rather than trained with its settings.

  Args:
    learning_rate: η, finite and > 0.
    momentum: μ in [0, 1), or None for plain gradient descent.
    nesterov: use Nesterov momentum.

  Returns:
    An optax ``GradientTransformation``.

  >>> state = sgd(0.25, momentum=0.9).init({"w": jnp.zeros(2)})
  >>> float(state.hyperparams["learning_rate"]), state.inner_state[0].trace["w"].tolist()
  (0.25, [0.0, 0.0])
  """
  _validate.real("sgd", "learning_rate", learning_rate, low=0.0, open_low=True)
  if momentum is not None:
    _validate.real("sgd", "momentum", momentum, low=0.0, high=1.0, open_high=True)
  if not isinstance(nesterov, bool):
    raise TypeError(f"sgd: `nesterov` must be a bool; got nesterov={nesterov!r}.")
  # As floats: an integer η (sgd(1)) would make the state's η an int32 array, and a later
  # η of 0.5 written into that state would truncate to 0.
  learning_rate = float(learning_rate)
  momentum = None if momentum is None else float(momentum)
  opt = optax.inject_hyperparams(optax.sgd)(
    learning_rate=learning_rate, momentum=momentum, nesterov=nesterov
  )
  sgd_ = _InjectedSGD(*opt)
  sgd_.hyperparams = {"learning_rate": learning_rate}
  if momentum is not None:
    sgd_.hyperparams["momentum"] = momentum
  return sgd_


class _InjectedSGD(optax.GradientTransformationExtraArgs):
  """What :func:`sgd` returns: an optax ``GradientTransformationExtraArgs`` that also knows
  the hyperparameters it was built with (``.hyperparams``); the trainers write them into the
  state they are given, so a state built for another η trains with this optimiser's η."""


def _with_hyperparams_of(fn: str, optimizer, state: TrainState) -> TrainState:
  """``state`` with the optimiser's own η and μ (new scalars; the caller's state untouched),
  after checking the hyperparameters the run will use."""
  wanted = getattr(optimizer, "hyperparams", None)
  held = getattr(state.opt_state, "hyperparams", None)
  if isinstance(wanted, dict) and isinstance(held, dict) and set(wanted) == set(held):
    held = {k: jnp.asarray(wanted[k], _float_dtype(held[k])) for k in held}
    state = state._replace(opt_state=state.opt_state._replace(hyperparams=held))
  _check_hyperparams(fn, held)
  return state


def _check_hyperparams(fn: str, held) -> None:
  """The η, μ, ... an ``optax.inject_hyperparams`` state holds, finite where they are
  concrete: NaN trained silently to NaN parameters."""
  if not isinstance(held, dict):
    return
  for k, v in held.items():
    if not _validate.is_concrete(v) or not jnp.issubdtype(jnp.result_type(v), jnp.floating):
      continue
    if not np.all(np.isfinite(np.asarray(v))):
      raise ValueError(
        f"{fn}: `state.opt_state.hyperparams['{k}']` must be finite; got {np.asarray(v)}."
      )


def _float_dtype(x) -> np.dtype | None:
  """The dtype of ``x`` if it is floating, else None (the default float): a float η is never
  truncated to an integer state's dtype."""
  dtype = jnp.result_type(x)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else None


def _global_norm(tree: Params) -> jax.Array:
  # Written out: optax has renamed its tree-norm helper across the versions we support.
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def train_step(
  state: TrainState, batch: Batch, *, loss_fn: LossFn, optimizer: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
  r"""One optimiser step on one batch. Pure: jit, vmap and scan it freely.

  .. math::
    \ell, g = L(\theta_t), \nabla_\theta L(\theta_t), \qquad
    \theta_{t+1} = \theta_t + \text{update}(g, \text{opt\_state}_t)

  Args:
    state: the current :class:`TrainState`.
    batch: ``(x_NxD, y_N)``; features may be :class:`~xent_jax.data.FeatureMajor` for any
      loss (a loss outside :mod:`xent_jax.models` receives them as ``[N, D]``).
    loss_fn: ``loss_fn(params, x_NxD, y_N) -> scalar``.
    optimizer: any optax ``GradientTransformation``.

  Returns:
    ``(new_state, metrics)`` with scalar metrics ``loss`` (at the parameters *before* the
    step, i.e. the value ``value_and_grad`` computes for free) and ``grad_norm`` (global L2
    norm of the gradient).

  >>> from xent_jax.models import init_logistic_regression, logistic_regression_loss
  >>> opt = sgd(0.5)
  >>> state = init_train_state(init_logistic_regression(1), opt)
  >>> batch = (jnp.array([[1.0], [-1.0]]), jnp.array([1, 0]))
  >>> _, m = train_step(state, batch, loss_fn=logistic_regression_loss, optimizer=opt)
  >>> float(m["loss"])  # log 2  # doctest: +ELLIPSIS
  0.6931...
  """
  _check_state("train_step", state, optimizer)
  _check_batch("train_step", batch, loss_fn, state.params)
  state = _with_hyperparams_of("train_step", optimizer, state)
  return _step(state, batch, _on_rows_unless_ours(loss_fn), optimizer.update)


def _step(state: TrainState, batch: Batch, loss_fn: LossFn, update) -> tuple[TrainState, dict]:
  x, y = batch
  loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
  updates, opt_state = update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": _global_norm(grads)}
  return TrainState(params, opt_state, state.step + 1), metrics


# ------------------------------------------------------------------ whole runs, compiled
#
# Each public trainer checks its arguments and data in Python (where the data are
# concrete), then calls a jitted core. The core's static arguments are compared by value
# (xent_jax._static.Static): an equal optimiser or loss built again hits the cache.
# Hyperparameters are traced: those of `sgd` live in the optimiser state; the `l2` of a
# partial of a models loss, and any array keyword of a partial, are passed as arguments.


def _models_loss(loss_fn):
  """The :mod:`xent_jax.models` loss that ``loss_fn`` is, or is a ``functools.partial`` of,
  found by identity; None for any other function.

  Identity, not a name or ``__wrapped__``: a function decorated with
  ``functools.wraps(models_loss)`` (or a ``jax.jit``, ``checked`` or a trace counter of one)
  may compute anything, so it is a user loss: it gets the features as ``[N, D]`` and the
  checks of any loss.
  """
  func = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
  return next((loss for loss in models._LOSSES if func is loss), None)


def _loss_parts(loss_fn: LossFn) -> tuple[Static, dict[str, Any]]:
  """``loss_fn`` as (a static part compared by value, its traced keyword arguments).

  Traced: the array keywords of a partial, and the hyperparameters of a models loss
  (``l2``), the latter as Python floats whatever their type (``0``, ``np.float32(0.1)``,
  a 0-d array), so that a sweep passing ``l2=0`` then ``l2=0.1`` traces one program.
  """
  if not isinstance(loss_fn, functools.partial):
    return Static(loss_fn), {}
  ours = _models_loss(loss_fn) is not None
  dynamic, static = {}, {}
  for name, value in loss_fn.keywords.items():
    if ours and name in models._TRACED_KEYWORDS:  # a real scalar: _check_batch made sure
      dynamic[name] = value if isinstance(value, jax.core.Tracer) else float(value)
    elif isinstance(value, jax.Array | np.ndarray):
      dynamic[name] = value
    else:
      static[name] = value
  if ours and "precision" in static:  # its canonical form: "highest" and HIGHEST are equal
    static["precision"] = _core.check_precision(static["precision"], "loss_fn")
  return Static(functools.partial(loss_fn.func, *loss_fn.args, **static)), dynamic


# What tracing raises when a function needs the value of a traced array (np.asarray(a),
# float(a), `if a > 0:`).
_NEEDS_A_VALUE = (
  jax.errors.ConcretizationTypeError,
  jax.errors.TracerArrayConversionError,
  jax.errors.TracerIntegerConversionError,
)
# The losses (static part, traced keyword names) whose keywords must stay concrete.
_KEYWORDS_KEPT_CONCRETE: set[tuple[Static, tuple[str, ...]]] = set()


def _run_with_loss(run, loss_fn: LossFn, *args, **kwargs):
  """``run(*args, loss_fn=..., loss_args=..., **kwargs)`` with ``loss_fn`` split by
  :func:`_loss_parts`: its array keywords traced, so a sweep over them compiles once.

  A loss that needs the value of such a keyword while it is traced (a user loss calling
  ``np.asarray(kw)`` or ``float(kw)``) fails to trace that way; it then runs with every
  keyword static, compared by value (arrays of up to 64 entries, else by identity), as a
  closure would be, and is remembered so that the next call goes there directly.
  """
  loss, loss_args = _loss_parts(loss_fn)
  if not loss_args:
    return run(*args, loss_fn=loss, loss_args=loss_args, **kwargs)
  kept = (loss, tuple(sorted(loss_args)))
  if kept not in _KEYWORDS_KEPT_CONCRETE:
    try:
      return run(*args, loss_fn=loss, loss_args=loss_args, **kwargs)
    except _NEEDS_A_VALUE:
      if len(_KEYWORDS_KEPT_CONCRETE) >= 256:  # a bound on what the set keeps alive
        _KEYWORDS_KEPT_CONCRETE.clear()
      _KEYWORDS_KEPT_CONCRETE.add(kept)
  # (The same error again if it came from elsewhere, e.g. the caller's traced data.)
  return run(*args, loss_fn=Static(loss_fn), loss_args={}, **kwargs)


def _on_rows_unless_ours(loss_fn: LossFn) -> LossFn:
  """The loss, taking FeatureMajor features as ``[N, D]`` if it is not a models loss."""
  if _models_loss(loss_fn) is not None:
    return loss_fn  # reads [D, N] directly (the fast layout on CPU)

  def loss_on_rows(params, x, y):
    return loss_fn(params, x.x_DxN.T if isinstance(x, FeatureMajor) else x, y)

  return loss_on_rows


def _core_loss(loss_fn: Static, loss_args: dict[str, Any]) -> LossFn:
  fn = functools.partial(loss_fn.value, **loss_args) if loss_args else loss_fn.value
  return _on_rows_unless_ours(fn)


def _report(progress: Static | None, num_steps: int, start, t, loss) -> None:
  """Calls the progress hook on the host after steps k·log_every and n (nothing if off)."""
  if progress is None:
    return
  log_every, hook = progress.value
  done = t + 1
  callback = functools.partial(_call_hook, hook, num_steps)
  jax.lax.cond(
    (done % log_every == 0) | (done == num_steps),
    lambda: jax.debug.callback(callback, done, loss, start),
    lambda: None,
  )


def _call_hook(hook, num_steps: int, done, loss, start) -> None:
  elapsed = (time.monotonic_ns() - _ns(start)) / 1e9
  hook(Progress(int(done), num_steps, float(loss), elapsed))


def _run_start(progress: Static | None) -> jax.Array | None:
  """The host's monotonic clock when the compiled run starts, read by a host callback at run
  time (a value read while tracing would be fixed into the program: a run compiled once,
  or inside a caller's jit, would time every later execution from that first trace)."""
  if progress is None:
    return None
  return io_callback(_clock, jax.ShapeDtypeStruct((2,), np.uint32), ordered=False)


def _clock() -> np.ndarray:
  """The host's monotonic clock in ns as two uint32 (no x64 needed)."""
  ns = time.monotonic_ns()
  return np.array([ns >> 32, ns & 0xFFFFFFFF], np.uint32)


def _ns(clock) -> int:
  hi, lo = (int(v) for v in np.asarray(clock))
  return hi << 32 | lo


def _full_batch(state, batch, loss_args, start, *, loss_fn, update, num_steps, progress):
  loss = _core_loss(loss_fn, loss_args)

  def body(state, t):
    state, metrics = _step(state, batch, loss, update.value)
    _report(progress, num_steps, start, t, metrics["loss"])
    return state, metrics

  ts = None if progress is None else jnp.arange(num_steps)
  return jax.lax.scan(body, state, ts, length=num_steps)


def _full_batch_run(state, batch, *, loss_args, **static):
  """The compiled full-batch run: :func:`_full_batch`, its clock read when it starts."""
  return _full_batch(state, batch, loss_args, _run_start(static["progress"]), **static)


_FULL_BATCH_STATIC = ("loss_fn", "update", "num_steps", "progress")
_full_batch_jit = jax.jit(_full_batch_run, static_argnames=_FULL_BATCH_STATIC)
_full_batch_donating = jax.jit(
  _full_batch_run, static_argnames=_FULL_BATCH_STATIC, donate_argnames="state"
)


def train_full_batch(
  state: TrainState,
  batch: Batch,
  *,
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  num_steps: int,
  log_every: int | None = None,
  hook: Callable[[Progress], None] | None = None,
  donate: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  r"""``num_steps`` full-batch steps, compiled as one ``lax.scan``.

  .. math::
    \theta_{t+1} = \theta_t + \text{update}\big(\nabla L(\theta_t; X, y)\big),
    \quad t = 0, \dots, T - 1

  Compiled once per shape and structure: equal ``loss_fn``/``optimizer`` objects built
  again (a new ``sgd(0.1)``, a new ``functools.partial``, a lambda re-created in a loop)
  share the compilation, and so do runs differing only in the learning rate and momentum
  of :func:`sgd` or the ``l2`` of a partial of a :mod:`xent_jax.models` loss (traced).

  Args:
    state: initial :class:`TrainState`; left intact (usable again) unless ``donate``.
    batch: ``(x_NxD, y_N)``, the whole training set (may be sharded, see
      :func:`shard_batch`); checked first (finite features; labels in range for the
      models' losses).
    loss_fn: ``loss_fn(params, x_NxD, y_N) -> scalar``.
    optimizer: optax transformation.
    num_steps: T ≥ 1.
    log_every: report progress every this many steps (and after the last), from inside
      the compiled loop; None (default): no report, and no callback in the program.
    hook: called on the host with a :class:`Progress` at each report; default
      :func:`print_progress`.
    donate: let XLA reuse ``state``'s buffers for the result (no second copy of the
      parameters and optimiser state during the run); ``state``, and the ``params`` it
      was built from, are deleted.

  Returns:
    ``(final_state, metrics)`` with each metric of shape ``[T]``.

  >>> from xent_jax.models import init_logistic_regression, logistic_regression_loss
  >>> opt = sgd(1.0)
  >>> batch = (jnp.array([[1.0], [-1.0], [0.5]]), jnp.array([1, 0, 0]))
  >>> state = init_train_state(init_logistic_regression(1), opt)
  >>> state, m = train_full_batch(state, batch, loss_fn=logistic_regression_loss,
  ...                             optimizer=opt, num_steps=100, log_every=50)
  step 50/100  loss ...
  step 100/100  loss ...
  >>> m["loss"].shape, bool(m["loss"][-1] < m["loss"][0])
  ((100,), True)
  """
  fn = "train_full_batch"
  _validate.count(fn, "num_steps", num_steps)
  progress = _progress(fn, log_every, hook)
  _check_state(fn, state, optimizer)
  _check_batch(fn, batch, loss_fn, state.params)
  state = _with_hyperparams_of(fn, optimizer, state)
  run = _full_batch_jit
  if _donate(fn, donate):
    run, state = _full_batch_donating, _unaliased(state)
  return _run_with_loss(
    run,
    loss_fn,
    state,
    batch,
    update=Static(optimizer.update),
    num_steps=num_steps,
    progress=progress,
  )


def _is_feature_major(a) -> bool:
  return isinstance(a, FeatureMajor)


def _map_examples(fn, feature_major_fn, batch):
  """Applies ``fn`` to each array of ``batch`` and ``feature_major_fn`` to each FeatureMajor."""
  return jax.tree.map(
    lambda a: feature_major_fn(a) if _is_feature_major(a) else fn(a),
    batch,
    is_leaf=_is_feature_major,
  )


def _epoch_batches(key: jax.Array, batch: Batch, batch_size: int) -> Batch:
  """A shuffled epoch as ``[num_batches, batch_size, ...]`` (the last partial batch dropped)."""
  num_examples = _num_examples(batch)
  num_batches = num_examples // batch_size
  perm = jax.random.permutation(key, num_examples)[: num_batches * batch_size]
  perm_MxB = perm.reshape(num_batches, batch_size)
  # FeatureMajor features become [M] minibatches of [D, B]: the scan walks the leading axis.
  return _map_examples(
    lambda a: a[perm_MxB], lambda f: FeatureMajor(jnp.moveaxis(f.x_DxN[:, perm_MxB], 1, 0)), batch
  )


def _minibatch(
  state,
  batch,
  key,
  loss_args,
  start,
  *,
  loss_fn,
  update,
  num_epochs,
  batch_size,
  batch_sharding,
  progress,
):
  loss = _core_loss(loss_fn, loss_args)
  num_batches = _num_examples(batch) // batch_size

  def minibatch_step(state, t_and_minibatch):
    t, minibatch = t_and_minibatch
    if batch_sharding is not None:
      minibatch = _map_examples(
        lambda a: jax.lax.with_sharding_constraint(a, batch_sharding),
        lambda f: FeatureMajor(
          jax.lax.with_sharding_constraint(f.x_DxN, _feature_major_sharding(batch_sharding))
        ),
        minibatch,
      )
    state, metrics = _step(state, minibatch, loss, update.value)
    _report(progress, num_epochs * num_batches, start, t, metrics["loss"])
    return state, metrics

  def epoch(state, e_and_key):
    e, epoch_key = e_and_key
    ts = None if progress is None else e * num_batches + jnp.arange(num_batches)
    return jax.lax.scan(minibatch_step, state, (ts, _epoch_batches(epoch_key, batch, batch_size)))

  es = None if progress is None else jnp.arange(num_epochs)
  return jax.lax.scan(epoch, state, (es, jax.random.split(key, num_epochs)))


def _minibatch_run(state, batch, key, *, loss_args, **static):
  """The compiled minibatch run: :func:`_minibatch`, its clock read when it starts."""
  return _minibatch(state, batch, key, loss_args, _run_start(static["progress"]), **static)


_MINIBATCH_STATIC = (
  "loss_fn",
  "update",
  "num_epochs",
  "batch_size",
  "batch_sharding",
  "progress",
)
_minibatch_jit = jax.jit(_minibatch_run, static_argnames=_MINIBATCH_STATIC)
_minibatch_donating = jax.jit(
  _minibatch_run, static_argnames=_MINIBATCH_STATIC, donate_argnames="state"
)


def train_minibatch(
  state: TrainState,
  batch: Batch,
  key: jax.Array,
  *,
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  num_epochs: int,
  batch_size: int,
  batch_sharding: NamedSharding | None = None,
  log_every: int | None = None,
  hook: Callable[[Progress], None] | None = None,
  donate: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  r"""Shuffled minibatch epochs, compiled as nested ``lax.scan``.

  Epoch ``e`` visits the examples in the order ``jax.random.permutation(k_e, N)``, with
  ``k_0, …, k_{E-1} = jax.random.split(key, E)``, in ``M = N // B`` minibatches (the
  ``N mod B`` examples left over in an epoch are skipped that epoch). Compiled once per
  shape and structure, as :func:`train_full_batch`.

  .. math::
    \theta \leftarrow \theta + \text{update}\Big(\nabla \frac{1}{B} \sum_{n \in
    \text{batch}_m} \ell_n(\theta)\Big), \quad m = 1, \dots, M, \text{ each epoch}

  Args:
    state: initial :class:`TrainState`; left intact unless ``donate``.
    batch: ``(x_NxD, y_N)``, the whole training set (checked first).
    key: PRNG key of the shuffles.
    loss_fn: ``loss_fn(params, x_BxD, y_B) -> scalar``.
    optimizer: optax transformation.
    num_epochs: E ≥ 1.
    batch_size: B in [1, N].
    batch_sharding: for data parallelism, the sharding of a ``[B, ...]`` minibatch (e.g.
      ``NamedSharding(mesh, P("batch"))``); each minibatch is constrained to it so the
      step stays data parallel. None: let XLA decide.
    log_every: report progress every this many minibatch steps (and after the last);
      None: off, and no callback in the program.
    hook: called on the host with a :class:`Progress`; default :func:`print_progress`.
    donate: let XLA reuse (and delete) ``state``'s buffers.

  Returns:
    ``(final_state, metrics)`` with each metric of shape ``[E, M]``.

  >>> from xent_jax.models import init_logistic_regression, logistic_regression_loss
  >>> opt = sgd(0.5)
  >>> batch = (jnp.linspace(-1, 1, 10)[:, None], jnp.arange(10) % 2)
  >>> state = init_train_state(init_logistic_regression(1), opt)
  >>> _, m = train_minibatch(state, batch, jax.random.key(0), loss_fn=logistic_regression_loss,
  ...                        optimizer=opt, num_epochs=3, batch_size=4)
  >>> m["loss"].shape
  (3, 2)
  """
  fn = "train_minibatch"
  _validate.count(fn, "num_epochs", num_epochs)
  progress = _progress(fn, log_every, hook)
  _check_state(fn, state, optimizer)
  _check_batch(fn, batch, loss_fn, state.params)
  _check_batch_size(fn, batch_size, _num_examples(batch))
  _validate.prng_key(fn, "key", key, ndim=0)
  if batch_sharding is not None and not isinstance(batch_sharding, NamedSharding):
    raise TypeError(
      f"{fn}: `batch_sharding` must be a jax.sharding.NamedSharding (e.g. "
      f"data_sharding(make_data_mesh())) or None; got {batch_sharding!r:.80}."
    )
  state = _with_hyperparams_of(fn, optimizer, state)
  run = _minibatch_jit
  if _donate(fn, donate):
    run, state = _minibatch_donating, _unaliased(state)
  return _run_with_loss(
    run,
    loss_fn,
    state,
    batch,
    key,
    update=Static(optimizer.update),
    num_epochs=num_epochs,
    batch_size=batch_size,
    batch_sharding=batch_sharding,
    progress=progress,
  )


@functools.partial(jax.jit, static_argnames="init_fn")
def _init_seeds(keys_S, *, init_fn):
  """(params of each run, shuffle key of each run): ``init_fn`` of the first half of each key."""
  init_keys, shuffle_keys = jax.vmap(jax.random.split, out_axes=1)(keys_S)
  return jax.vmap(init_fn.value)(init_keys), shuffle_keys


def _seeds(states, shuffle_keys, batch, *, loss_args, batch_size, num_epochs, **static):
  start = _run_start(static["progress"])  # once, for all the runs
  if batch_size is None:
    run = lambda state, key: _full_batch(
      state, batch, loss_args, start, num_steps=num_epochs, **static
    )
  else:
    run = lambda state, key: _minibatch(
      state,
      batch,
      key,
      loss_args,
      start,
      num_epochs=num_epochs,
      batch_size=batch_size,
      batch_sharding=None,
      **static,
    )
  return jax.vmap(run)(states, shuffle_keys)


# Each leaf in a buffer of its own (a jitted copy: new buffers, also of a repeated input).
_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))

# The states are the library's own (built from init_fn, the optimiser state copied): donated.
_seeds_jit = jax.jit(
  _seeds,
  static_argnames=("loss_fn", "update", "num_epochs", "batch_size", "progress"),
  donate_argnames="states",
)


def train_seeds(
  keys_S: jax.Array,
  batch: Batch,
  *,
  init_fn: Callable[[jax.Array], Params],
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  num_epochs: int,
  batch_size: int | None = None,
  log_every: int | None = None,
  hook: Callable[[Progress], None] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  r"""S independent runs at once: ``jax.vmap`` over PRNG keys, one compiled program.

  Run ``s`` splits ``keys_S[s]`` into an init key (``params = init_fn(k_init)``) and a
  shuffle key, then trains exactly like :func:`train_full_batch` (``batch_size=None``,
  ``num_epochs`` steps) or :func:`train_minibatch`. Each run equals the same run done
  alone up to float rounding (batched, XLA may sum in another order: about 1e-7 relative
  in float32). Equal ``init_fn``, ``loss_fn`` and ``optimizer`` objects built again (a lambda
  re-created per call) share the compilation; the initial states are built outside the
  compiled run (``optimizer.init`` under ``jax.vmap``), so the hyperparameters of
  :func:`sgd` are traced here too. The run reuses (donates) only buffers it made: the
  parameters ``init_fn`` gave and a copy of the optimiser state (which may hold the
  parameters themselves, or arrays of yours).

  .. math::
    \big(\theta^{(s)}_T\big)_{s=1}^S = \text{vmap}(\text{run})(k_1, \dots, k_S)

  Args:
    keys_S: PRNG keys, ``[S]`` (e.g. ``jax.random.split(key, S)``).
    batch: ``(x_NxD, y_N)``, shared by all runs (checked first).
    init_fn: ``key -> params``.
    loss_fn: ``loss_fn(params, x, y) -> scalar``.
    optimizer: optax transformation.
    num_epochs: full-batch steps, or minibatch epochs (≥ 1).
    batch_size: None for full batch, else the minibatch size, in [1, N].
    log_every: report progress every this many steps; the hook is then called once per
      run (S times) at each report. None: off, no callback in the program.
    hook: called on the host with a :class:`Progress`; default :func:`print_progress`.

  Returns:
    ``(states, metrics)``: every leaf gets a leading ``[S]`` axis (metrics ``[S, T]`` or
    ``[S, E, M]``).

  >>> from xent_jax.models import init_logistic_regression, logistic_regression_loss
  >>> init = lambda key: init_logistic_regression(1, key=key)
  >>> batch = (jnp.array([[1.0], [-1.0]]), jnp.array([1, 0]))
  >>> states, m = train_seeds(jax.random.split(jax.random.key(0), 4), batch, init_fn=init,
  ...     loss_fn=logistic_regression_loss, optimizer=sgd(0.1), num_epochs=5)
  >>> states.params["w"].shape, m["loss"].shape
  ((4, 1), (4, 5))
  """
  fn = "train_seeds"
  _validate.prng_key(fn, "keys_S", keys_S, ndim=1)
  _validate.count(fn, "num_epochs", num_epochs)
  _validate.callable_(fn, "init_fn", init_fn)
  _check_optimizer(fn, optimizer)
  progress = _progress(fn, log_every, hook)
  params_shape = jax.eval_shape(init_fn, jax.ShapeDtypeStruct(keys_S.shape[1:], keys_S.dtype))
  _check_batch(fn, batch, loss_fn, params_shape)
  if batch_size is not None:
    _check_batch_size(fn, batch_size, _num_examples(batch))
  params_S, shuffle_keys = _init_seeds(keys_S, init_fn=Static(init_fn))
  num_runs = len(shuffle_keys)
  # Copied: the run donates the states, and an optimiser's state may hold the params
  # themselves (donated twice: an error), or arrays of the caller's.
  opt_state_S = _copy(jax.vmap(optimizer.init)(params_S))
  states = TrainState(params_S, opt_state_S, jnp.zeros(num_runs, jnp.int32))
  return _run_with_loss(
    _seeds_jit,
    loss_fn,
    states,
    shuffle_keys,
    batch,
    update=Static(optimizer.update),
    num_epochs=num_epochs,
    batch_size=batch_size,
    progress=progress,
  )


# ------------------------------------------------------------------------------- checks


def _check_optimizer(fn: str, optimizer) -> None:
  if not (
    callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
  ):
    raise TypeError(
      f"{fn}: `optimizer` must be an optax GradientTransformation (with init and update); "
      f"got {optimizer!r:.80}."
    )
  if holds_nan(optimizer.update):
    raise ValueError(
      f"{fn}: `optimizer` holds a NaN setting (e.g. optax.sgd(float('nan'))), which would "
      "train to NaN parameters."
    )


def _check_state(fn: str, state, optimizer) -> None:
  if not isinstance(state, TrainState):
    raise TypeError(
      f"{fn}: `state` must be a TrainState, e.g. init_train_state(params, optimizer); "
      f"got {type(state).__name__}."
    )
  _check_optimizer(fn, optimizer)
  expected = _opt_state_layout(Static(optimizer.init), *_layout(state.params))
  if expected != _layout(state.opt_state):
    raise ValueError(
      f"{fn}: `state.opt_state` was not made by `optimizer` (its structure or shapes differ, "
      "e.g. a state of sgd without momentum given to sgd with momentum, or to adam); "
      "build the state with init_train_state(params, optimizer)."
    )


def _layout(tree) -> tuple:
  """A pytree's structure and leaf shapes (hashable; dtypes left out)."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(np.shape(leaf) for leaf in leaves)


@functools.lru_cache(maxsize=64)
def _opt_state_layout(init: Static, treedef, shapes) -> tuple:
  """The layout of ``init``'s state for parameters of this layout (traced once per layout)."""
  params = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
  return _layout(jax.eval_shape(init.value, params))


def _donate(fn: str, donate) -> bool:
  if not isinstance(donate, bool):
    raise TypeError(f"{fn}: `donate` must be a bool; got donate={donate!r}.")
  return donate


def _unaliased(state):
  """``state`` with each array leaf in a buffer of its own, for donation: a leaf that
  appears twice (tied weights, an optimiser state that holds the params) is copied, since
  XLA cannot donate one buffer twice ("Attempt to donate the same buffer twice")."""
  seen = set()

  def own(leaf):
    if isinstance(leaf, jax.Array) and id(leaf) in seen:
      return jnp.copy(leaf)
    seen.add(id(leaf))
    return leaf

  return jax.tree.map(own, state)


def _progress(fn: str, log_every, hook) -> Static | None:
  """The static (log_every, hook) of a run that reports progress, or None."""
  if log_every is None:
    if hook is not None:
      raise ValueError(f"{fn}: `hook` needs `log_every` (call it every how many steps?).")
    return None
  _validate.count(fn, "log_every", log_every)
  _validate.callable_(fn, "hook", hook, optional=True)
  _core.check_host_callbacks(fn, "`log_every` reports progress")
  return Static((int(log_every), print_progress if hook is None else hook))


def _num_examples(batch) -> int:
  x = batch[0]
  return x.shape[0] if isinstance(x, FeatureMajor) else np.shape(jax.tree.leaves(x)[0])[0]


def _check_batch_size(fn: str, batch_size, num_examples: int) -> None:
  _validate.count(fn, "batch_size", batch_size)
  if batch_size > num_examples:
    raise ValueError(
      f"{fn}: `batch_size` must be in [1, N={num_examples}]; got batch_size={batch_size}."
    )


def _check_batch(fn: str, batch, loss_fn, params) -> None:
  """Shapes and dtypes of ``batch`` always; its values when concrete.

  For a loss of :mod:`xent_jax.models` (also under ``functools.partial``), exactly that
  loss's checks (labels 0/1 or in [0, 1], or classes in ``[0, K)``); for any other loss,
  real dtypes, a common example axis and finite values.
  """
  _validate.callable_(fn, "loss_fn", loss_fn)
  if not isinstance(batch, tuple) or len(batch) != 2:
    raise TypeError(f"{fn}: `batch` must be a pair (x_NxD, y_N); got {type(batch).__name__}.")
  x, y = batch
  base = _models_loss(loss_fn)
  if base is not None:
    models._check_loss_data(fn, base, params, x, y)
    keywords = loss_fn.keywords if isinstance(loss_fn, functools.partial) else {}
    if "l2" in keywords:
      _validate.real(fn, "l2", keywords["l2"], low=0.0)
    if "precision" in keywords:
      _core.check_precision(keywords["precision"], fn)
    return
  leaves = [("x_NxD", leaf) for leaf in jax.tree.leaves(x, is_leaf=_is_feature_major)]
  leaves += [("y_N", leaf) for leaf in jax.tree.leaves(y)]
  sizes = set()
  for name, leaf in leaves:
    feature_major = isinstance(leaf, FeatureMajor)
    if feature_major:  # its values are checked as [D, N]: named so (and indexed so)
      name = f"{name}.x_DxN"
    leaf = _validate.array(fn, name, leaf.x_DxN if feature_major else leaf)
    if feature_major and leaf.ndim != 2:
      raise ValueError(f"{fn}: `{name}` must be a [D, N] array; got shape {leaf.shape}.")
    if leaf.ndim == 0:
      raise ValueError(f"{fn}: `{name}` must have an example axis; got a scalar.")
    sizes.add(leaf.shape[1 if feature_major else 0])
    _validate.values_in(fn, name, leaf)
  if 0 in sizes:  # a mean over no examples: NaN
    raise ValueError(f"{fn}: `batch` must hold at least one example; got N = 0.")
  if len(sizes) > 1:
    raise ValueError(
      f"{fn}: `batch` arrays must share their example axis N; got sizes {sorted(sizes)}."
    )


# ------------------------------------------------------------------------ data parallel


def make_data_mesh(devices=None, *, axis_name: str = "batch") -> Mesh:
  """A 1-D device mesh for data parallelism.

  Args:
    devices: the devices, default ``jax.devices()`` (all devices of all processes).
    axis_name: name of the mesh axis the batch is sharded over.

  Returns:
    ``Mesh(devices, (axis_name,))``.

  >>> make_data_mesh().axis_names
  ('batch',)
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (axis_name,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch on ``mesh``: leading (example) axis split over the mesh axis.

  >>> data_sharding(make_data_mesh()).spec
  P('batch',)
  """
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
  r"""Places a batch with its example axis sharded over ``mesh`` (data parallelism).

  .. math::
    X = [X^{(1)}; \dots; X^{(P)}], \quad X^{(p)} \text{ on device } p

  Each process passes only its own rows (with one process: the whole batch); the global
  array is assembled with ``jax.make_array_from_process_local_data``.

  Args:
    batch: a pytree of arrays with a common leading axis N (e.g. ``(x_NxD, y_N)``);
      :class:`~xent_jax.data.FeatureMajor` features are split along their N axis.
    mesh: a 1-D mesh from :func:`make_data_mesh`.

  Returns:
    The same pytree, as global ``jax.Array`` sharded ``P(axis)`` on the example axis.

  Raises:
    ValueError: if N is not divisible by the number of devices per process.

  >>> shard_batch((jnp.ones((4, 2)), jnp.zeros(4)), make_data_mesh())[0].shape
  (4, 2)
  """
  _check_mesh("shard_batch", mesh)
  sharding = data_sharding(mesh)
  num_local = len(mesh.local_devices)

  def place(a, sharding=sharding, axis=0):
    a = np.asarray(a)
    if a.ndim <= axis or a.shape[axis] % num_local:
      raise ValueError(
        f"batch arrays need an example axis divisible by the {num_local} local devices of "
        f"the mesh; got a batch array of shape {a.shape} (example axis {axis})."
      )
    return jax.make_array_from_process_local_data(sharding, a)

  return _map_examples(
    place, lambda f: FeatureMajor(place(f.x_DxN, _feature_major_sharding(sharding), axis=1)), batch
  )


def _feature_major_sharding(sharding: NamedSharding) -> NamedSharding:
  """The sharding of FeatureMajor features ``[D, N]``: ``sharding``'s example axis on N."""
  return NamedSharding(sharding.mesh, P(None, *sharding.spec))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (params, train state) fully replicated on every device of ``mesh``.

  Args:
    tree: a pytree of arrays, identical on every process.
    mesh: the mesh.

  Returns:
    The pytree with every leaf sharded ``P()`` (a full copy per device).

  >>> replicate({"w": jnp.zeros(2)}, make_data_mesh())["w"].sharding.spec
  P()
  """
  _check_mesh("replicate", mesh)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _check_mesh(fn: str, mesh) -> None:
  if not isinstance(mesh, Mesh) or not mesh.axis_names:
    raise TypeError(
      f"{fn}: `mesh` must be a jax.sharding.Mesh with at least one axis (e.g. "
      f"make_data_mesh()); got {mesh!r:.80}."
    )
