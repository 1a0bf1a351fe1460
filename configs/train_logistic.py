"""Config of E5, ``experiments/train_logistic.py`` (seed §4.1–4.2, §5).

From the repository root::

    python -m experiments.train_logistic --config=configs/train_logistic.py --workdir=runs/e5
    python -m experiments.train_logistic --config=configs/train_logistic.py:smoke \
        --workdir=/tmp/e5-smoke
    python -m experiments.train_logistic --config=configs/train_logistic.py \
        --config.breast_cancer.l2=1e-2 --workdir=runs/e5-l2
"""

import ml_collections

from experiments.config_checks import bounded, integer, learning_rate, real


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": fewer steps, runs in ~2 s)."""
  config = ml_collections.ConfigDict()
  # Synthetic data from a known logistic model (xent_jax.data.make_logistic_data): N ≫ D and
  # overlapping classes, so the *unpenalised* mean cross-entropy has a finite minimiser.
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.seed = bounded(0, integer(low=0))  # seed of the draw (numpy)
  config.synthetic.num_train = bounded(2000, integer(low=10))  # N
  config.synthetic.num_test = bounded(1000, integer(low=1))  # held-out examples
  config.synthetic.num_features = bounded(5, integer(low=1, high=10_000))  # D
  # typical size of the true slope part of the logit
  config.synthetic.weight_scale = bounded(1.0, real(low=0))
  config.synthetic.bias = bounded(0.5, real())  # true intercept b*
  config.synthetic.learning_rate = bounded(1.0, learning_rate())  # full-batch SGD step size η
  # heavy-ball momentum μ
  config.synthetic.momentum = bounded(0.9, real(low=0, high=1, high_open=True))
  # full-batch steps (cross-entropy and §4.1 runs)
  config.synthetic.num_steps = bounded(200, integer(low=1, high=10_000_000))
  # scikit-learn's breast_cancer, standardised; linearly separable, so the cross-entropy is
  # trained with an L2 penalty: mean CE + (l2/2)‖w‖².
  config.breast_cancer = ml_collections.ConfigDict()
  # held-out fraction (stratified split)
  config.breast_cancer.test_fraction = bounded(
    0.2, real(low=0, high=1, low_open=True, high_open=True)
  )
  config.breast_cancer.split_seed = bounded(0, integer(low=0))  # seed of the split
  # λ > 0 of the penalised objective
  config.breast_cancer.l2 = bounded(1e-3, real(low=0, low_open=True))
  config.breast_cancer.learning_rate = bounded(2.0, learning_rate())  # full-batch SGD step size η
  # heavy-ball momentum μ
  config.breast_cancer.momentum = bounded(0.9, real(low=0, high=1, high_open=True))
  # full-batch steps of the penalised run
  config.breast_cancer.num_steps = bounded(400, integer(low=1, high=10_000_000))
  # The same data with λ = 0 (no minimiser): how far ‖w‖ grows and the loss falls.
  # steps of the λ = 0 run
  config.breast_cancer.unpenalised_num_steps = bounded(20_000, integer(low=1, high=10_000_000))
  # The seed's §4.1 loss -(1/n) Σ y log σ (both datasets, each dataset's optimiser).
  # steps of the §4.1-loss runs
  config.seed_loss_num_steps = bounded(20_000, integer(low=1, high=10_000_000))
  # Parameters are recorded every num_steps / num_checkpoints steps (accuracy, ‖w‖, gaps).
  config.num_checkpoints = bounded(40, integer(low=1))  # divides every num_steps above
  # the final objective must be this close to the optimum (relative)
  config.optimum_rtol = bounded(1e-6, real(low=0, low_open=True, high=1))

  if variant == "smoke":
    config.synthetic.num_train = 500
    config.synthetic.num_test = 250
    config.synthetic.num_steps = 160
    config.breast_cancer.num_steps = 400
    config.breast_cancer.unpenalised_num_steps = 2000
    config.seed_loss_num_steps = 2000
    config.num_checkpoints = 20
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
