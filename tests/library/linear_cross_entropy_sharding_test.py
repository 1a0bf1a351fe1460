"""linear_softmax_cross_entropy on 8 simulated CPU devices equals one device.

The device count must be fixed before JAX initialises, so the sharded runs happen in a
subprocess (``tests/library/_linear_cross_entropy_sharding_worker.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the plain function under ``jit`` on
sharded inputs (an explicit mesh with the tokens as [sequences, positions], the positions
split; an auto mesh with the weight split on V too), and the vocab-parallel path inside
``shard_map`` on a 2 (tokens) × 4 (vocab) mesh, one vocab shard of which is all -inf
(padding classes). Then the same vocab-parallel run across two processes
(``jax.distributed.initialize`` on 127.0.0.1, gloo collectives, 2 processes × 2 devices:
the multi-host path). This process runs the same losses and gradients on its single device
and compares; vocab shards far below the maximum are checked against the mpmath reference.
"""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from tests.library import _linear_cross_entropy_sharding_worker as worker
from tests.library import _mp_reference as mp_ref

jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Only the order of the float additions (across devices) differs from one device.
RTOL = 1e-12 if jax.config.jax_enable_x64 else 2e-5


def _env(num_devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64=str(int(jax.config.jax_enable_x64)))
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={num_devices}"
  ).strip()
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class VocabParallelTest(absltest.TestCase):
  def assert_equal_to_one_device(self, sharded, paths):
    single = worker.run_single()
    self.assertTrue(np.all(np.isfinite(single["loss"])))
    for key, want in single.items():
      for path in paths:
        got = sharded[f"{path}{key}"]
        self.assertEqual(got.dtype, want.dtype, key)
        scale = np.abs(want).max()  # gradients: relative to the largest entry
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=f"{path}{key}")

  def test_two_processes_equal_one_device(self):
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "two_processes.npz"
      module = "tests.library._linear_cross_entropy_multiprocess_worker"
      procs = [
        subprocess.Popen(
          [sys.executable, "-m", module, str(i), str(port), str(out)],
          cwd=ROOT,
          env=_env(2),
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
        )
        for i in range(2)
      ]
      try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
      finally:
        for p in procs:
          if p.poll() is None:
            p.kill()
      for p, log in zip(procs, logs, strict=True):
        self.assertEqual(p.returncode, 0, log[-3000:])
      with np.load(out) as f:
        sharded = dict(f)
    self.assert_equal_to_one_device(sharded, [""])

  def test_eight_devices_equal_one(self):
    env = _env(worker.NUM_DEVICES)
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "sharded.npz"
      try:
        subprocess.run(
          [sys.executable, "-m", "tests.library._linear_cross_entropy_sharding_worker", str(out)],
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
    self.assertEqual(int(sharded["weight_shard_columns"]), worker.V // 4)  # its slice of V
    self.assert_equal_to_one_device(
      sharded, ["jit_Explicit_", "jit_ExplicitV_", "jit_Auto_", "vp_", "vpblocks_"]
    )
    # Vocab shards whose scale e^{m_k - m} is subnormal but whose mass is not: the loss of
    # a dominant label and its gradient -(1 - p_y), against the 50-digit reference.
    h, w, y = (np.asarray(x) for x in worker.far_shard_inputs())
    logits = (h @ w).astype(w.dtype)  # h one-hot: exactly the rows of w
    want = mp_ref.softmax_cross_entropy_with_integer_labels(logits, y)
    mp_ref.assert_accurate(sharded["far_loss"], want, w.dtype, name="far-shard loss")
    targets = mp_ref.one_hot(y, worker.V, w.dtype)
    want = mp_ref.softmax_cross_entropy_grad(logits, targets, exact_targets=True)
    mp_ref.assert_accurate(sharded["far_dw"], want, w.dtype, name="far-shard ∂/∂logits")


if __name__ == "__main__":
  absltest.main()
