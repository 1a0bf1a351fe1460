"""Config of E4, ``experiments/gradient_check.py`` (seed §4.2).

From the repository root::

    python -m experiments.gradient_check --config=configs/gradient_check.py --workdir=runs/e4
    python -m experiments.gradient_check --config=configs/gradient_check.py:smoke \
        --workdir=/tmp/e4-smoke
    python -m experiments.gradient_check --config=configs/gradient_check.py \
        --config.num_examples=4096 --config.param_scales='(0.0, 100.0)' --workdir=runs/e4-big
"""

import ml_collections

from experiments.config_checks import bounded, choice, integer, real, reals


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": smaller problem, runs in ~1 s)."""
  config = ml_collections.ConfigDict()
  # The z-grid on which jax.grad(σ)(z) is compared with σ(z)(1 - σ(z)). |z| up to 80 keeps
  # σ'(z) ≈ e^{-|z|} a normal float32 number (SPEC §2's float32 range).
  config.sigmoid_grid = ml_collections.ConfigDict()
  config.sigmoid_grid.start = bounded(-80.0, real())  # first z
  config.sigmoid_grid.stop = bounded(80.0, real())  # last z
  config.sigmoid_grid.num = bounded(1601, integer(low=2))  # number of points (spacing 0.1)
  # The random regression problem the gradients are taken on (numpy float64, then cast).
  config.num_examples = bounded(512, integer(low=2, high=1_000_000))  # N
  config.num_features = bounded(16, integer(low=1, high=10_000))  # D
  # K of the softmax-regression problem
  config.num_classes = bounded(10, integer(low=2, high=10_000))
  # Parameters are scale · N(0, 1/D) (weights) and scale · N(0, 1) (biases), so the logits
  # have a standard deviation of about `scale`: 0 is the usual zero init, 10 saturates σ.
  # one gradient comparison per scale
  config.param_scales = bounded((0.0, 1.0, 10.0), reals(low=0, high=1e3))
  # seed of the data, labels and parameter directions (numpy)
  config.seed = bounded(0, integer(low=0))
  # jax.test_util.check_grads order: 1 checks the gradient against finite differences; 2
  # also differentiates the gradient (reverse over reverse), at ~3× the compile time.
  config.check_grads_order = bounded(1, choice(1, 2))

  if variant == "smoke":
    config.sigmoid_grid.num = 161
    config.num_examples = 64
    config.num_features = 4
    config.num_classes = 3
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
