"""Training runs shared by the experiments that train (E5 ``train_logistic``, E6
``softmax_regression``): checkpointed full-batch training, and the figure of its gap to the
optimum.

The training itself is :func:`xent_jax.training.train_full_batch`; what this module adds is
experiment bookkeeping: the parameters copied to the host every ``num_steps /
num_checkpoints`` steps (the experiments evaluate them in float64), progress lines in the
run's log and the per-step loss in its ``metrics.csv``.
"""

import functools

import jax
import numpy as np

from experiments import _common
from xent_jax import training


def train_with_checkpoints(
  params,
  batch,
  *,
  loss_fn,
  optimizer,
  num_steps: int,
  num_checkpoints: int,
  workdir: _common.Workdir | None = None,
  name: str = "training",
):
  """Trains with :func:`xent_jax.training.train_full_batch`, recording the parameters.

  The run is ``num_checkpoints`` calls of one compiled ``lax.scan`` of
  ``num_steps / num_checkpoints`` steps each (the same shapes and static arguments, so it
  compiles once); after each call the parameters are copied to the host.

  Args:
    params: initial parameters (copied; the caller's arrays are not donated).
    batch: ``(x_NxD, y_N)``, the training set.
    loss_fn: ``loss_fn(params, x, y) -> scalar``; pass the same object for every run that
      should share a compilation.
    optimizer: optax transformation (likewise).
    num_steps: T, a multiple of ``num_checkpoints``.
    num_checkpoints: C.
    workdir: where to report progress (``name: step k/T, elapsed, ETA`` after every
      chunk) and the per-step loss (``metrics.csv``, run ``name``); None: neither.
    name: the run's name in the log and in ``metrics.csv``.

  Returns:
    ``(checkpoints, loss_T)``: C + 1 parameter pytrees of numpy arrays (after 0, T/C, …, T
    steps) and the loss before each step, ``[T]`` (numpy).
  """
  to_host = functools.partial(jax.tree.map, np.array)  # np.array copies: safe to donate
  checkpoints, losses = [to_host(params)], []
  state = training.init_train_state(jax.tree.map(jax.numpy.array, params), optimizer)
  chunk = num_steps // num_checkpoints
  if workdir is not None:
    workdir.progress(0, num_steps, name)
  for k in range(1, num_checkpoints + 1):
    state, metrics = training.train_full_batch(
      state, batch, loss_fn=loss_fn, optimizer=optimizer, num_steps=chunk
    )
    checkpoints.append(to_host(state.params))
    losses.append(np.asarray(metrics["loss"]))
    if workdir is not None:
      workdir.progress(k * chunk, num_steps, name)
  loss_T = np.concatenate(losses)
  if workdir is not None:
    workdir.add_metrics(name, np.arange(num_steps), loss=loss_T)
  return checkpoints, loss_T


def checkpoint_steps(num_steps: int, num_checkpoints: int) -> np.ndarray:
  """The step counts of the checkpoints of :func:`train_with_checkpoints`."""
  return np.arange(num_checkpoints + 1) * (num_steps // num_checkpoints)


def plot_relative_gap(ax, loss_T, reference: float, dtype: str, *, color: str, label: str):
  """Draws the per-step relative gap (L_t - L*) / L* of a loss recorded in ``dtype``.

  A loss computed in ``dtype`` cannot resolve a relative gap much below its machine epsilon:
  there the recorded values are rounding noise of either sign, and a line through them on a
  log axis fills a solid block. The gap is drawn as a line where it exceeds 4 eps, and the
  steps below that as points on a floor at 4 eps (the legend says so); the checkpoints'
  float64 objective (drawn by the caller) shows how far below the floor it really went.
  """
  import numpy as np

  floor = 4 * float(np.finfo(dtype).eps)
  gap_T = (np.asarray(loss_T, np.float64) - reference) / abs(reference)
  step_T = np.arange(len(gap_T))
  above = gap_T > floor
  ax.plot(step_T, np.where(above, gap_T, np.nan), color=color, lw=1, label=f"{label}, {dtype}")
  if not above.all():
    ax.plot(
      step_T[~above],
      np.full((~above).sum(), floor),
      color=color,
      ls="none",
      marker="|",
      ms=4,
      label=f"{label}: below 4 eps of {dtype} = {floor:.1e} (rounding), drawn at it",
    )
