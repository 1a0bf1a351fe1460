"""Config of E5, ``experiments/train_logistic.py`` (seed §4.1–4.2, §5).

From the repository root::

    python -m experiments.train_logistic --config=configs/train_logistic.py --workdir=runs/e5
    python -m experiments.train_logistic --config=configs/train_logistic.py:smoke \
        --workdir=/tmp/e5-smoke
    python -m experiments.train_logistic --config=configs/train_logistic.py \
        --config.breast_cancer.l2=1e-2 --workdir=runs/e5-l2
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": fewer steps, runs in ~2 s)."""
  config = ml_collections.ConfigDict()
  # Synthetic data from a known logistic model (xent_jax.data.make_logistic_data): N ≫ D and
  # overlapping classes, so the *unpenalised* mean cross-entropy has a finite minimiser.
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.seed = 0  # seed of the draw (numpy)
  config.synthetic.num_train = 2000  # N
  config.synthetic.num_test = 1000  # held-out examples
  config.synthetic.num_features = 5  # D
  config.synthetic.weight_scale = 1.0  # typical size of the true slope part of the logit
  config.synthetic.bias = 0.5  # true intercept b*
  config.synthetic.learning_rate = 1.0  # full-batch SGD step size η
  config.synthetic.momentum = 0.9  # heavy-ball momentum μ
  config.synthetic.num_steps = 200  # full-batch steps (cross-entropy and §4.1 runs)
  # scikit-learn's breast_cancer, standardised; linearly separable, so the cross-entropy is
  # trained with an L2 penalty: mean CE + (l2/2)‖w‖².
  config.breast_cancer = ml_collections.ConfigDict()
  config.breast_cancer.test_fraction = 0.2  # held-out fraction (stratified split)
  config.breast_cancer.split_seed = 0  # seed of the split
  config.breast_cancer.l2 = 1e-3  # λ > 0 of the penalised objective
  config.breast_cancer.learning_rate = 2.0  # full-batch SGD step size η
  config.breast_cancer.momentum = 0.9  # heavy-ball momentum μ
  config.breast_cancer.num_steps = 400  # full-batch steps of the penalised run
  # The same data with λ = 0 (no minimiser): how far ‖w‖ grows and the loss falls.
  config.breast_cancer.unpenalised_num_steps = 20_000  # steps of the λ = 0 run
  # The seed's §4.1 loss -(1/n) Σ y log σ (both datasets, each dataset's optimiser).
  config.seed_loss_num_steps = 20_000  # steps of the §4.1-loss runs
  # Parameters are recorded every num_steps / num_checkpoints steps (accuracy, ‖w‖, gaps).
  config.num_checkpoints = 40  # divides every num_steps above
  config.optimum_rtol = 1e-6  # the final objective must be this close to the optimum (relative)

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
