r"""E7: held-out cross-entropy ranks models and finds the true one; entropy does not.

From the repository root::

    python -m experiments.model_comparison --config=configs/model_comparison.py \
        --workdir=runs/e7

Seed §2.6: comparing models "cannot only look at the size of the entropy, a common measure is
needed"; §3.2 and §5: cross-entropy is that measure. Labels are sampled from a known model,
the seed's σ₁ (x ~ Uniform[x_low, x_high], y ~ Bernoulli(σ₁(x))), and the candidates are the
seed's models 1–3 plus two fitted on a training split (logistic regression trained with
:mod:`xent_jax.training`, and the base rate). Each candidate q is scored by

* its held-out cross-entropy (1/N) Σ_n H(y_n, q(x_n)) (``sigmoid_binary_cross_entropy``), with
  the standard error s/√N, and the gap to the true model with the standard error of the paired
  per-example differences;
* its own mean entropy (1/N) Σ_n H(q(x_n)) (``binary_entropy_from_logits``): how certain
  the model is, whatever the labels;
* its population cross-entropy E_x[H(p(x), q(x))] = E_x[H(p(x))] + E_x[KL(p(x)‖q(x))]
  (trapezoid rule over x): the ranking without sampling noise. The true model minimises it,
  since KL ≥ 0 with equality only for q = p.

The run compares the rankings by held-out cross-entropy and by entropy (Kendall's τ between
the two score vectors) and checks that the true model ranks first by held-out cross-entropy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from xent_jax import models, training
from xent_jax.cross_entropy import sigmoid_binary_cross_entropy
from xent_jax.entropy import binary_entropy_from_logits
from xent_jax.softmax import sigmoid

FITTED = ("fitted logistic regression", "base rate")


def validate(config) -> None:
  """The bounds declared in ``configs/model_comparison.py`` and the constraints between keys."""
  _common.check_declared(config)
  if len(config.intercepts) != len(config.slopes):
    raise _common.ConfigError(
      f"config.intercepts and config.slopes must have the same length, got "
      f"{len(config.intercepts)} and {len(config.slopes)}"
    )
  if config.true_model >= len(config.intercepts):
    raise _common.ConfigError(
      f"config.true_model must index a candidate (< {len(config.intercepts)}), got "
      f"{config.true_model}"
    )
  if not config.data.x_low < config.data.x_high:
    raise _common.ConfigError(
      f"config.data.x_low must be < config.data.x_high, got {config.data.x_low} and "
      f"{config.data.x_high}"
    )
  models = len(config.intercepts)
  _common.check_memory(  # every candidate's probabilities on the data and the population grid
    {
      f"config.data.num_test × {models + 2} candidates": (models + 2) * config.data.num_test,
      "config.data.num_train": 4 * config.data.num_train,
      "config.population_num × candidates": (models + 2) * config.population_num,
    }
  )


def sample_data(*, seed, x_low, x_high, num_train, num_test, intercept, slope):
  """x ~ Uniform[x_low, x_high], y ~ Bernoulli(σ(intercept + slope·x)), numpy float64.

  Returns:
    ``(x_train, y_train, x_test, y_test)``, labels as float 0/1.
  """
  rng = np.random.default_rng(seed)
  x_N = rng.uniform(x_low, x_high, num_train + num_test)
  y_N = (rng.random(x_N.shape) < 1 / (1 + np.exp(-(intercept + slope * x_N)))).astype(float)
  return x_N[:num_train], y_N[:num_train], x_N[num_train:], y_N[num_train:]


@functools.partial(jax.jit, static_argnames=("learning_rate", "num_steps"))
def fit_logistic(x_N, y_N, *, learning_rate, num_steps):
  """(a, b) of σ(a + b·x) fitted by full-batch SGD on the mean cross-entropy, from zero."""
  optimizer = training.sgd(learning_rate)
  state = training.init_train_state(models.init_logistic_regression(1, dtype=x_N.dtype), optimizer)
  state, _ = jax.lax.scan(
    lambda s, _: training.train_step(
      s, (x_N[:, None], y_N), loss_fn=models.logistic_regression_loss, optimizer=optimizer
    ),
    state,
    length=num_steps,
  )
  return state.params["b"], state.params["w"][0]


def base_rate(y_N):
  """(a, b) = (logit(mean y), 0): the constant model, the intercept-only likelihood optimum."""
  rate = np.mean(y_N)
  return float(np.log(rate / (1 - rate))), 0.0


@jax.jit
def score(a_C, b_C, x_N, y_N, a_true, b_true, x_G):
  """Per candidate: held-out per-example cross-entropy, mean entropy, population measures.

  Args:
    a_C, b_C: intercepts and slopes of the C candidates.
    x_N, y_N: held-out inputs and 0/1 labels.
    a_true, b_true: the model the labels were drawn from.
    x_G: uniform grid over the x-range (population expectations by the trapezoid rule).
      Must be equally spaced.

  Returns:
    ``{"cross_entropy_CxN", "mean_entropy_C", "population_cross_entropy_C",
    "population_entropy_true"}``.
  """
  z_CxN = a_C[:, None] + b_C[:, None] * x_N[None, :]
  z_CxG = a_C[:, None] + b_C[:, None] * x_G[None, :]
  p_true_G = sigmoid(a_true + b_true * x_G)
  # Trapezoid rule on the uniform grid, divided by its length: (Σ v - (v_0 + v_last)/2)/(G - 1).
  mean_G = lambda v: (v.sum(-1) - 0.5 * (v[..., 0] + v[..., -1])) / (x_G.shape[0] - 1)
  return {
    "cross_entropy_CxN": sigmoid_binary_cross_entropy(z_CxN, jnp.broadcast_to(y_N, z_CxN.shape)),
    "mean_entropy_C": binary_entropy_from_logits(z_CxN).mean(-1),
    "population_cross_entropy_C": mean_G(
      sigmoid_binary_cross_entropy(z_CxG, jnp.broadcast_to(p_true_G, z_CxG.shape))
    ),
    "population_entropy_true": mean_G(binary_entropy_from_logits(a_true + b_true * x_G)),
  }


def kendall_tau(u, v) -> float:
  """Kendall's τ-a between two score vectors: (concordant - discordant pairs) / (n choose 2)."""
  u, v = np.asarray(u), np.asarray(v)
  i, j = np.triu_indices(len(u), k=1)
  return float(np.sum(np.sign(u[i] - u[j]) * np.sign(v[i] - v[j])) / len(i))


