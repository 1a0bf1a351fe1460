"""The data-parallel runs of sharding_test.py, on one device or on a mesh of them.

``python -m tests._sharding_worker OUT.npz`` runs them on a mesh of all devices (the test
starts it with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must be set
before JAX initialises, hence a separate process) and saves the results to ``OUT.npz``.
"""

import functools
import sys

import jax
import numpy as np

from xent_jax import data, models, training

NUM_DEVICES = 8


def run(mesh=None) -> dict[str, np.ndarray]:
  """Full-batch logistic and minibatch softmax training; sharded over ``mesh`` if given."""
  place = (lambda b: b) if mesh is None else functools.partial(training.shard_batch, mesh=mesh)
  replicate = (lambda t: t) if mesh is None else functools.partial(training.replicate, mesh=mesh)
  logistic, softmax = (
    data.make_logistic_data(0, 2048, 8, 6),
    data.make_softmax_data(1, 512, 8, 5, 4),
  )

  opt = training.sgd(1.0, momentum=0.9)
  state = replicate(training.init_train_state(models.init_logistic_regression(6), opt))
  batch = place(logistic.train)
  state, metrics = training.train_full_batch(
    state,
    batch,
    loss_fn=functools.partial(models.logistic_regression_loss, l2=1e-3),
    optimizer=opt,
    num_steps=60,
  )

  sm_opt = training.sgd(0.3)
  sm_state = replicate(training.init_train_state(models.init_softmax_regression(5, 4), sm_opt))
  sm_state, sm_metrics = training.train_minibatch(
    sm_state,
    place(softmax.train),
    jax.random.key(0),
    loss_fn=models.softmax_regression_loss,
    optimizer=sm_opt,
    num_epochs=2,
    batch_size=64,
    batch_sharding=None if mesh is None else training.data_sharding(mesh),
  )

  # The same full-batch run with the features stored feature-major, split along N.
  fm_state = replicate(training.init_train_state(models.init_logistic_regression(6), opt))
  fm_batch = place((data.feature_major(logistic.train.x), logistic.train.y))
  fm_state, fm_metrics = training.train_full_batch(
    fm_state,
    fm_batch,
    loss_fn=functools.partial(models.logistic_regression_loss, l2=1e-3),
    optimizer=opt,
    num_steps=60,
  )

  out = {
    "w": state.params["w"],
    "b": state.params["b"],
    "loss": metrics["loss"],
    "fm_w": fm_state.params["w"],
    "fm_loss": fm_metrics["loss"],
    "fm_shard_columns": fm_batch[0].x_DxN.addressable_shards[0].data.shape[1],
    "softmax_w": sm_state.params["w"],
    "softmax_b": sm_state.params["b"],
    "softmax_loss": sm_metrics["loss"],
    "batch_devices": len(batch[0].sharding.device_set),
    "shard_rows": batch[0].addressable_shards[0].data.shape[0],
    "params_replicated": state.params["w"].sharding.is_fully_replicated,
  }
  return {k: np.asarray(v) for k, v in out.items()}


if __name__ == "__main__":
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  np.savez(sys.argv[1], **run(training.make_data_mesh()))
