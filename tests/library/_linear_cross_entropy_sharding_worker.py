"""The sharded runs of linear_cross_entropy_sharding_test.py, on one device or on a 2 × 4 mesh.

``python -m tests._linear_cross_entropy_sharding_worker OUT.npz`` runs them on a mesh of 8
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set by the test before
JAX initialises, hence a separate process) and saves the results to ``OUT.npz``.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import xent_jax as xj

NUM_DEVICES = 8
N, D, V = 56, 16, 96  # 4 vocab shards of 24 classes, 2 token shards of 28 tokens
# Tokens per chunk. N is a multiple of neither it nor it times a device count, so every run
# pads a last chunk; with the tokens split over 8 devices in the types (explicit mesh), 7
# tokens each, the chunk is rounded to 16 and each device pads its own tokens to 8.
CHUNK = 12


def inputs():
  """Hidden, weight, a bias whose last vocab shard is all -inf (padding classes), labels."""
  rng = np.random.default_rng(0)
  h = rng.standard_normal((N, D))
  w = rng.standard_normal((D, V)) / 2
  b = rng.standard_normal(V)
  b[-V // 4 :] = -np.inf  # a whole shard of impossible classes: its local max is -inf
  y = rng.integers(0, 3 * V // 4, N).astype(np.int32)
  where = rng.random(N) < 0.8
  dtype = jnp.result_type(float)
  return jnp.asarray(h, dtype), jnp.asarray(w, dtype), jnp.asarray(b, dtype), y, where


def _loss_fn(vocab_axis_name=None, vocab_chunk_size=None):
  def loss(h, w, b, y, where):
    return xj.linear_softmax_cross_entropy(
      h,
      w,
      y,
      bias=b,
      where=where,
      z_loss=1e-3,
      chunk_size=CHUNK,
      vocab_chunk_size=vocab_chunk_size,
      vocab_axis_name=vocab_axis_name,
    )

  return loss


def _results(loss_fn, args) -> dict[str, np.ndarray]:
  """Per-token losses; gradients of their mean and of a per-token weighted sum (one jit)."""
  h, w, b, y, where = args
  ct = jnp.linspace(-1, 1, N, dtype=h.dtype).reshape(y.shape)

  @jax.jit
  def run(h, w, b, y, where):  # (arrays spanning other hosts cannot be closed over)
    loss = lambda h, w, b: loss_fn(h, w, b, y, where)
    mean = jax.grad(lambda *a: loss(*a).mean(), (0, 1, 2))(h, w, b)
    token = jax.grad(lambda *a: (ct * loss(*a)).sum(), (0, 1, 2))(h, w, b)
    tangents = (jnp.cos(h), jnp.sin(w), jnp.full_like(b, 0.5))
    return loss(h, w, b), mean, token, jax.jvp(loss, (h, w, b), tangents)[1]

  loss, mean, token, jvp = run(h, w, b, y, where)
  out = {"loss": loss, "jvp": jvp}
  for name, grads in (("mean", mean), ("token", token)):
    out.update({f"{name}_d{arg}": g for arg, g in zip("hwb", grads, strict=True)})
  # process_allgather: the whole array on every process (also across hosts).
  return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in out.items()}


def far_shard_inputs():
  """One-hot hidden rows picking rows of ``weight`` as the logits of 4 tokens (labels 0,
  0, 30, 0), with whole vocab shards of 24 classes one underflow below the maximum 0:
  e^{m_k - m} = e^{-88.5} is subnormal (float64: e^{-709.5}), their masses are not."""
  dtype = jnp.result_type(float)
  far, near = (-709.5, -700.0) if dtype == jnp.float64 else (-88.5, -80.0)
  w = np.full((4, V), -1e4)
  w[:, 0] = 0
  w[0, 1], w[0, 24:48] = near, far  # r = e^near + 24 e^far
  w[1, 24:48] = far  # r = 24 e^far, normal
  w[2, 24:48] = far  # the label 30 in the far shard: loss -far
  w[3, 1], w[3, 24:] = near, far  # three far shards
  return jnp.eye(4, dtype=dtype), jnp.asarray(w, dtype), np.array([0, 0, 30, 0], np.int32)


def far_shard_results(mesh) -> dict[str, np.ndarray]:
  """Vocab-parallel loss per token and ∂Σℓ/∂W (the logits' gradient) at far_shard_inputs."""

  def loss(h, w, y):
    return xj.linear_softmax_cross_entropy(h, w, y, chunk_size=2, vocab_axis_name="model")

  specs = (P("data", None), P(None, "model"), P("data"))
  loss = jax.shard_map(loss, mesh=mesh, in_specs=specs, out_specs=P("data"))
  out = jax.jit(lambda *a: (loss(*a), jax.grad(lambda *a: loss(*a).sum(), 1)(*a)))
  return dict(zip(("loss", "dw"), map(np.asarray, out(*far_shard_inputs())), strict=True))


def run_single() -> dict[str, np.ndarray]:
  return _results(_loss_fn(), inputs())


def vocab_parallel_results(mesh, vocab_chunk_size=None) -> dict[str, np.ndarray]:
  """The shard_map vocab-parallel run on a ("data", "model") mesh (any number of hosts)."""
  specs = (P("data", None), P(None, "model"), P("model"), P("data"), P("data"))
  placed = [
    jax.make_array_from_callback(x.shape, NamedSharding(mesh, s), lambda i, x=x: x[i])
    for x, s in zip(inputs(), specs, strict=True)
  ]
  loss = _loss_fn("model", vocab_chunk_size)
  loss_fn = jax.shard_map(loss, mesh=mesh, in_specs=specs, out_specs=P("data"))
  return _results(loss_fn, placed)


def run_mesh() -> dict[str, np.ndarray]:
  specs = (P("data", None), P(None, "model"), P("model"), P("data"), P("data"))
  out = {}
  # (a) the plain function under jit on sharded inputs. An explicit mesh (sharding in the
  # types, jax.make_mesh's default) with the tokens split over all 8 devices, weight
  # replicated: the tokens as [7 sequences, 8 positions], the positions split (sequence
  # parallel; flattened, it is the data-parallel case [56@tokens] with 7 tokens per
  # device); an auto mesh with the weight split on V as well, which XLA partitions.
  mesh = jax.make_mesh((8,), ("tokens",), axis_types=(AxisType.Explicit,))
  seq = (P(None, "tokens", None), P(), P(), P(None, "tokens"), P(None, "tokens"))
  placed = [
    jax.device_put(x.reshape(7, 8, *x.shape[1:]) if len(x) == N else x, NamedSharding(mesh, s))
    for x, s in zip(inputs(), seq, strict=True)
  ]
  for k, v in _results(_loss_fn(), placed).items():  # per-token results back to [N, ...]
    out[f"jit_Explicit_{k}"] = v.reshape(N, *v.shape[2:]) if v.shape[:2] == (7, 8) else v
  # An explicit mesh with the weight split on V as well (XLA's gather of the label logit
  # raised a sharding error): the weight is gathered on V outside shard_map.
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(inputs(), specs, strict=True)]
  out.update({f"jit_ExplicitV_{k}": v for k, v in _results(_loss_fn(), placed).items()})
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(inputs(), specs, strict=True)]
  out.update({f"jit_Auto_{k}": v for k, v in _results(_loss_fn(), placed).items()})
  # (b) vocab-parallel: each device its slice of V, statistics combined over "model".
  out.update({f"vp_{k}": v for k, v in vocab_parallel_results(mesh).items()})
  # Each device's 24 classes in blocks of 5 (a loop over 4 blocks, then a block of 4): the
  # per-block sums vary over "model" from the start of the loop.
  out.update({f"vpblocks_{k}": v for k, v in vocab_parallel_results(mesh, 5).items()})
  out.update({f"far_{k}": v for k, v in far_shard_results(mesh).items()})
  out["weight_shard_columns"] = np.asarray(placed[1].addressable_shards[0].data.shape[1])
  return out


if __name__ == "__main__":
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  np.savez(sys.argv[1], **run_mesh())
