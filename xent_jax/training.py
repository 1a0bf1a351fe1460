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

``loss_fn(params, x_NxD, y_N) -> scalar`` is any loss of :mod:`xent_jax.models`, e.g.
``functools.partial(logistic_regression_loss, l2=1e-2)``. For full-batch training on CPU,
pass the features as :func:`xent_jax.data.feature_major` (``[D, N]`` in memory): the
gradient's two products over X then both stream memory (measured: 40% → 110% of the
two-reads-of-X roofline per logistic-regression step, N = 200k, D = 100).
``loss_fn``, ``optimizer`` and the integer sizes are static arguments of the jitted runs:
build them once and reuse them, or every call recompiles.

The whole-run functions *donate* ``state``: its buffers are reused for the returned state
(no second copy of parameters and optimiser state lives during the run), so do not use the
``state`` you passed in afterwards (JAX raises if you do).

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
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xent_jax.data import FeatureMajor

Params = Any  # A pytree of arrays, e.g. {"w": [D], "b": []}.
Batch = tuple[jax.Array, jax.Array]  # (x_NxD, y_N); `xent_jax.data.Batch` is one.
LossFn = Callable[[Params, jax.Array, jax.Array], jax.Array]

__all__ = [
  "TrainState",
  "init_train_state",
  "sgd",
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


def init_train_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
  """The state before the first step.

  Args:
    params: initial parameters.
    optimizer: the optax transformation that will train them.

  Returns:
    ``TrainState(params, optimizer.init(params), step=0)``.

  >>> init_train_state({"w": jnp.zeros(2)}, sgd(0.1)).step
  Array(0, dtype=int32)
  """
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def sgd(
  learning_rate: float, *, momentum: float | None = None, nesterov: bool = False
) -> optax.GradientTransformation:
  r"""Stochastic gradient descent, the default optimiser (``optax.sgd``).

  .. math::
    v_{t+1} = \mu v_t + g_t, \qquad \theta_{t+1} = \theta_t - \eta\, v_{t+1}
    \quad (\mu = 0: \ \theta_{t+1} = \theta_t - \eta g_t)

  (Nesterov: :math:`\theta_{t+1} = \theta_t - \eta (g_t + \mu v_{t+1})`.)

  Args:
    learning_rate: η > 0.
    momentum: μ in [0, 1), or None for plain gradient descent.
    nesterov: use Nesterov momentum.

  Returns:
    An optax ``GradientTransformation``.

  >>> sgd(0.1, momentum=0.9).init({"w": jnp.zeros(2)})[0].trace["w"].round(6).tolist()
  [0.0, 0.0]
  """
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0; got learning_rate={learning_rate}.")
  if momentum is not None and not 0 <= momentum < 1:
    raise ValueError(f"momentum must be in [0, 1) or None; got momentum={momentum}.")
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


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
    batch: ``(x_NxD, y_N)``.
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
  >>> round(float(m["loss"]), 6)
  0.693147
  """
  x_NxD, y_N = batch
  loss, grads = jax.value_and_grad(loss_fn)(state.params, x_NxD, y_N)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": _global_norm(grads)}
  return TrainState(params, opt_state, state.step + 1), metrics


@functools.partial(
  jax.jit, static_argnames=("loss_fn", "optimizer", "num_steps"), donate_argnames="state"
)
def train_full_batch(
  state: TrainState,
  batch: Batch,
  *,
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  num_steps: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
  r"""``num_steps`` full-batch steps, compiled as one ``lax.scan`` (``state`` is donated).

  .. math::
    \theta_{t+1} = \theta_t + \text{update}\big(\nabla L(\theta_t; X, y)\big),
    \quad t = 0, \dots, T - 1

  Args:
    state: initial :class:`TrainState` (donated: do not reuse it).
    batch: ``(x_NxD, y_N)``, the whole training set (may be sharded, see
      :func:`shard_batch`).
    loss_fn: ``loss_fn(params, x_NxD, y_N) -> scalar`` (static).
    optimizer: optax transformation (static).
    num_steps: T (static).

  Returns:
    ``(final_state, metrics)`` with each metric of shape ``[T]``.

  >>> from xent_jax.models import init_logistic_regression, logistic_regression_loss
  >>> opt = sgd(1.0)
  >>> batch = (jnp.array([[1.0], [-1.0], [0.5]]), jnp.array([1, 0, 0]))
  >>> state = init_train_state(init_logistic_regression(1), opt)
  >>> state, m = train_full_batch(state, batch, loss_fn=logistic_regression_loss,
  ...                             optimizer=opt, num_steps=100)
  >>> m["loss"].shape, bool(m["loss"][-1] < m["loss"][0])
  ((100,), True)
  """
  step = functools.partial(train_step, batch=batch, loss_fn=loss_fn, optimizer=optimizer)
  return jax.lax.scan(lambda s, _: step(s), state, length=num_steps)


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
  num_examples = batch[0].shape[0]
  num_batches = num_examples // batch_size
  perm = jax.random.permutation(key, num_examples)[: num_batches * batch_size]
  perm_MxB = perm.reshape(num_batches, batch_size)
  # FeatureMajor features become [M] minibatches of [D, B]: the scan walks the leading axis.
  return _map_examples(
    lambda a: a[perm_MxB], lambda f: FeatureMajor(jnp.moveaxis(f.x_DxN[:, perm_MxB], 1, 0)), batch
  )


@functools.partial(
  jax.jit,
  static_argnames=("loss_fn", "optimizer", "num_epochs", "batch_size", "batch_sharding"),
  donate_argnames="state",
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
) -> tuple[TrainState, dict[str, jax.Array]]:
  r"""Shuffled minibatch epochs, compiled as nested ``lax.scan`` (``state`` is donated).

  Epoch ``e`` visits the examples in the order ``jax.random.permutation(k_e, N)``, with
  ``k_0, …, k_{E-1} = jax.random.split(key, E)``, in ``M = N // B`` minibatches (the
  ``N mod B`` examples left over in an epoch are skipped that epoch).

  .. math::
    \theta \leftarrow \theta + \text{update}\Big(\nabla \frac{1}{B} \sum_{n \in
    \text{batch}_m} \ell_n(\theta)\Big), \quad m = 1, \dots, M, \text{ each epoch}

  Args:
    state: initial :class:`TrainState` (donated).
    batch: ``(x_NxD, y_N)``, the whole training set.
    key: PRNG key of the shuffles.
    loss_fn: ``loss_fn(params, x_BxD, y_B) -> scalar`` (static).
    optimizer: optax transformation (static).
    num_epochs: E (static).
    batch_size: B ≤ N (static).
    batch_sharding: for data parallelism, the sharding of a ``[B, ...]`` minibatch (e.g.
      ``NamedSharding(mesh, P("batch"))``); each minibatch is constrained to it so the
      step stays data parallel. None: let XLA decide.

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
  num_examples = batch[0].shape[0]
  if not 0 < batch_size <= num_examples:
    raise ValueError(f"batch_size must be in [1, N={num_examples}]; got batch_size={batch_size}.")
  step = functools.partial(train_step, loss_fn=loss_fn, optimizer=optimizer)

  def minibatch_step(state, minibatch):
    if batch_sharding is not None:
      minibatch = _map_examples(
        lambda a: jax.lax.with_sharding_constraint(a, batch_sharding),
        lambda f: FeatureMajor(
          jax.lax.with_sharding_constraint(f.x_DxN, _feature_major_sharding(batch_sharding))
        ),
        minibatch,
      )
    return step(state, minibatch)

  def epoch(state, epoch_key):
    return jax.lax.scan(minibatch_step, state, _epoch_batches(epoch_key, batch, batch_size))

  return jax.lax.scan(epoch, state, jax.random.split(key, num_epochs))


