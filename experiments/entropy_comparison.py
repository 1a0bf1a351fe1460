r"""E1: entropy of logistic models σ(a + b·x), and the seed's claims §2.1–2.6.

From the repository root::

    python -m experiments.entropy_comparison --config=configs/entropy_comparison.py \
        --workdir=runs/e1

For each model p(x) = σ(a + b x) (seed: model 1 σ(x), model 2 σ(1 + 2x), model 3
1/(1 + e^{10+5x}) = σ(-10 - 5x)) on an x-grid: the entropy curve H(x) = H(σ(a + b x)), its
maximum and where it is reached, the grid-mean entropy, the entropy integrated over x against
its closed form, and the ranking of the models by mean entropy on many windows of x.

Closed forms (derived here; the run and, independently, the tests check them numerically):

* Maximum. H(p) is largest at p = 1/2, i.e. where the logit a + b x is 0:
  x* = -a/b and H(x*) = log 2 (1 bit), the same for every model.
* Integral. Substitute t = a + b x (dx = dt/|b|), then p = σ(t) (dt = dp / (p(1 - p))):

      ∫_ℝ H(σ(a + b x)) dx = (1/|b|) ∫_ℝ H(σ(t)) dt = (1/|b|) ∫_0^1 H(p) / (p(1 - p)) dp
                           = (1/|b|) ∫_0^1 [-log p / (1 - p) - log(1 - p) / p] dp
                           = (2/|b|) ∫_0^1 -log(1 - p) / p dp          (p ↔ 1 - p)
                           = (2/|b|) Σ_{k≥1} 1/k² = (2/|b|) π²/6 = π² / (3|b|) nats,

  using -log(1 - p)/p = Σ_{k≥1} p^{k-1}/k. It depends on the slope only: model 1 π²/3 ≈ 3.290,
  model 2 π²/6 ≈ 1.645, model 3 π²/15 ≈ 0.658 nats (divide by ln 2 for bits). Steepness fixes
  how much entropy a model spends over x; the intercept only moves where (x*).

Consequence for seed §2.6 ("model 3 leans to one class, so its entropy is lower"): a mean of
H over a window is ≈ π²/(3|b|·width) on wide windows (model 3 lowest), but on a window
around model 3's own x* = -2 its entropy is the highest. The run reports on which windows the
seed's ranking holds.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from xent_jax.entropy import binary_entropy, binary_entropy_from_logits, entropy_from_logits
from xent_jax.softmax import log_softmax, sigmoid, tanh_probability


def validate(config) -> None:
  """The bounds declared in ``configs/entropy_comparison.py`` and the constraints between keys."""
  _common.check_declared(config)
  _common.check_grid(config, "grid")
  if len(config.intercepts) != len(config.slopes):
    raise _common.ConfigError(
      f"config.intercepts and config.slopes must have the same length, got "
      f"{len(config.intercepts)} and {len(config.slopes)}"
    )
  models = len(config.intercepts)
  _common.check_memory(  # σ and H curves of every model on each grid
    {
      f"config.grid.num × {models} models × 2 curves": 2 * models * config.grid.num,
      f"config.integral_num × {models} models": models * config.integral_num,
      f"config.window_num × {models} models": models * config.window_num,
      "config.probability_num": config.probability_num,
    }
  )


@functools.partial(jax.jit, static_argnames="base")
def _library_values(logits_L, x_N, p_P, logits_BxC, *, base):
  """Every xent_jax value E1 uses, in one compiled call (one compile, not one per op)."""
  return {
    "entropy_L": binary_entropy_from_logits(logits_L, base=base),
    "sigmoid_L": sigmoid(logits_L),
    "tanh_probability_N": tanh_probability(x_N),
    "sigmoid_2x_N": sigmoid(2 * x_N),
    "raw_tanh_N": jnp.tanh(x_N),
    "binary_entropy_P": binary_entropy(p_P, base=base),
    "softmax_BxC": jnp.exp(log_softmax(logits_BxC)),
    "softmax_entropy_B": entropy_from_logits(logits_BxC, base=base),
  }


def _compute(config, bounds, base) -> dict:
  """The x-grids (float64 numpy), their logits a + b x, and xent_jax's values on them."""
  a_M, b_M = np.asarray(config.intercepts, float), np.asarray(config.slopes, float)
  x_N = np.linspace(config.grid.start, config.grid.stop, config.grid.num)
  # Integration grid: the x-range where the logit a + b x covers [-T, T].
  u_I = np.linspace(-1.0, 1.0, config.integral_num)
  x_MxI = (-a_M / b_M)[:, None] + (config.integral_logit_bound / np.abs(b_M))[:, None] * u_I
  lo_W, hi_W = (np.asarray(v) for v in zip(*bounds, strict=True))
  x_WxK = lo_W[:, None] + (hi_W - lo_W)[:, None] * np.linspace(0.0, 1.0, config.window_num)
  logits = [
    a_M[:, None] + b_M[:, None] * x_N,
    a_M[:, None] + b_M[:, None] * x_MxI,
    a_M[:, None, None] + b_M[:, None, None] * x_WxK,
  ]
  # One flat vector, so binary_entropy_from_logits and sigmoid are compiled once.
  beta_B = np.asarray(config.softmax_inverse_temperatures, float)
  p_P = np.linspace(0.0, 1.0, config.probability_num)
  out = _library_values(
    jnp.concatenate([jnp.asarray(z).ravel() for z in logits]),
    jnp.asarray(x_N),
    jnp.asarray(p_P),
    jnp.asarray(beta_B[:, None] * -np.arange(config.softmax_num_classes)),
    base=base,
  )
  arr = {k: np.asarray(v) for k, v in out.items()}
  split = np.cumsum([z.size for z in logits])[:-1]
  h_MxN, h_MxI, h_MxWxK = (
    h.reshape(z.shape) for h, z in zip(np.split(arr.pop("entropy_L"), split), logits, strict=True)
  )
  sigmoid_MxN = arr.pop("sigmoid_L")[: split[0]].reshape(logits[0].shape)
  dtype = h_MxN.dtype
  return {
    **arr,
    "x_N": x_N,
    "entropy_MxN": h_MxN,
    "sigmoid_MxN": sigmoid_MxN,
    "integral_M": np.trapezoid(h_MxI.astype(float), x_MxI),
    "window_mean_MxW": h_MxWxK.mean(-1, dtype=float),
    "p_P": p_P.astype(dtype),
  }