def _ranking(names, scores) -> list[str]:
  return [names[k] for k in np.argsort(scores, kind="stable")]


def run(config, workdir: _common.Workdir) -> dict:
  """Computes E7's numbers, claims and figure (see the module docstring)."""
  t = config.true_model
  a_true, b_true = config.intercepts[t], config.slopes[t]
  x_tr, y_tr, x_te, y_te = sample_data(**config.data, intercept=a_true, slope=b_true)
  dtype = jnp.zeros(()).dtype
  fitted = [
    tuple(
      float(v)
      for v in fit_logistic(jnp.asarray(x_tr, dtype), jnp.asarray(y_tr, dtype), **config.fit)
    ),
    base_rate(y_tr),
  ]
  a_C = [*config.intercepts, *(a for a, _ in fitted)]
  b_C = [*config.slopes, *(b for _, b in fitted)]
  names = [f"model {i + 1}" + (" (true)" if i == t else "") for i in range(len(config.slopes))]
  names += list(FITTED)
  x_G = np.linspace(config.data.x_low, config.data.x_high, config.population_num)
  s = jax.tree.map(
    np.asarray, score(*(jnp.asarray(v, dtype) for v in (a_C, b_C, x_te, y_te, a_true, b_true, x_G)))
  )
  results = _common.to_jsonable(_tables(names, a_C, b_C, t, s))
  results["claims"] = _claims(results)
  results["summary"] = {
    "ranking by held-out cross-entropy": results["ranking_cross_entropy"],
    "ranking by mean entropy": results["ranking_entropy"],
    "Kendall tau (cross-entropy vs entropy)": results["kendall_tau"],
  }
  workdir.log("held-out cross-entropy ranking: %s", results["ranking_cross_entropy"])
  workdir.log(
    "entropy ranking: %s (Kendall tau %.3f)", results["ranking_entropy"], results["kendall_tau"]
  )
  _figure(workdir, (x_te, y_te), results)
  return results


