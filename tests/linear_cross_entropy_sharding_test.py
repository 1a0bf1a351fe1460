"""linear_softmax_cross_entropy on 8 simulated CPU devices equals one device.

The device count must be fixed before JAX initialises, so the sharded runs happen in a
subprocess (``tests/_linear_cross_entropy_sharding_worker.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the plain function under ``jit`` on
sharded inputs (an explicit mesh with the tokens split, an auto mesh with the weight split
on V too), and the vocab-parallel path inside ``shard_map`` on a 2 (tokens) × 4 (vocab)
mesh, one vocab shard of which is all -inf (padding classes). This process runs the same
losses and gradients on its single device and compares.
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from tests import _linear_cross_entropy_sharding_worker as worker

jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Only the order of the float additions (across devices) differs from one device.
RTOL = 1e-12 if jax.config.jax_enable_x64 else 2e-5


class VocabParallelTest(absltest.TestCase):
  def test_eight_devices_equal_one(self):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64=str(int(jax.config.jax_enable_x64)))
    env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={worker.NUM_DEVICES}"
    ).strip()
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "sharded.npz"
      try:
        subprocess.run(
          [sys.executable, "-m", "tests._linear_cross_entropy_sharding_worker", str(out)],
          cwd=ROOT,
          env=env,
          check=True,
          capture_output=True,
          text=True,
        )
      except subprocess.CalledProcessError as e:
        self.fail(f"sharded worker failed:\n{e.stderr[-3000:]}")
      with np.load(out) as f:
        sharded = dict(f)
    single = worker.run_single()
    self.assertEqual(int(sharded["weight_shard_columns"]), worker.V // 4)  # its slice of V
    self.assertTrue(np.all(np.isfinite(single["loss"])))
    for key, want in single.items():
      for path in ("jit_Explicit", "jit_Auto", "vp"):
        got = sharded[f"{path}_{key}"]
        self.assertEqual(got.dtype, want.dtype, key)
        scale = np.abs(want).max()  # gradients: relative to the largest entry
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=f"{path} {key}")


if __name__ == "__main__":
  absltest.main()
