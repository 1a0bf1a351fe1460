"""Config of E2, ``experiments/cross_entropy.py`` (seed §3.1–3.2).

From the repository root::

    python -m experiments.cross_entropy --config=configs/cross_entropy.py --workdir=runs/e2
    python -m experiments.cross_entropy --config=configs/cross_entropy.py:smoke \
        --workdir=/tmp/e2-smoke
    python -m experiments.cross_entropy --config=configs/cross_entropy.py \
        --config.model.slope=3.0 --config.entropy_unit=bits --workdir=runs/e2-slope3
"""

import ml_collections

from experiments.config_checks import bounded, choice, integer, real


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke": coarse grids, runs in ~1 s)."""
  config = ml_collections.ConfigDict()
  # The pair compared (seed §3.2): target p(x) = σ(a + b·x) and model q(x) = σ(a + b·x).
  # Defaults: the seed's model 1, σ(x), as the target and model 2, 1/(1+e^{-1-2x}), as the
  # model. The reversed pair (q as the target) is always computed too.
  config.target = ml_collections.ConfigDict()
  config.target.intercept = bounded(0.0, real())  # a of the target p
  config.target.slope = bounded(1.0, real(nonzero=True))  # b of the target p (non-zero)
  config.model = ml_collections.ConfigDict()
  config.model.intercept = bounded(1.0, real())  # a of the model q
  config.model.slope = bounded(2.0, real(nonzero=True))  # b of the model q (non-zero)
  # The x-grid of the curves, the figure, Gibbs' check and the asymmetry maximum.
  config.grid = ml_collections.ConfigDict()
  config.grid.start = bounded(-10.0, real())  # first x
  config.grid.stop = bounded(10.0, real())  # last x
  config.grid.num = bounded(2001, integer(low=2))  # number of points (spacing 0.01)
  # Where H(p, q) < H(q): sign changes of H(p, q) - H(q) are located on this many points of
  # [grid.start, grid.stop] (float64), then each is refined by Brent's method to root_xtol.
  # points of the sign-change search (spacing 1e-4)
  config.search_num = bounded(200_001, integer(low=11, high=10_000_001))
  # absolute tolerance of each root (brentq xtol)
  config.root_xtol = bounded(1e-12, real(low=0, low_open=True, high=1e-6))
  # "nats" (natural log) or "bits" (log base 2)
  config.entropy_unit = bounded("nats", choice("nats", "bits"))

  if variant == "smoke":
    config.grid.num = 401
    config.search_num = 4001
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke')")
  return config