def _intervals(x_N, mask_N) -> list[list[float]]:
  """The [first x, last x] of every run of True in ``mask_N``."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask_N.astype(int), [0]])))
  return [[float(x_N[i]), float(x_N[j - 1])] for i, j in zip(edges[::2], edges[1::2], strict=True)]


def _model_table(config, arr, nats):
  """Per model: maximum, its location, grid mean and the integral vs closed forms."""
  x_N, h_MxN = arr["x_N"], arr["entropy_MxN"]
  table = []
  for m, (a, b) in enumerate(zip(config.intercepts, config.slopes, strict=True)):
    closed = math.pi**2 / (3 * abs(b) * nats)
    table.append(
      {
        "name": f"model {m + 1}",
        "a": a,
        "b": b,
        "max_entropy_x_closed_form": -a / b + 0.0,  # + 0.0: no "-0.0" in the output
        "max_entropy_x_on_grid": x_N[h_MxN[m].argmax()],
        "max_entropy_closed_form": math.log(2) / nats,
        "max_entropy_on_grid": h_MxN[m].max(),
        "grid_mean_entropy": h_MxN[m].mean(dtype=np.float64),
        "integral": arr["integral_M"][m],
        "integral_closed_form": closed,
        "integral_relative_error": abs(float(arr["integral_M"][m]) / closed - 1),
        "integral_over_grid_only": np.trapezoid(h_MxN[m].astype(np.float64), x_N),
      }
    )
  return table


def _window_bounds(config) -> list[tuple[float, float]]:
  """[c - w, c + w] for c = 0 and every model's x* = -a/b, then the whole grid."""
  centres = sorted({0.0, *(-a / b for a, b in zip(config.intercepts, config.slopes, strict=True))})
  bounds = [(c - w, c + w) for c in centres for w in config.window_half_widths]
  return bounds + [(config.grid.start, config.grid.stop)]


