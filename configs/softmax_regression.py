"""Config of E6, ``experiments/softmax_regression.py`` (seed §2.2–2.3).

From the repository root::

    python -m experiments.softmax_regression --config=configs/softmax_regression.py \
        --workdir=runs/e6
    python -m experiments.softmax_regression --config=configs/softmax_regression.py:smoke \
        --workdir=/tmp/e6-smoke
    python -m experiments.softmax_regression --config=configs/softmax_regression.py \
        --config.l2=1e-3 --config.num_steps=1200 --workdir=runs/e6-l2
"""

import ml_collections

from experiments.config_checks import bounded, integer, learning_rate, real


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": fewer steps, runs in ~2 s)."""
  config = ml_collections.ConfigDict()
  # scikit-learn's digits (8×8 images, 10 classes), standardised with the training split's
  # statistics; linearly separable, so the objective is mean CE + (l2/2)‖W‖².
  # held-out fraction (stratified split)
  config.test_fraction = bounded(0.2, real(low=0, high=1, low_open=True, high_open=True))
  config.split_seed = bounded(0, integer(low=0))  # seed of the split
  config.l2 = bounded(1e-2, real(low=0, low_open=True))  # λ > 0 of the penalised objective
  # Full-batch SGD with heavy-ball momentum from W = 0, b = 0 (uniform predictions).
  config.learning_rate = bounded(1.0, learning_rate())  # step size η
  config.momentum = bounded(0.9, real(low=0, high=1, high_open=True))  # momentum μ
  config.num_steps = bounded(240, integer(low=1, high=10_000_000))  # full-batch steps
  # parameters recorded every num_steps / num_checkpoints steps
  config.num_checkpoints = bounded(24, integer(low=1))
  # bins of the held-out entropy histograms, over [0, log K]
  config.entropy_bins = bounded(40, integer(low=1, high=10_000))
  # the final objective must be this close to the optimum (relative)
  config.optimum_rtol = bounded(1e-6, real(low=0, low_open=True, high=1))

  if variant == "smoke":
    config.num_checkpoints = 8
    config.entropy_bins = 10
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