def _tables(names, a_C, b_C, t, s) -> dict:
  """Per-candidate table, rankings and the true model's margin over the runner-up."""
  ce_CxN = s["cross_entropy_CxN"].astype(np.float64)
  n = ce_CxN.shape[1]
  ce_C, se_C = ce_CxN.mean(1), ce_CxN.std(1, ddof=1) / np.sqrt(n)
  diff_CxN = ce_CxN - ce_CxN[t]
  gap_se_C = diff_CxN.std(1, ddof=1) / np.sqrt(n)
  candidates = [
    {
      "name": names[c],
      "intercept": a_C[c],
      "slope": b_C[c],
      "held_out_cross_entropy": ce_C[c],
      "standard_error": se_C[c],
      "gap_to_true": ce_C[c] - ce_C[t],
      "gap_standard_error": gap_se_C[c],
      "mean_entropy": s["mean_entropy_C"][c],
      "population_cross_entropy": s["population_cross_entropy_C"][c],
      "population_kl_from_true": s["population_cross_entropy_C"][c] - s["population_entropy_true"],
    }
    for c in range(len(names))
  ]
  others = [c for c in range(len(names)) if c != t]
  runner_up = min(others, key=lambda c: ce_C[c])
  return {
    "num_test": n,
    "true_model": names[t],
    "candidates": candidates,
    "ranking_cross_entropy": _ranking(names, ce_C),
    "ranking_entropy": _ranking(names, s["mean_entropy_C"]),
    "ranking_population_cross_entropy": _ranking(names, s["population_cross_entropy_C"]),
    "kendall_tau": kendall_tau(ce_C, s["mean_entropy_C"]),
    "population_entropy_true": s["population_entropy_true"],
    "true_model_margin": {
      "runner_up": names[runner_up],
      "gap": ce_C[runner_up] - ce_C[t],
      "standard_error": gap_se_C[runner_up],
      "z": (ce_C[runner_up] - ce_C[t]) / gap_se_C[runner_up],
    },
  }


def _claims(r: dict) -> list[dict]:
  """The verdicts on seed §2.6, §3.2 and §5, each decided by the measured values in ``r``."""
  return [
    claim(r)
    for claim in (
      _claim_cross_entropy_compares_models,
      _claim_entropy_alone_cannot_rank,
    )
  ]


def _claim_cross_entropy_compares_models(r: dict) -> dict:
  """Seed §3.2, 5: held-out cross-entropy ranks the models and the true model wins."""
  margin = r["true_model_margin"]
  rank_ce = r["ranking_cross_entropy"]
  return _common.claim(
    "3.2-cross-entropy-compares-models",
    "3.2, 5",
    "交叉熵可用于比较不同模型的预测效果: held-out cross-entropy ranks the models and the "
    "true model wins",
    {
      "ranking (lowest first)": rank_ce,
      "population ranking": r["ranking_population_cross_entropy"],
      "true model's lead over the runner-up (nats)": margin["gap"],
      "standard error of the lead": margin["standard_error"],
      "z": margin["z"],
      "runner-up": margin["runner_up"],
    },
    holds=rank_ce[0] == r["true_model"]
    and margin["z"] > 2
    and rank_ce == r["ranking_population_cross_entropy"],
    condition=f"the true model ranks first but only {margin['z']:.2f} standard errors "
    f"ahead of {margin['runner_up']}"
    if rank_ce[0] == r["true_model"]
    else None,
    correction="with this held-out set, sampling noise decides the top of the ranking; "
    "the population cross-entropy still ranks the true model first",
  )