def _train_one_seed(key, batch, *, init_fn, loss_fn, optimizer, num_epochs, batch_size):
  init_key, shuffle_key = jax.random.split(key)
  state = init_train_state(init_fn(init_key), optimizer)
  if batch_size is None:
    run = functools.partial(train_full_batch, num_steps=num_epochs)
  else:
    run = functools.partial(
      train_minibatch, key=shuffle_key, num_epochs=num_epochs, batch_size=batch_size
    )
  return run(state, batch, loss_fn=loss_fn, optimizer=optimizer)


@functools.partial(
  jax.jit, static_argnames=("init_fn", "loss_fn", "optimizer", "num_epochs", "batch_size")
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
) -> tuple[TrainState, dict[str, jax.Array]]:
  r"""S independent runs at once: ``jax.vmap`` over PRNG keys, one compiled program.

  Run ``s`` splits ``keys_S[s]`` into an init key (``params = init_fn(k_init)``) and a
  shuffle key, then trains exactly like :func:`train_full_batch` (``batch_size=None``,
  ``num_epochs`` steps) or :func:`train_minibatch`. Each run equals the same run done
  alone.

  .. math::
    \big(\theta^{(s)}_T\big)_{s=1}^S = \text{vmap}(\text{run})(k_1, \dots, k_S)

  Args:
    keys_S: PRNG keys, ``[S]`` (e.g. ``jax.random.split(key, S)``).
    batch: ``(x_NxD, y_N)``, shared by all runs.
    init_fn: ``key -> params`` (static).
    loss_fn: ``loss_fn(params, x, y) -> scalar`` (static).
    optimizer: optax transformation (static).
    num_epochs: full-batch steps, or minibatch epochs (static).
    batch_size: None for full batch, else the minibatch size (static).

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
  run = functools.partial(
    _train_one_seed,
    init_fn=init_fn,
    loss_fn=loss_fn,
    optimizer=optimizer,
    num_epochs=num_epochs,
    batch_size=batch_size,
  )
  return jax.vmap(run, in_axes=(0, None))(keys_S, batch)


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
  return jax.device_put(tree, NamedSharding(mesh, P()))