def _windows(bounds, mean_MxW) -> list[dict]:
  """Mean entropy of every model on each window, and the ranking there."""
  windows = []
  for w, (lo, hi) in enumerate(bounds):
    order = np.argsort(mean_MxW[:, w], kind="stable")
    windows.append(
      {
        "lo": lo,
        "hi": hi,
        "mean_entropy": mean_MxW[:, w],
        "ranking_low_to_high": [f"model {m + 1}" for m in order],
        "model_3_lowest": bool(order[0] == 2),
      }
    )
  return windows


def _probabilities(config, arr, nats):
  """§2.1–2.4: H(p) on a p-grid, the normalised tanh, softmax(β z) as β grows."""
  h_P, half = arr["binary_entropy_P"], config.probability_num // 2
  # Every step towards p = 1/2 should raise H: the smallest rise on either side (≥ 0 up to
  # rounding if so; near p = 1/2 the rise 2·δp² falls below float32 resolution on fine grids).
  rise = min(float(np.diff(h_P[: half + 1]).min()), float(-np.diff(h_P[half:]).max()))
  softmax_BxC, tanh_p_N = arr["softmax_BxC"], arr["tanh_probability_N"]
  return {
    "binary_entropy": {
      "argmax_p": arr["p_P"][h_P.argmax()],
      "max": h_P.max(),
      "at_0": h_P[0],
      "at_1": h_P[-1],
      "smallest_rise_towards_half": rise,
      "p_spacing": 1 / (config.probability_num - 1),
    },
    "probability_maps": {
      "sigmoid_min": arr["sigmoid_MxN"].min(),
      "sigmoid_max": arr["sigmoid_MxN"].max(),
      "raw_tanh_min": arr["raw_tanh_N"].min(),
      "tanh_probability_min": tanh_p_N.min(),
      "tanh_probability_max": tanh_p_N.max(),
      "tanh_probability_vs_sigmoid_2x_max_abs_diff": np.abs(tanh_p_N - arr["sigmoid_2x_N"]).max(),
      "softmax_min": softmax_BxC.min(),
      "softmax_max": softmax_BxC.max(),
      "softmax_sum_max_abs_error": np.abs(softmax_BxC.sum(-1) - 1).max(),
    },
    "softmax_sweep": {
      "inverse_temperature": config.softmax_inverse_temperatures,
      "entropy": arr["softmax_entropy_B"],
      "max_probability": softmax_BxC.max(-1),
      "uniform_entropy": math.log(config.softmax_num_classes) / nats,
    },
  }


def run(config, workdir: _common.Workdir) -> dict:
  """Computes E1's numbers, claims and figure (see the module docstring)."""
  base = None if config.entropy_unit == "nats" else 2.0
  nats = 1.0 if base is None else math.log(base)
  bounds = _window_bounds(config)
  arr = _compute(config, bounds, base)
  x_np, h_MxN = arr["x_N"], arr["entropy_MxN"]
  others = np.delete(h_MxN, 2, axis=0)
  results = {
    "unit": config.entropy_unit,
    "dtype": str(h_MxN.dtype),
    "models": _model_table(config, arr, nats),
    "windows": _windows(bounds, arr["window_mean_MxW"]),
    "pointwise_model_3": {
      "highest_on": _intervals(x_np, h_MxN[2] > others.max(0)),
      "lowest_on": _intervals(x_np, h_MxN[2] < others.min(0)),
      "grid_spacing": x_np[1] - x_np[0],
    },
    **_probabilities(config, arr, nats),
  }
  results = _common.to_jsonable(results)
  eps = float(np.finfo(h_MxN.dtype).eps)  # of the dtype xent_jax computed in
  results["claims"] = _claims(results, eps, x_np[1] - x_np[0])
  grid_window = results["windows"][-1]
  results["summary"] = {
    **{
      f"{m['name']}: {k}": m[k]
      for m in results["models"]
      for k in ("grid_mean_entropy", "integral", "integral_closed_form")
    },
    f"ranking on the grid [{grid_window['lo']:g}, {grid_window['hi']:g}], low to high": " < ".join(
      grid_window["ranking_low_to_high"]
    ),
  }
  workdir.log("grid means: %s", [round(m["grid_mean_entropy"], 4) for m in results["models"]])
  _figure(workdir, x_np, arr["sigmoid_MxN"], h_MxN, results)
  return results