def _claim_entropy_alone_cannot_rank(r: dict) -> dict:
  """The verdict on seed §2.6, claim ``2.6-entropy-alone-cannot-rank``."""
  rank_ce = r["ranking_cross_entropy"]
  rank_h = r["ranking_entropy"]
  by_name = {c["name"]: c for c in r["candidates"]}
  lowest_h = rank_h[0]
  return _common.claim(
    "2.6-entropy-alone-cannot-rank",
    "2.6",
    "不能只看熵的大小: ranking models by their own entropy does not give the ranking by "
    "predictive quality",
    {
      "ranking by mean entropy (lowest first)": rank_h,
      "ranking by held-out cross-entropy": rank_ce,
      "Kendall tau": r["kendall_tau"],
      f"lowest entropy: {lowest_h}, its cross-entropy rank": (
        f"{rank_ce.index(lowest_h) + 1} of {len(rank_ce)}"
      ),
      f"{lowest_h}: entropy, cross-entropy": [
        by_name[lowest_h]["mean_entropy"],
        by_name[lowest_h]["held_out_cross_entropy"],
      ],
    },
    holds=rank_h != rank_ce and lowest_h != r["true_model"],
    correction="here the entropy ranking happens to equal the cross-entropy ranking",
  )


def _figure(workdir, test, r) -> None:
  """Candidate curves over the data; cross-entropy vs entropy per candidate."""
  fig, (ax_p, ax_b, ax_s) = _common.new_figure(1, 3, figsize=(17, 4.8))
  x_te, y_te = test
  rng = np.random.default_rng(0)
  keep = rng.permutation(len(x_te))[:1000]
  ax_p.scatter(
    x_te[keep],
    y_te[keep] + rng.uniform(-0.03, 0.03, len(keep)),
    s=3,
    c="gray",
    alpha=0.4,
    label="held-out labels (1000 shown)",
  )
  x = np.linspace(x_te.min(), x_te.max(), 400)
  for k, c in enumerate(r["candidates"]):
    ax_p.plot(
      x,
      1 / (1 + np.exp(-(c["intercept"] + c["slope"] * x))),
      color=f"C{k}",
      ls="-" if k < len(r["candidates"]) - len(FITTED) else "--",
      label=f"{c['name']}: σ({c['intercept']:.3g} + {c['slope']:.3g}x)",
    )
  ax_p.set(
    xlabel="x", ylabel="q(y = 1 | x)", title="candidates and labels drawn from the true model"
  )
  names = [c["name"] for c in r["candidates"]]
  pos = np.arange(len(names))
  ce = np.array([c["held_out_cross_entropy"] for c in r["candidates"]])
  se = np.array([c["standard_error"] for c in r["candidates"]])
  h = np.array([c["mean_entropy"] for c in r["candidates"]])
  ax_b.bar(pos - 0.2, ce, 0.4, yerr=2 * se, label="held-out cross-entropy (±2 s.e.)")
  ax_b.bar(pos + 0.2, h, 0.4, label="model's own mean entropy")
  ax_b.set(
    yscale="log",
    xticks=pos,
    ylabel="nats",
    title=f"cross-entropy vs entropy (Kendall τ = {r['kendall_tau']:.2f})",
  )
  ax_b.set_xticklabels(names, rotation=20, fontsize=7)
  for k, name in enumerate(names):
    ax_s.scatter(h[k], ce[k], color=f"C{k}", label=name)
  ax_s.axhline(r["population_entropy_true"], color="k", ls=":", label="E[H(p_true)] (irreducible)")
  ax_s.set(
    xlabel="model's own mean entropy (nats)",
    ylabel="held-out cross-entropy (nats)",
    yscale="log",
    title="low entropy ≠ good model",
  )
  for ax, loc in ((ax_p, "center right"), (ax_b, "upper left"), (ax_s, "upper right")):
    ax.legend(fontsize=7, loc=loc)  # a fixed place: "best" scans every plotted point
    ax.grid(alpha=0.3)
  workdir.save_figure(
    fig,
    "model_comparison.png",
    caption=(
      "Candidate models and sampled labels; held-out cross-entropy vs each model's own "
      "entropy: the true model has the lowest cross-entropy, not the lowest entropy."
    ),
  )


if __name__ == "__main__":
  _common.main(run, validate)
