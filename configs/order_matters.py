"""Config of E3, ``experiments/order_matters.py`` (seed §3.3).

From the repository root::

    python -m experiments.order_matters --config=configs/order_matters.py --workdir=runs/e3
    python -m experiments.order_matters --config=configs/order_matters.py:smoke \
        --workdir=/tmp/e3-smoke
    python -m experiments.order_matters --config=configs/order_matters.py \
        --config.label_smoothing=0.01 --config.init_scale=2.0 --workdir=runs/e3-eps0.01
"""

import ml_collections

from experiments.config_checks import bounded, integer, learning_rate, real


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": small data, 300 steps)."""
  config = ml_collections.ConfigDict()
  # ε of the smoothed labels y_ε = (1 - ε)·y + ε/2 used by BOTH losses (the reversed loss
  # H(σ(z), y) is +inf for a hard label y ∈ {0, 1}, so ε > 0 is needed for it to train).
  config.label_smoothing = bounded(0.1, real(low=0, high=1, low_open=True, high_open=True))
  # Synthetic data from a known logistic model (xent_jax.data.make_logistic_data).
  config.data = ml_collections.ConfigDict()
  # PRNG seed of the true parameters, features and labels
  config.data.seed = bounded(0, integer(low=0))
  config.data.num_train = bounded(1000, integer(low=2))  # N, training examples
  # held-out examples (accuracy and cross-entropy curves)
  config.data.num_test = bounded(1000, integer(low=2))
  config.data.num_features = bounded(5, integer(low=1))  # D
  # ‖w*‖, the true weights (direction drawn at random)
  config.data.weight_scale = bounded(4.0, real(low=0, low_open=True))
  config.data.bias = bounded(0.5, real())  # the true intercept b*
  # Confidently wrong start: initial parameters = -init_scale × the true parameters, so every
  # initial logit is the true one mirrored and scaled (typical |z| ≈ 3·init_scale).
  config.init_scale = bounded(5.0, real(low=0, low_open=True))
  # full-batch gradient descent (optax.sgd), both losses
  config.learning_rate = bounded(1.0, learning_rate())
  config.num_steps = bounded(2000, integer(low=1, high=1_000_000))  # steps of each run
  # "Trained" means: held-out accuracy ≥ fraction × the true model's accuracy, and held-out
  # cross-entropy H(y, σ(z)) (hard labels) ≤ the true model's + target_excess_loss.
  config.target_accuracy_fraction = bounded(0.95, real(low=0, high=1, low_open=True))
  config.target_excess_loss = bounded(0.05, real(low=0, low_open=True))  # nats
  # Per-example gradients d/dz of both losses for a label y = 1, on a logit grid.
  config.logit_grid = ml_collections.ConfigDict()
  config.logit_grid.start = bounded(-20.0, real())  # first z
  config.logit_grid.stop = bounded(20.0, real())  # last z
  config.logit_grid.num = bounded(801, integer(low=3))  # points (spacing 0.05)
  # A confidently wrong logit -z₀ for y = 1: gradient ratio there, and the gradient-flow
  # time (in units of 1/learning_rate) for one logit to go from -z₀ to 0 under each loss.
  config.confident_logit = bounded(10.0, real(low=0, low_open=True))  # z₀ > 0

  if variant == "smoke":
    config.data.num_train = 300
    config.data.num_test = 300
    config.num_steps = 300
    config.logit_grid.num = 201
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
