"""Config of E7, ``experiments/model_comparison.py`` (seed §2.6, §3.2, §5).

From the repository root::

    python -m experiments.model_comparison --config=configs/model_comparison.py \
        --workdir=runs/e7
    python -m experiments.model_comparison --config=configs/model_comparison.py:smoke \
        --workdir=/tmp/e7-smoke
    python -m experiments.model_comparison --config=configs/model_comparison.py \
        --config.true_model=1 --config.data.num_test=100000 --workdir=runs/e7-true-model-2
"""

import ml_collections

from experiments.config_checks import bounded, integer, learning_rate, real, reals


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": less data, fewer steps)."""
  config = ml_collections.ConfigDict()
  # Fixed candidate models q_i(x) = σ(a_i + b_i·x): the seed's models 1–3 (§2.5–2.6),
  # σ(x), 1/(1+e^{-1-2x}) and 1/(1+e^{10+5x}). More may be appended.
  config.intercepts = bounded((0.0, 1.0, -10.0), reals(min_length=2))  # a_i
  config.slopes = bounded((1.0, 2.0, -5.0), reals(min_length=2))  # b_i
  # Which candidate generates the labels (seed §3.2: the true distribution is σ₁).
  config.true_model = bounded(0, integer(low=0))  # index into intercepts/slopes
  # Data: x ~ Uniform[x_low, x_high], y ~ Bernoulli(σ(a_true + b_true·x)), numpy seeded.
  config.data = ml_collections.ConfigDict()
  # seed of numpy's generator (same data in float32 and float64)
  config.data.seed = bounded(0, integer(low=0))
  config.data.x_low = bounded(-5.0, real())  # lower end of the x range
  config.data.x_high = bounded(5.0, real())  # upper end of the x range
  # examples the fitted candidates are trained on
  config.data.num_train = bounded(2000, integer(low=2))
  # held-out examples the candidates are ranked on
  config.data.num_test = bounded(20_000, integer(low=2))
  # Fitted candidates: logistic regression σ(a + b·x) trained on the training split by
  # full-batch gradient descent (xent_jax.training, mean cross-entropy), and the base rate
  # (the constant model σ(logit(mean y)), the intercept-only maximum likelihood).
  config.fit = ml_collections.ConfigDict()
  config.fit.learning_rate = bounded(2.0, learning_rate())  # optax.sgd learning rate
  config.fit.num_steps = bounded(400, integer(low=1, high=1_000_000))  # full-batch steps
  # The population cross-entropy E_x[H(p_true(x), q(x))] for x ~ Uniform[x_low, x_high],
  # by the trapezoid rule on this many points: the ranking without sampling noise.
  config.population_num = bounded(20_001, integer(low=3))

  if variant == "smoke":
    config.data.num_train = 500
    config.data.num_test = 5000
    config.fit.num_steps = 200
    config.population_num = 2001
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
