"""Config of E1, ``experiments/entropy_comparison.py`` (seed §2.1–2.6).

From the repository root::

    python -m experiments.entropy_comparison --config=configs/entropy_comparison.py \
        --workdir=runs/e1
    python -m experiments.entropy_comparison --config=configs/entropy_comparison.py:smoke \
        --workdir=/tmp/e1-smoke
    python -m experiments.entropy_comparison --config=configs/entropy_comparison.py \
        --config.slopes='(1.0, 2.0, -4.0)' --config.entropy_unit=bits --workdir=runs/e1-bits
"""

import ml_collections

from experiments.config_checks import bounded, choice, integer, real, reals


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": small grids, runs in ~1 s)."""
  config = ml_collections.ConfigDict()
  # Models p_i(x) = σ(a_i + b_i·x). The first three are the seed's models 1–3 (§2.5–2.6):
  # σ(x), 1/(1+e^{-1-2x}) and 1/(1+e^{10+5x}); more may be appended.
  config.intercepts = bounded((0.0, 1.0, -10.0), reals(min_length=3))  # a_i
  config.slopes = bounded((1.0, 2.0, -5.0), reals(min_length=3, nonzero=True))  # b_i (non-zero)
  # The x-grid of the entropy curves, the figure and the headline grid means.
  config.grid = ml_collections.ConfigDict()
  config.grid.start = bounded(-10.0, real())  # first x
  config.grid.stop = bounded(10.0, real())  # last x
  config.grid.num = bounded(2001, integer(low=2))  # number of points (spacing 0.01)
  # The ranking of the models by grid-mean entropy is recomputed on windows
  # [c - w, c + w] centred at c = 0 and at each model's maximum-entropy point -a/b.
  # w values
  config.window_half_widths = bounded(
    (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0), reals(low=0, low_open=True, increasing=True)
  )
  config.window_num = bounded(1001, integer(low=2))  # points per window
  # ∫ H(σ(a + b x)) dx is computed by the trapezoid rule over the x-range where the logit
  # a + b x lies in [-T, T]; beyond it the integrand is below (T + 1) e^{-T}.
  config.integral_logit_bound = bounded(40.0, real(low=10))  # T
  config.integral_num = bounded(4001, integer(low=101))  # points of the integration grid
  # points of the p-grid on [0, 1] for H(p) (§2.1, §2.4)
  config.probability_num = bounded(1001, integer(low=3, high=100_001))
  # §2.3: entropy of softmax(β·z) with logits z_k = -k, k = 0..K-1, as β grows.
  config.softmax_num_classes = bounded(10, integer(low=2))  # K
  # β
  config.softmax_inverse_temperatures = bounded(
    (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0), reals(low=0, min_length=2, increasing=True)
  )
  # "nats" (natural log) or "bits" (log base 2)
  config.entropy_unit = bounded("nats", choice("nats", "bits"))

  if variant == "smoke":
    config.grid.num = 401
    config.window_half_widths = (0.5, 2.0, 16.0)
    config.window_num = 201
    config.integral_num = 801
    config.probability_num = 101
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
