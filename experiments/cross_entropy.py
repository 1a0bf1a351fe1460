r"""E2: cross-entropy between the seed's models 1 and 2, and where it is *not* above both entropies.

From the repository root::

    python -m experiments.cross_entropy --config=configs/cross_entropy.py --workdir=runs/e2

Seed §3.1–3.2: H(p, q) = -Σ p log q is not symmetric, and for p = σ₁(x) = σ(x),
q = σ₂(x) = σ(1 + 2x) it is "usually higher than both entropies". Over an x-grid the run
computes H(σ₁, σ₂), H(σ₂, σ₁), H(σ₁), H(σ₂) and both KL divergences, quantifies the asymmetry,
checks Gibbs' inequality H(p, q) ≥ H(p) and finds exactly where H(p, q) < H(q).

Derivation. For Bernoulli distributions p = σ(z_p), q = σ(z_q) (z = a + b·x, the logits)::

    H(p, q) - H(q) = [-p log q - (1-p) log(1-q)] - [-q log q - (1-q) log(1-q)]
                   = -(p - q) log q + (p - q) log(1 - q)
                   = -(p - q) · log(q / (1 - q)) = -(σ(z_p) - σ(z_q)) · z_q,

since log(q / (1 - q)) = logit(σ(z_q)) = z_q. σ is increasing, so sign(p - q) = sign(z_p - z_q)
and::

    H(p, q) < H(q)  ⟺  (z_p - z_q) · z_q > 0,

the sign of a product of two linear functions of x. Its roots are x_= (z_p = z_q: the two
models agree, H(p, q) = H(p) = H(q)) and x_½ (z_q = 0: q = 1/2, H(q) = log 2 = H(p, q)).
For the seed's pair, z_p - z_q = -1 - x and z_q = 1 + 2x::

    H(σ₁, σ₂) < H(σ₂)  ⟺  (-1 - x)(1 + 2x) > 0  ⟺  -1 < x < -1/2.

Reversed (p = σ₂, q = σ₁): z_p - z_q = 1 + x, z_q = x, and (1 + x)·x > 0 ⟺ x < -1 or x > 0:
H(σ₂, σ₁) is above both entropies only on [-1, 0]. In words: H(p, q) ≥ H(p) always
(H(p, q) - H(p) = KL(p‖q) ≥ 0, Gibbs), but H(p, q) < H(q) wherever the model q is less
certain than the target (p and q on the same side of 1/2 with q nearer 1/2). The run finds
the intervals numerically (a float64 sign-change search on H(p, q) - H(q) computed by the
library, refined with Brent's method) and compares them with these closed forms.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from experiments import _common
from xent_jax.cross_entropy import sigmoid_binary_cross_entropy
from xent_jax.divergence import kl_divergence
from xent_jax.entropy import binary_entropy_from_logits
from xent_jax.softmax import sigmoid

MEASURES = ("H(p,q)", "H(q,p)", "H(p)", "H(q)", "KL(p||q)", "KL(q||p)")
PAIR_NAMES = ("σ₁", "σ₂")  # config.target and config.model (by default the seed's models 1, 2)


def validate(config) -> None:
  """The bounds declared in ``configs/cross_entropy.py`` and the constraints between keys."""
  _common.check_declared(config)
  _common.check_grid(config, "grid")
  if tuple(config.target.values()) == tuple(config.model.values()):
    raise _common.ConfigError("config.target and config.model must differ")
  _common.check_memory(  # both σ, both H, both cross-entropies and KLs on the grid
    {"config.grid.num × 8 curves": 8 * config.grid.num, "config.search_num": config.search_num}
  )


def _base(config):
  return None if config.entropy_unit == "nats" else 2.0


def _logits(model, x):
  """z = a + b·x for ``model = (a, b)``."""
  return model[0] + model[1] * x


def _bernoulli(z):
  """[σ(z), σ(-z)] on a last axis of size 2 (1 - σ(z) without cancellation)."""
  return jnp.stack([sigmoid(z), sigmoid(-z)], axis=-1)


def cross_entropy_minus_model_entropy(target, model, x, *, base=None):
  """H(p, q) - H(q) at x, with p = σ(a_p + b_p x), q = σ(a_q + b_q x), by the library."""
  z_p, z_q = _logits(target, x), _logits(model, x)
  # H(p, σ(z_q)) from the logit z_q: no log of a rounded σ in either tail.
  return sigmoid_binary_cross_entropy(z_q, sigmoid(z_p), base=base) - binary_entropy_from_logits(
    z_q, base=base
  )


def gap_closed_form(target, model, x, *, base=None):
  """The derived H(p, q) - H(q) = -(σ(z_p) - σ(z_q))·z_q (in ``base`` units)."""
  z_p, z_q = _logits(target, x), _logits(model, x)
  scale = 1.0 if base is None else float(np.log(base))
  return -(sigmoid(z_p) - sigmoid(z_q)) * z_q / scale


def measures(target, model, x_N, *, base=None) -> dict:
  """H(p, q), H(q, p), H(p), H(q), KL(p‖q), KL(q‖p) on ``x_N`` (library functions)."""
  z_p, z_q = _logits(target, x_N), _logits(model, x_N)
  return {
    "H(p,q)": sigmoid_binary_cross_entropy(z_q, sigmoid(z_p), base=base),
    "H(q,p)": sigmoid_binary_cross_entropy(z_p, sigmoid(z_q), base=base),
    "H(p)": binary_entropy_from_logits(z_p, base=base),
    "H(q)": binary_entropy_from_logits(z_q, base=base),
    "KL(p||q)": kl_divergence(_bernoulli(z_p), _bernoulli(z_q), base=base),
    "KL(q||p)": kl_divergence(_bernoulli(z_q), _bernoulli(z_p), base=base),
  }


def closed_form_intervals(target, model, lo=-np.inf, hi=np.inf) -> list[list[float]]:
  """Where (z_p - z_q)·z_q > 0 on [lo, hi], i.e. H(p, q) < H(q), from the derivation.

  The product is quadratic in x with roots x_= = (a_q - a_p)/(b_p - b_q) (if b_p ≠ b_q) and
  x_½ = -a_q/b_q; its sign is constant between consecutive roots, read at an inner point.
  ``lo``/``hi`` may be ∓inf (the whole real line).
  """
  (a_p, b_p), (a_q, b_q) = target, model
  roots = [-a_q / b_q + 0.0] + ([(a_q - a_p) / (b_p - b_q)] if b_p != b_q else [])
  cuts = [lo, *sorted(r for r in set(roots) if lo < r < hi), hi]
  intervals = []
  for left, right in zip(cuts, cuts[1:], strict=False):
    mid = right - 1 if left == -np.inf else (left + 1 if right == np.inf else 0.5 * (left + right))
    if (a_p - a_q + (b_p - b_q) * mid) * (a_q + b_q * mid) > 0:
      if intervals and intervals[-1][1] == left:
        intervals[-1][1] = right
      else:
        intervals.append([left, right])
  return intervals


def negative_intervals(fn, lo, hi, *, num, xtol) -> list[list[float]]:
  """[left, right] of every x-interval in [lo, hi] where the scalar ``fn(x) < 0``.

  Sign changes are located on ``num`` equally spaced points, and each is refined by
  ``scipy.optimize.brentq`` to ``xtol``; an interval that reaches the end of [lo, hi] ends
  there (lo or hi itself). ``fn`` maps a float64 array to a float64 array.
  """
  x_S = np.linspace(lo, hi, num)
  negative_S = np.asarray(fn(x_S)) < 0
  edges = np.flatnonzero(np.diff(np.concatenate([[0], negative_S.astype(int), [0]])))

  def root(i):  # the sign changes between x_S[i] and x_S[i + 1]
    return optimize.brentq(
      lambda x: float(fn(np.asarray(x))),
      x_S[i],
      x_S[i + 1],
      xtol=xtol,
      rtol=4 * np.finfo(np.float64).eps,
    )

  return [
    [float(lo) if i == 0 else root(i - 1), float(hi) if j == num else root(j - 1)]
    for i, j in zip(edges[::2], edges[1::2], strict=True)
  ]


def _below_model_entropy(target, model, config) -> dict:
  """The x-intervals where H(p, q) < H(q): numerical (float64, library) vs closed form."""
  lo, hi = config.grid.start, config.grid.stop
  with jax.enable_x64(True):  # roots to 1e-6 need more than float32's ~1e-7 in the gap
    gap = jax.jit(
      lambda x: cross_entropy_minus_model_entropy(
        target, model, jnp.asarray(x, jnp.float64), base=_base(config)
      )
    )
    found = negative_intervals(gap, lo, hi, num=config.search_num, xtol=config.root_xtol)
  closed = closed_form_intervals(target, model, lo, hi)
  same_shape = len(found) == len(closed)
  error = max(
    (abs(u - v) for f, c in zip(found, closed, strict=False) for u, v in zip(f, c, strict=True)),
    default=0.0,
  )
  return {
    "intervals": found,
    "closed_form_intervals": closed,
    "closed_form_on_real_line": closed_form_intervals(target, model),
    "max_endpoint_error": error if same_shape else float("inf"),
    "grid_fraction": sum(r - le for le, r in found) / (hi - lo),
  }


@functools.partial(jax.jit, static_argnames="base")
def _pair_curves(target, model, x_N, *, base=None) -> dict:
  """:func:`measures` plus the curves checked against theory (one compiled computation)."""
  m = measures(target, model, x_N, base=base)
  gap_N = cross_entropy_minus_model_entropy(target, model, x_N, base=base)
  return {
    **m,
    "H(p,q)-H(p)": m["H(p,q)"] - m["H(p)"],
    "H(p,q)-H(q)": gap_N,
    "identity_error": gap_N - gap_closed_form(target, model, x_N, base=base),
    "|H(p,q)-H(q,p)|": jnp.abs(m["H(p,q)"] - m["H(q,p)"]),
    "|KL(p||q)-KL(q||p)|": jnp.abs(m["KL(p||q)"] - m["KL(q||p)"]),
  }


def _pair(target, model, names, x_N, config) -> tuple[dict, dict]:
  """All numbers of one ordered pair (target p, model q), and its curves (numpy)."""
  c = _pair_curves(jnp.asarray(target), jnp.asarray(model), x_N, base=_base(config))
  c, x_N = {k: np.asarray(v) for k, v in c.items()}, np.asarray(x_N)
  return {
    "target": names[0],
    "model": names[1],
    "mean_over_grid": {k: c[k].mean() for k in MEASURES},
    "gibbs_min_H(p,q)-H(p)": c["H(p,q)-H(p)"].min(),
    "gibbs_min_at_x": x_N[np.argmin(c["H(p,q)-H(p)"])],
    "max_abs_H(p,q)-H(q,p)": c["|H(p,q)-H(q,p)|"].max(),
    "max_asymmetry_at_x": x_N[np.argmax(c["|H(p,q)-H(q,p)|"])],
    "max_abs_KL(p||q)-KL(q||p)": c["|KL(p||q)-KL(q||p)|"].max(),
    "max_kl_asymmetry_at_x": x_N[np.argmax(c["|KL(p||q)-KL(q||p)|"])],
    "identity_max_abs_error": np.abs(c["identity_error"]).max(),
    "H(p,q)_below_H(q)": _below_model_entropy(target, model, config),
  }, c


def run(config, workdir: _common.Workdir) -> dict:
  """Computes E2's numbers, claims and figure (see the module docstring)."""
  target = (config.target.intercept, config.target.slope)
  model = (config.model.intercept, config.model.slope)
  x_N = np.linspace(config.grid.start, config.grid.stop, config.grid.num).astype(
    jnp.zeros(()).dtype
  )  # the default float dtype (float32 unless x64)
  forward, m_fwd = _pair(target, model, PAIR_NAMES, x_N, config)
  reverse, m_rev = _pair(model, target, PAIR_NAMES[::-1], x_N, config)
  eps = float(np.finfo(x_N.dtype).eps)
  results = _common.to_jsonable(
    {
      "unit": config.entropy_unit,
      "dtype": str(x_N.dtype),
      "grid_spacing": x_N[1] - x_N[0],
      "models": {PAIR_NAMES[0]: target, PAIR_NAMES[1]: model},
      "pairs": [forward, reverse],
    }
  )
  results["claims"] = _claims(results, eps)
  lo, hi = config.grid.start, config.grid.stop
  results["summary"] = {
    f"H({p['target']}, {p['model']}) < H({p['model']}) for x in [{lo:g}, {hi:g}] on": " ∪ ".join(
      f"({lo:.6f}, {hi:.6f})" for lo, hi in p["H(p,q)_below_H(q)"]["intervals"]
    )
    for p in results["pairs"]
  }
  for p in results["pairs"]:
    workdir.log(
      "H(%s, %s) < H(%s) on %s",
      p["target"],
      p["model"],
      p["model"],
      p["H(p,q)_below_H(q)"]["intervals"],
    )
  _figure(workdir, np.asarray(x_N), m_fwd, m_rev, results)
  return results