def _claims(r: dict, eps: float, dx: float) -> list[dict]:
  """The verdicts on seed §2.1–2.6, each decided by the measured values in ``r``."""
  return [
    claim(r, eps, dx)
    for claim in (
      _claim_entropy_measures_uncertainty,
      _claim_outputs_are_probabilities,
      _claim_concentrated_means_low_entropy,
      _claim_max_entropy_at_half,
      _claim_models_1_2_differ,
      _claim_model_3_lower_entropy,
      _claim_entropy_alone_cannot_rank,
    )
  ]


def _claim_entropy_measures_uncertainty(r: dict, eps: float, dx: float) -> dict:
  """Seed §2.1: the more uncertain the prediction, the higher H = -Σ p log p."""
  be = r["binary_entropy"]
  models = r["models"]
  log2 = models[0]["max_entropy_closed_form"]
  tol = 8 * eps * log2
  return _common.claim(
    "2.1-entropy-measures-uncertainty",
    "2.1",
    "预测越模糊,熵越高: the more uncertain the prediction, the higher H = -Σ p log p",
    {
      "smallest_rise_of_H_per_step_of_p_towards_0.5": be["smallest_rise_towards_half"],
      "H(0)": be["at_0"],
      "H(0.5)": be["max"],
      "H(1)": be["at_1"],
    },
    holds=be["smallest_rise_towards_half"] > -tol
    and be["at_0"] == be["at_1"] == 0
    and be["max"] > 0,
    correction="H(p) is not monotone in the uncertainty |p - 1/2| on the p-grid",
  )


def _claim_outputs_are_probabilities(r: dict, eps: float, dx: float) -> dict:
  """Seed §2.2: logistic, softmax and normalised tanh (1 + tanh x)/2 give values in [0, 1]."""
  maps = r["probability_maps"]
  in_unit = all(
    0 <= maps[k] <= 1
    for k in (
      "sigmoid_min",
      "sigmoid_max",
      "tanh_probability_min",
      "tanh_probability_max",
      "softmax_min",
      "softmax_max",
    )
  )
  return _common.claim(
    "2.2-outputs-are-probabilities",
    "2.2",
    "logistic, softmax and normalised tanh (1 + tanh x)/2 give values in [0, 1]",
    {
      k: maps[k]
      for k in (
        "sigmoid_min",
        "sigmoid_max",
        "tanh_probability_min",
        "tanh_probability_max",
        "raw_tanh_min",
        "tanh_probability_vs_sigmoid_2x_max_abs_diff",
        "softmax_sum_max_abs_error",
      )
    },
    holds=in_unit
    and maps["tanh_probability_vs_sigmoid_2x_max_abs_diff"] <= 4 * eps
    and maps["softmax_sum_max_abs_error"] <= 16 * eps,
    correction="some computed outputs leave [0, 1] (or tanh_probability ≠ σ(2x)); "
    "see the measured extremes",
  )


def _claim_concentrated_means_low_entropy(r: dict, eps: float, dx: float) -> dict:
  """Seed §2.3: softmax: the more concentrated the distribution, the lower its entropy."""
  sweep = r["softmax_sweep"]
  models = r["models"]
  log2 = models[0]["max_entropy_closed_form"]
  tol = 8 * eps * log2
  h_b = sweep["entropy"]
  return _common.claim(
    "2.3-concentrated-means-low-entropy",
    "2.3",
    "softmax: the more concentrated the distribution, the lower its entropy",
    {
      "H_at_beta_0": h_b[0],
      "uniform_H": sweep["uniform_entropy"],
      "H_at_largest_beta": h_b[-1],
      "max_probability_at_largest_beta": sweep["max_probability"][-1],
    },
    holds=all(b <= a + tol for a, b in zip(h_b, h_b[1:], strict=False))
    and abs(h_b[0] - sweep["uniform_entropy"]) <= tol
    and h_b[-1] < h_b[0],
    correction="the entropy of softmax(βz) did not decrease as β grew",
  )


