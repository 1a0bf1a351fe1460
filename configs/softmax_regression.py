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


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": fewer steps, runs in ~2 s)."""
  config = ml_collections.ConfigDict()
  # scikit-learn's digits (8×8 images, 10 classes), standardised with the training split's
  # statistics; linearly separable, so the objective is mean CE + (l2/2)‖W‖².
  config.test_fraction = 0.2  # held-out fraction (stratified split)
  config.split_seed = 0  # seed of the split
  config.l2 = 1e-2  # λ > 0 of the penalised objective
  # Full-batch SGD with heavy-ball momentum from W = 0, b = 0 (uniform predictions).
  config.learning_rate = 1.0  # step size η
  config.momentum = 0.9  # momentum μ
  config.num_steps = 240  # full-batch steps
  config.num_checkpoints = 24  # parameters recorded every num_steps / num_checkpoints steps
  config.entropy_bins = 40  # bins of the held-out entropy histograms, over [0, log K]
  config.optimum_rtol = 1e-6  # the final objective must be this close to the optimum (relative)

  if variant == "smoke":
    config.num_checkpoints = 8
    config.entropy_bins = 10
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