def _describe(intervals) -> str:
  """ "(-1, -0.5) ∪ (0, ∞)" for a list of [lo, hi] (floats, or "inf"/"-inf" from JSON)."""

  def fmt(v):
    v = float(v)
    return f"{v:.6g}" if np.isfinite(v) else ("∞" if v > 0 else "-∞")

  return " ∪ ".join(f"({fmt(lo)}, {fmt(hi)})" for lo, hi in intervals) or "nowhere"


def _tolerance(eps: float) -> float:
  """Rounding of a difference of O(1) values."""
  return 16 * eps


def _largest_mean_cross_entropy(r: dict) -> float:
  """The scale of the cross-entropies: the larger grid mean of H(p, q) over both pairs."""
  return max(p["mean_over_grid"]["H(p,q)"] for p in r["pairs"])


def _claims(r: dict, eps: float) -> list[dict]:
  """The verdicts on seed §3.1–3.2, each decided by the measured values in ``r``."""
  return [
    claim(r, eps)
    for claim in (
      _claim_cross_entropy_asymmetric,
      _claim_gibbs_cross_entropy_above_target_entropy,
      _claim_cross_entropy_above_both_entropies,
      _claim_cross_entropy_as_distance,
    )
  ]


def _claim_cross_entropy_asymmetric(r: dict, eps: float) -> dict:
  """Seed §3.1: H(p, q) ≠ H(q, p)."""
  fwd = r["pairs"][0]
  tol = _tolerance(eps)
  scale = _largest_mean_cross_entropy(r)
  return _common.claim(
    "3.1-cross-entropy-asymmetric",
    "3.1",
    "交叉熵不是对称的: H(p, q) ≠ H(q, p)",
    {
      "max_abs_H(p,q)-H(q,p)": fwd["max_abs_H(p,q)-H(q,p)"],
      "at_x": fwd["max_asymmetry_at_x"],
      "max_abs_KL(p||q)-KL(q||p)": fwd["max_abs_KL(p||q)-KL(q||p)"],
    },
    holds=fwd["max_abs_H(p,q)-H(q,p)"] > 1e3 * tol * scale,
  )