def _claim_max_entropy_at_half(r: dict, eps: float, dx: float) -> dict:
  """Seed §2.4: binary entropy is largest when the probability is 0.5 (max log 2)."""
  be = r["binary_entropy"]
  models = r["models"]
  log2 = models[0]["max_entropy_closed_form"]
  tol = 8 * eps * log2
  located = all(
    abs(m["max_entropy_x_on_grid"] - m["max_entropy_x_closed_form"]) <= dx for m in models
  )
  return _common.claim(
    "2.4-max-entropy-at-half",
    "2.4",
    "binary entropy is largest when the probability is 0.5 (max log 2)",
    {
      "argmax_p": be["argmax_p"],
      "max_H": be["max"],
      "log_2": log2,
      "models_argmax_x_vs_-a/b": [
        [m["max_entropy_x_on_grid"], m["max_entropy_x_closed_form"]] for m in models
      ],
    },
    holds=abs(be["argmax_p"] - 0.5) <= be["p_spacing"] / 2
    and abs(be["max"] - log2) <= tol
    and located,
    correction=f"the measured maximum is at p = {be['argmax_p']:g}, H = {be['max']:g}",
  )


def _claim_models_1_2_differ(r: dict, eps: float, dx: float) -> dict:
  """Seed §2.5: models 1 and 2 have different entropies."""
  models = r["models"]
  log2 = models[0]["max_entropy_closed_form"]
  m1, m2 = models[0], models[1]
  diff_12 = max(
    abs(m1["grid_mean_entropy"] - m2["grid_mean_entropy"]), abs(m1["integral"] - m2["integral"])
  )
  return _common.claim(
    "2.5-models-1-2-differ",
    "2.5",
    "models 1 and 2 have different entropies",
    {
      "grid_mean_model_1": m1["grid_mean_entropy"],
      "grid_mean_model_2": m2["grid_mean_entropy"],
      "integral_model_1": m1["integral"],
      "integral_model_2": m2["integral"],
      "max_H_both": log2,
    },
    holds=diff_12 > 1e3 * eps,
    correction="models 1 and 2 have the same entropy on this grid",
  )


def _claim_model_3_lower_entropy(r: dict, eps: float, dx: float) -> dict:
  """Seed §2.6: model 3 leans to one class, so its entropy is lower (than models 1 and 2)."""
  models = r["models"]
  at = _ranges(r["windows"])
  highest = ", ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in r["pointwise_model_3"]["highest_on"])
  return _common.claim(
    "2.6-model-3-lower-entropy",
    "2.6",
    "model 3 leans to one class, so its entropy is lower (than models 1 and 2)",
    {
      "windows_where_lowest": len(at["lowest"]),
      "windows": len(r["windows"]),
      "not_lowest_on": ", ".join(at["not_lowest"]),
      "highest_pointwise_for_x_in": highest,
      "integrals": [m["integral"] for m in models],
    },
    holds=not at["not_lowest"],
    condition=at["lowest"]
    and (
      f"lowest mean entropy on {len(at['lowest'])} of {len(r['windows'])} x-windows "
      f"(the whole grid {at['grid']}: {'yes' if at['grid_lowest'] else 'no'}), "
      f"not on {', '.join(at['not_lowest'])}"
    ),
    correction=f"model 3's entropy curve also peaks at log 2 (at x = "
    f"{models[2]['max_entropy_x_closed_form']:g}) and is the highest of all models for "
    f"x in {highest}; only averaged over a window that is wide or away from its peak is "
    f"it lower. Over all of ℝ its entropy ∫H dx = π²/(3|b|) = "
    f"{models[2]['integral_closed_form']:.4g} {r['unit']} is the lowest because it is "
    f"the steepest (|b| = {abs(models[2]['b']):g}), not because it leans to one class",
  )


