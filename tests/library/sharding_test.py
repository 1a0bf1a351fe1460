"""Data-parallel training on 8 simulated CPU devices equals training on one device.

The device count must be fixed before JAX initialises, so the sharded run happens in a
subprocess (``tests/library/_sharding_worker.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; this process runs the same code on
its single default device and compares.
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from tests.library import _sharding_worker

jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Only the order of the all-reduce's float additions differs from one device.
RTOL = 1e-12 if jax.config.jax_enable_x64 else 2e-5


def _run_on_8_devices(out_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64=str(int(jax.config.jax_enable_x64)))
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
    f"{_sharding_worker.NUM_DEVICES}"
  ).strip()
  subprocess.run(
    [sys.executable, "-m", "tests.library._sharding_worker", str(out_path)],
    cwd=ROOT,
    env=env,
    check=True,
    capture_output=True,
    text=True,
  )
  with np.load(out_path) as f:
    return dict(f)


class ShardingTest(absltest.TestCase):
  def test_eight_devices_equal_one(self):
    with tempfile.TemporaryDirectory() as tmp:
      try:
        sharded = _run_on_8_devices(pathlib.Path(tmp) / "sharded.npz")
      except subprocess.CalledProcessError as e:
        self.fail(f"sharded worker failed:\n{e.stderr[-3000:]}")
    single = _sharding_worker.run()
    # The sharded run really was data parallel: batch split 8 ways, params replicated.
    self.assertEqual(int(sharded["batch_devices"]), 8)
    self.assertEqual(int(sharded["shard_rows"]), 2048 // 8)
    self.assertTrue(bool(sharded["params_replicated"]))
    self.assertEqual(int(single["batch_devices"]), 1)
    self.assertEqual(int(sharded["fm_shard_columns"]), 2048 // 8)  # feature-major: N split
    for key in ("w", "b", "loss", "softmax_w", "softmax_b", "softmax_loss", "fm_w", "fm_loss"):
      self.assertEqual(sharded[key].dtype, single[key].dtype, key)
      np.testing.assert_allclose(sharded[key], single[key], rtol=RTOL, atol=RTOL, err_msg=key)
    # ... and both runs trained: the losses fell.
    self.assertLess(single["loss"][-1], single["loss"][0])
    self.assertLess(single["softmax_loss"][-1, -1], single["softmax_loss"][0, 0])


if __name__ == "__main__":
  absltest.main()
