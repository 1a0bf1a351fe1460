"""One of two processes of the multi-host run of linear_cross_entropy_sharding_test.py.

``python -m tests._linear_cross_entropy_multiprocess_worker PROCESS_ID PORT OUT.npz`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``: the two processes join through
``jax.distributed.initialize`` on 127.0.0.1 (gloo collectives on the CPU), build one
2 × 2 mesh over their 4 devices, and run the vocab-parallel loss on it; process 0 saves the
gathered results. No launcher of our own: this is what each host runs.
"""

import sys

import jax

if __name__ == "__main__":
  process_id, port, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
  )
  import numpy as np
  from jax.sharding import AxisType

  from tests.library import _linear_cross_entropy_sharding_worker as worker

  assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
  mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  results = worker.vocab_parallel_results(mesh)
  if process_id == 0:
    np.savez(out_path, **results)
  jax.distributed.shutdown()