def _claim_entropy_alone_cannot_rank(r: dict, eps: float, dx: float) -> dict:
  """Seed §2.6: comparing models needs a common measure; entropy alone cannot rank them."""
  at = _ranges(r["windows"])
  return _common.claim(
    "2.6-entropy-alone-cannot-rank",
    "2.6",
    "comparing models needs a common measure; entropy alone cannot rank them",
    {"distinct_rankings_over_windows": len(at["rankings"]), "rankings": sorted(at["rankings"])},
    holds=len(at["rankings"]) > 1,
    correction="on every window tried the entropy ranking is the same",
  )


def _ranges(windows: list[dict]) -> dict:
  """Windows (as "[lo, hi]" strings) where model 3 is / is not lowest; distinct rankings."""

  def name(w):
    return f"[{w['lo']:g}, {w['hi']:g}]"

  return {
    "lowest": [name(w) for w in windows if w["model_3_lowest"]],
    "not_lowest": [name(w) for w in windows if not w["model_3_lowest"]],
    "rankings": {" < ".join(w["ranking_low_to_high"]) for w in windows},
    "grid": name(windows[-1]),
    "grid_lowest": windows[-1]["model_3_lowest"],
  }


def _figure(workdir, x_N, sig_MxN, h_MxN, results) -> None:
  """σ curves, entropy curves, and mean entropy against window width."""
  fig, (ax_p, ax_h, ax_w) = _common.new_figure(1, 3, figsize=(16, 4.6))
  unit = results["unit"]
  for m, model in enumerate(results["models"]):
    sign = "+" if model["b"] >= 0 else "-"
    label = f"{model['name']}: σ({model['a']:g} {sign} {abs(model['b']):g}x)"
    ax_p.plot(x_N, sig_MxN[m], label=label, color=f"C{m}")
    ax_h.plot(
      x_N,
      h_MxN[m],
      label=f"{model['name']} (∫H dx = {model['integral']:.3f} {unit})",
      color=f"C{m}",
    )
    ax_h.axvline(model["max_entropy_x_closed_form"], color=f"C{m}", ls=":", lw=0.8)
    for c, fill in ((0.0, f"C{m}"), (results["models"][2]["max_entropy_x_closed_form"], "none")):
      ws = [w for w in results["windows"][:-1] if np.isclose((w["lo"] + w["hi"]) / 2, c)]
      ax_w.plot(  # one point per window (a line would suggest values between the widths)
        [(w["hi"] - w["lo"]) / 2 for w in ws],
        [w["mean_entropy"][m] for w in ws],
        ls="none",
        marker="o",
        ms=5,
        mfc=fill,
        color=f"C{m}",
        label=f"{model['name']}, windows centred at x = {c:g}",
      )
  h_max = results["models"][0]["max_entropy_closed_form"]
  h_max_text = "log 2 nats = 1 bit" if unit == "bits" else f"log 2 = {h_max:.4g} nats"
  ax_h.axhline(h_max, color="gray", ls="--", lw=0.8, label=f"max: {h_max_text}")
  ax_p.set(xlabel="x", ylabel="p(y = 1 | x)", title="model outputs σ(a + b·x)")
  ax_h.set(
    xlabel="x",
    ylabel=f"H(σ(a + b·x)) ({unit})",
    title="binary entropy of each model (dotted: x* = -a/b)",
  )
  ax_w.set(
    xscale="log",
    xlabel="window half-width w (window [c - w, c + w])",
    ylabel=f"mean entropy over the window ({unit})",
    title="ranking depends on the window",
  )
  for ax in (ax_p, ax_h, ax_w):
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  workdir.save_figure(
    fig,
    "entropy_curves.png",
    caption=(
      "The three models σ(a + b·x), their binary entropies (all peak at log 2, at x = "
      "-a/b) and mean entropy per x-window: the ranking depends on the window."
    ),
  )


if __name__ == "__main__":
  _common.main(run, validate)