def _claim_gibbs_cross_entropy_above_target_entropy(r: dict, eps: float) -> dict:
  """Seed §3.2: H(p, q) ≥ H(p) (the part of 'higher than both entropies' that is a theorem)."""
  tol = _tolerance(eps)
  scale = _largest_mean_cross_entropy(r)
  return _common.claim(
    "3.2-gibbs-cross-entropy-above-target-entropy",
    "3.2",
    "H(p, q) ≥ H(p) (the part of 'higher than both entropies' that is a theorem)",
    {f"min H(p,q)-H(p), p = {p['target']}": p["gibbs_min_H(p,q)-H(p)"] for p in r["pairs"]},
    holds=min(p["gibbs_min_H(p,q)-H(p)"] for p in r["pairs"]) >= -tol * scale,
  )


def _claim_cross_entropy_above_both_entropies(r: dict, eps: float) -> dict:
  """Seed §3.2: H(σ₁, σ₂) is higher than both H(σ₁) and H(σ₂)."""
  below = [p["H(p,q)_below_H(q)"] for p in r["pairs"]]
  where = "; ".join(
    f"H({p['target']}, {p['model']}) < H({p['model']}) exactly for x in "
    f"{_describe(b['closed_form_on_real_line'])}"
    for p, b in zip(r["pairs"], below, strict=True)
  )
  return _common.claim(
    "3.2-cross-entropy-above-both-entropies",
    "3.2",
    "交叉熵通常比两个分布各自的熵更高: H(σ₁, σ₂) is higher than both H(σ₁) and H(σ₂)",
    {
      "H(p,q) < H(q) on": {
        f"{p['target']} → {p['model']}": b["intervals"]
        for p, b in zip(r["pairs"], below, strict=True)
      },
      "fraction of the grid": [b["grid_fraction"] for b in below],
      "endpoint error vs closed form": [b["max_endpoint_error"] for b in below],
    },
    holds=not any(b["intervals"] for b in below),
    condition=f"only outside the intervals where {where}",
    correction="H(p, q) ≥ H(p) always (Gibbs), but H(p, q) < H(q) exactly where "
    "(z_p - z_q)·z_q > 0, i.e. " + where + " (H(p, q) - H(q) = -(p - q)·logit(q))",
  )


def _claim_cross_entropy_as_distance(r: dict, eps: float) -> dict:
  """Seed §3.2: 交叉熵反映了两个分布之间的'距离'."""
  fwd = r["pairs"][0]
  tol = _tolerance(eps)
  return _common.claim(
    "3.2-cross-entropy-as-distance",
    "3.2",
    "交叉熵反映了两个分布之间的'距离'",
    {
      "H(p,p) = H(p) > 0, mean over grid": fwd["mean_over_grid"]["H(p)"],
      "max_abs_KL(p||q)-KL(q||p)": fwd["max_abs_KL(p||q)-KL(q||p)"],
    },
    holds=fwd["mean_over_grid"]["H(p)"] <= tol and fwd["max_abs_KL(p||q)-KL(q||p)"] <= tol,
    condition="only its excess over the target's entropy, KL(p‖q) = H(p, q) - H(p) ≥ 0, "
    "which is 0 iff q = p; even KL is not symmetric (not a metric)",
    correction="H(p, q) is not a distance: H(p, p) = H(p) > 0 and H(p, q) ≠ H(q, p); "
    "the divergence part KL(p‖q) = H(p, q) - H(p) is ≥ 0 and 0 iff p = q, but asymmetric",
  )


def _figure(workdir, x_N, m_fwd, m_rev, results) -> None:
  """Curves with the shaded intervals where H(p, q) < H(q); a zoom; gaps and KLs."""
  fig, axes = _common.new_figure(1, 3, figsize=(17, 4.8))
  unit = results["unit"]
  fwd, rev = results["pairs"]
  curves = [
    (m_fwd["H(p,q)"], "H(σ₁, σ₂)", "C0", "-"),
    (m_rev["H(p,q)"], "H(σ₂, σ₁)", "C1", "-"),
    (m_fwd["H(p)"], "H(σ₁)", "C0", ":"),
    (m_fwd["H(q)"], "H(σ₂)", "C1", ":"),
  ]
  zoom = np.abs(x_N + 0.75) <= 1.5
  for ax, mask in ((axes[0], slice(None)), (axes[1], zoom)):
    for y, label, color, ls in curves:
      ax.plot(x_N[mask], np.asarray(y)[mask], color=color, ls=ls, label=label)
    for p, color in ((fwd, "C0"), (rev, "C1")):
      for k, (lo, hi) in enumerate(p["H(p,q)_below_H(q)"]["intervals"]):
        if ax is axes[1]:
          lo, hi = max(lo, x_N[mask][0]), min(hi, x_N[mask][-1])
        ax.axvspan(
          lo,
          hi,
          color=color,
          alpha=0.12,
          label=None if k else f"H({p['target']}, {p['model']}) < H({p['model']})",
        )
    ax.set(xlabel="x", ylabel=f"entropy / cross-entropy ({unit})")
  target, model = results["models"]["σ₁"], results["models"]["σ₂"]
  axes[0].set_title(
    f"σ₁(x) = σ({target[0]:g} + {target[1]:g}x), σ₂(x) = σ({model[0]:g} + {model[1]:g}x)"
  )
  axes[1].set_title("zoom: shaded = cross-entropy below the model's entropy")
  ax = axes[2]
  for m, (p, q), color in ((m_fwd, PAIR_NAMES, "C0"), (m_rev, PAIR_NAMES[::-1], "C1")):
    ax.plot(x_N, np.asarray(m["H(p,q)-H(q)"]), color=color, label=f"H({p}, {q}) - H({q})")
    ax.plot(x_N, np.asarray(m["KL(p||q)"]), color=color, ls="--", label=f"KL({p}‖{q})")
  ax.axhline(0, color="gray", lw=0.8)
  ax.set(
    xlabel="x",
    ylabel=f"difference ({unit})",
    xlim=(-4, 3),
    title="H(p,q) - H(q) = -(p - q)·logit(q) and KL(p‖q) ≥ 0",
  )
  for ax in axes:
    ax.legend(fontsize=7, loc="upper left")  # a fixed place: "best" scans every point
    ax.grid(alpha=0.3)
  workdir.save_figure(
    fig,
    "cross_entropy.png",
    caption=(
      "Cross-entropies and entropies of σ₁ and σ₂ over x (shaded: where H(p, q) < "
      "H(q)), and H(p, q) - H(q) next to KL(p‖q) ≥ 0."
    ),
  )


if __name__ == "__main__":
  _common.main(run, validate)
