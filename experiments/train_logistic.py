r"""E5: logistic regression trained by gradient descent (seed §4.1–4.2, §5), and the §4.1 loss.

From the repository root::

    python -m experiments.train_logistic --config=configs/train_logistic.py --workdir=runs/e5

Full-batch SGD with heavy-ball momentum (``optax.sgd`` through :mod:`xent_jax.training`,
each run one compiled ``lax.scan``, from w = 0, b = 0) on

* synthetic data from a known logistic model (non-separable, N ≫ D): the unpenalised mean
  cross-entropy, compared with its float64 L-BFGS optimum (:mod:`xent_jax.optimum`) and
  with the true model;
* scikit-learn's breast_cancer (standardised, linearly separable): the L2-penalised
  objective mean CE + (λ/2)‖w‖², compared with its optimum; and the same data with λ = 0,
  where no minimiser exists: ‖w‖ grows without bound while the loss creeps to 0;
* both datasets with the seed's §4.1 loss as written, L₄.₁ = -(1/n) Σ y log σ(z).

Relative gaps are (J(θ_T) - J*) / J* with J evaluated in float64 at the trained (possibly
float32) parameters; accuracies are recomputed in numpy float64 from the recorded
parameters.

What the §4.1 loss converges to. L₄.₁ = (1/n) Σ_{y_i = 1} log(1 + e^{-z_i}) involves the
positive examples only: the negatives' features and labels never enter it, so nothing
pushes their σ towards 0. Every direction u = (w, b) with u·(x_i, 1) > 0 on all positives
(e.g. the pure bias u = (0, 1)) lowers it towards its infimum 0, which is not attained:
gradient descent diverges, ‖θ_t‖ → ∞, b → +∞. For a loss with an exponential tail on
such "separable" data, θ_t / ‖θ_t‖ tends to the hard-margin direction (Soudry et al.,
JMLR 2018)::

    u* = argmin ‖u‖²  subject to  u·(x_i, 1) ≥ 1 for every positive i,

whose dual is the minimum-norm point p = (c, 1) of the convex hull of {(x_i, 1) : y_i = 1}
(u* = p / ‖p‖², computed here by non-negative least squares). In the limit an example is
predicted positive iff c·x + 1 > 0. When the origin (the training mean of standardised or
centred features) lies inside the hull of the positive examples, c = 0: every example is
predicted positive and the accuracy collapses to the positive rate. When it does not
(breast_cancer: the benign cases sit on one side of the mean), the limit is a one-class
boundary around the positives, and any accuracy on the negatives is a by-product of where
they happen to lie. The run measures the predicted-positive fraction and the accuracy
along training, the cosine between θ_t and u*, and the limit's own predictions. The
direction converges only like 1/log t, so the finite runs are still on the way.
"""

import functools

import numpy as np
from scipy import optimize

from experiments import _common, _training
from xent_jax import data, models, optimum, training


def validate(config) -> None:
  """The bounds declared in ``configs/train_logistic.py`` and the constraints between keys."""
  _common.check_declared(config)
  for key in (
    "synthetic.num_steps",
    "breast_cancer.num_steps",
    "breast_cancer.unpenalised_num_steps",
    "seed_loss_num_steps",
  ):
    group, _, name = key.rpartition(".")
    num_steps = (config[group] if group else config)[name]
    if num_steps % config.num_checkpoints:
      raise _common.ConfigError(
        f"config.{key} = {num_steps} must be a multiple of "
        f"config.num_checkpoints = {config.num_checkpoints}"
      )
  s = config.synthetic
  _common.check_memory(  # the synthetic data; the per-step losses of the five runs
    {
      "config.synthetic.num_train/num_test × (num_features + 1)": (s.num_train + s.num_test)
      * (s.num_features + 1),
      "the num_steps of the five runs": 2 * s.num_steps
      + config.breast_cancer.num_steps
      + config.breast_cancer.unpenalised_num_steps
      + 2 * config.seed_loss_num_steps,
    }
  )


def _logits(params, x_NxD) -> np.ndarray:
  """z = x·w + b in numpy float64 (independent of the JAX computation)."""
  x_NxD = np.asarray(x_NxD, np.float64)
  return x_NxD @ np.asarray(params["w"], np.float64) + np.float64(params["b"])


def _classify(params, batch) -> dict:
  """Accuracy and the fraction predicted positive (σ > 1/2) of ``params`` on ``batch``."""
  positive_N = _logits(params, batch.x) > 0
  return {
    "accuracy": float(np.mean(positive_N == (np.asarray(batch.y) == 1))),
    "predicted_positive": float(np.mean(positive_N)),
  }


def _along(checkpoints, batch) -> dict:
  """Accuracy and predicted-positive fraction at every checkpoint."""
  rows = [_classify(p, batch) for p in checkpoints]
  return {k: [r[k] for r in rows] for k in ("accuracy", "predicted_positive")}


def _first_step_within(loss_T, value: float, rtol: float):
  """The first step whose recorded loss is within ``rtol`` (relative) of ``value``."""
  hit = np.flatnonzero((loss_T - value) <= rtol * abs(value))
  return int(hit[0]) if hit.size else None


def _cross_entropy_run(
  dataset, *, l2, optimizer, num_steps, config, workdir=None, name="training"
) -> tuple[dict, dict]:
  """Trains mean CE + (l2/2)‖w‖² and compares it with the float64 reference optimum."""
  reference = optimum.logistic_regression_optimum(*dataset.train, l2=l2)
  loss_fn = functools.partial(models.logistic_regression_loss, l2=l2)
  checkpoints, loss_T = _training.train_with_checkpoints(
    models.init_logistic_regression(dataset.train.x.shape[1]),
    dataset.train,
    loss_fn=loss_fn,
    optimizer=optimizer,
    num_steps=num_steps,
    num_checkpoints=config.num_checkpoints,
    workdir=workdir,
    name=name,
  )
  objective = [optimum.logistic_regression_objective(p, *dataset.train, l2=l2) for p in checkpoints]
  final = checkpoints[-1]
  return {
    "l2": l2,
    "num_steps": num_steps,
    "reference_objective": reference.value,
    "reference_grad_max_abs": reference.grad_max_abs,
    "final_objective": objective[-1],
    "final_relative_gap": (objective[-1] - reference.value) / reference.value,
    "steps_to_rtol": _first_step_within(loss_T, reference.value, config.optimum_rtol),
    "max_abs_param_diff_vs_optimum": max(
      float(np.max(np.abs(np.asarray(final[k], np.float64) - reference.params[k])))
      for k in ("w", "b")
    ),
    "train": _classify(final, dataset.train),
    "test": _classify(final, dataset.test),
    "final_params": final,
    "checkpoints": {
      "step": _training.checkpoint_steps(num_steps, config.num_checkpoints),
      "relative_gap": [(v - reference.value) / reference.value for v in objective],
      "train_accuracy": _along(checkpoints, dataset.train)["accuracy"],
      "test_accuracy": _along(checkpoints, dataset.test)["accuracy"],
    },
  }, {"loss": loss_T, "reference": reference.value}


def _unpenalised_run(
  dataset, *, optimizer, num_steps, config, workdir=None, name="training"
) -> tuple[dict, dict]:
  """λ = 0 on separable data: the loss and ‖w‖ along training (no minimiser exists)."""
  checkpoints, loss_T = _training.train_with_checkpoints(
    models.init_logistic_regression(dataset.train.x.shape[1]),
    dataset.train,
    loss_fn=models.logistic_regression_loss,
    optimizer=optimizer,
    num_steps=num_steps,
    num_checkpoints=config.num_checkpoints,
    workdir=workdir,
    name=name,
  )
  steps = _training.checkpoint_steps(num_steps, config.num_checkpoints)
  norm_C = np.array([np.linalg.norm(np.asarray(p["w"], np.float64)) for p in checkpoints])
  loss_C = [optimum.logistic_regression_objective(p, *dataset.train) for p in checkpoints]
  half = len(steps) // 2  # growth over the second half (steps T/2 → T)
  margin_C = [
    float(np.min(np.where(np.asarray(dataset.train.y) == 1, 1, -1) * _logits(p, dataset.train.x)))
    for p in checkpoints
  ]
  return {
    "num_steps": num_steps,
    "final_loss": loss_C[-1],
    "final_w_norm": norm_C[-1],
    "w_norm_growth_second_half": norm_C[-1] - norm_C[half],
    "w_norm_per_log_step_second_half": (norm_C[-1] - norm_C[half])
    / np.log(steps[-1] / steps[half]),
    "loss_ratio_second_half": loss_C[-1] / loss_C[half],
    "train": _classify(checkpoints[-1], dataset.train),
    "final_params": checkpoints[-1],
    "checkpoints": {"step": steps, "w_norm": norm_C, "loss": loss_C, "min_signed_margin": margin_C},
  }, {"loss": loss_T}


def seed_loss_limit(x_NxD, y_N) -> dict:
  """Where gradient descent on the §4.1 loss heads (module docstring), in numpy float64.

  The minimum-norm point p = (c, 1) of the convex hull of {(x_i, 1) : y_i = 1}, by NNLS on
  min ‖A λ‖ with λ ≥ 0 and Σ λ = 1 (the constraint as a heavily weighted extra row).

  Returns:
    ``{"direction": {"w", "b"}}`` (u* / ‖u*‖), ``c_norm`` (0 iff the origin is in the hull of
    the positives' features) and ``margin_ratio`` (min over positives of u*·(x_i, 1), 1 at
    the exact solution).
  """
  x_pos = np.asarray(x_NxD, np.float64)[np.asarray(y_N) == 1]
  a_DxP = np.concatenate([x_pos, np.ones((len(x_pos), 1))], axis=1).T
  weight = 1e4 * max(1.0, np.abs(a_DxP).max())
  lam_P, _ = optimize.nnls(
    np.vstack([a_DxP, weight * np.ones((1, a_DxP.shape[1]))]),
    np.concatenate([np.zeros(a_DxP.shape[0]), [weight]]),
    maxiter=50 * a_DxP.shape[1],
  )
  p = a_DxP @ lam_P
  u = p / (p @ p)  # the hard-margin solution
  direction = u / np.linalg.norm(u)
  return {
    "direction": {"w": direction[:-1], "b": direction[-1]},
    "c_norm": float(np.linalg.norm(p[:-1] / p[-1])),
    "margin_ratio": float(np.min(a_DxP.T @ u)),
  }


def _cosine(params, direction) -> float:
  v = np.concatenate([np.ravel(np.asarray(params[k], np.float64)) for k in ("w", "b")])
  u = np.concatenate([np.ravel(direction[k]) for k in ("w", "b")])
  return float(v @ u / max(np.linalg.norm(v), np.finfo(float).tiny))


def _seed_loss_run(
  dataset, *, optimizer, num_steps, config, workdir=None, name="training"
) -> tuple[dict, dict]:
  """Training with the §4.1 loss: predictions, accuracy, ‖θ‖ and the limit direction."""
  checkpoints, loss_T = _training.train_with_checkpoints(
    models.init_logistic_regression(dataset.train.x.shape[1]),
    dataset.train,
    loss_fn=models.seed_section_4_1_loss,
    optimizer=optimizer,
    num_steps=num_steps,
    num_checkpoints=config.num_checkpoints,
    workdir=workdir,
    name=name,
  )
  limit = seed_loss_limit(*dataset.train)
  limit_params = limit["direction"]
  final = checkpoints[-1]
  positive_rate = float(np.mean(np.asarray(dataset.train.y) == 1))
  return {
    "num_steps": num_steps,
    "final_loss": float(loss_T[-1]),
    "final_b": float(final["b"]),
    "final_w_norm": float(np.linalg.norm(np.asarray(final["w"], np.float64))),
    "train_positive_rate": positive_rate,
    "test_positive_rate": float(np.mean(np.asarray(dataset.test.y) == 1)),
    "train": _classify(final, dataset.train),
    "test": _classify(final, dataset.test),
    "final_params": final,
    "min_sigma_on_negatives": float(
      1 / (1 + np.exp(-np.min(_logits(final, dataset.train.x)[np.asarray(dataset.train.y) == 0])))
    ),
    "limit": {
      "direction": limit_params,
      "c_norm": limit["c_norm"],
      "origin_in_hull": limit["c_norm"] < 1e-6,
      "margin_ratio": limit["margin_ratio"],
      "train": _classify(limit_params, dataset.train),
      "test": _classify(limit_params, dataset.test),
      "final_cosine": _cosine(final, limit_params),
    },
    "checkpoints": {
      "step": _training.checkpoint_steps(num_steps, config.num_checkpoints),
      **{f"train_{k}": v for k, v in _along(checkpoints, dataset.train).items()},
      **{f"test_{k}": v for k, v in _along(checkpoints, dataset.test).items()},
      "cosine_to_limit": [_cosine(p, limit_params) for p in checkpoints],
    },
  }, {"loss": loss_T}


# ------------------------------------------------------------------------------------ run


def _datasets(config) -> dict:
  s, bc = config.synthetic, config.breast_cancer
  return {
    "synthetic": data.make_logistic_data(
      s.seed, s.num_train, s.num_test, s.num_features, weight_scale=s.weight_scale, bias=s.bias
    ),
    "breast_cancer": data.load_breast_cancer(test_fraction=bc.test_fraction, seed=bc.split_seed),
  }


def _true_model(dataset) -> dict:
  """The synthetic data's true model on the held-out split: the best one can hope for."""
  test = _classify(dataset.true_params, dataset.test)
  return {
    "test_accuracy": test["accuracy"],
    "test_cross_entropy": optimum.logistic_regression_objective(dataset.true_params, *dataset.test),
  }


def run(config, workdir: _common.Workdir) -> dict:
  """Computes E5's numbers, claims and figure (see the module docstring)."""
  datasets = _datasets(config)
  s, bc = config.synthetic, config.breast_cancer
  optimizers = {
    "synthetic": training.sgd(s.learning_rate, momentum=s.momentum),
    "breast_cancer": training.sgd(bc.learning_rate, momentum=bc.momentum),
  }
  results, curves = {}, {}
  results["synthetic"], curves["synthetic"] = _cross_entropy_run(
    datasets["synthetic"],
    l2=0.0,
    optimizer=optimizers["synthetic"],
    num_steps=s.num_steps,
    config=config,
    workdir=workdir,
    name="synthetic",
  )
  results["synthetic"]["true_model"] = _true_model(datasets["synthetic"])
  results["synthetic"]["test_cross_entropy"] = optimum.logistic_regression_objective(
    optimum.logistic_regression_optimum(*datasets["synthetic"].train).params,
    *datasets["synthetic"].test,
  )
  results["breast_cancer"], curves["breast_cancer"] = _cross_entropy_run(
    datasets["breast_cancer"],
    l2=bc.l2,
    optimizer=optimizers["breast_cancer"],
    num_steps=bc.num_steps,
    config=config,
    workdir=workdir,
    name="breast_cancer",
  )
  results["breast_cancer_unpenalised"], curves["breast_cancer_unpenalised"] = _unpenalised_run(
    datasets["breast_cancer"],
    optimizer=optimizers["breast_cancer"],
    num_steps=bc.unpenalised_num_steps,
    config=config,
    workdir=workdir,
    name="breast_cancer_unpenalised",
  )
  results["seed_loss"] = {}
  for name, dataset in datasets.items():
    results["seed_loss"][name], curves[f"seed_loss_{name}"] = _seed_loss_run(
      dataset,
      optimizer=optimizers[name],
      num_steps=config.seed_loss_num_steps,
      config=config,
      workdir=workdir,
      name=f"seed_loss_{name}",
    )
  results = _common.to_jsonable({**results, "dtype": str(datasets["synthetic"].train.x.dtype)})
  results["claims"] = _claims(results, config)
  results["summary"] = _summary(results)
  for key, value in results["summary"].items():
    workdir.log("%s: %s", key, value)
  _figure(workdir, results, curves)
  return results


def _summary(r: dict) -> dict:
  seed = r["seed_loss"]
  summary = {}
  for name in ("synthetic", "breast_cancer"):
    run = r[name]
    summary[f"{name}: relative gap to the optimum (λ = {run['l2']:g})"] = run["final_relative_gap"]
    summary[f"{name}: first step within the tolerance, of {run['num_steps']} run"] = run[
      "steps_to_rtol"
    ]
    summary[f"{name}: train / held-out accuracy"] = (
      f"{run['train']['accuracy']:.4f} / {run['test']['accuracy']:.4f}"
    )
    summary[f"{name}, §4.1 loss: predicted positive / positive rate / held-out accuracy"] = (
      f"{seed[name]['train']['predicted_positive']:.3f} / "
      f"{seed[name]['train_positive_rate']:.3f} / {seed[name]['test']['accuracy']:.3f}"
    )
  un = r["breast_cancer_unpenalised"]
  summary[f"breast_cancer, λ = 0: ‖w‖ and loss after {un['num_steps']} steps"] = (
    f"{un['final_w_norm']:.4g}, {un['final_loss']:.3g}"
  )
  return summary


def _claims(r: dict, config) -> list[dict]:
  """The verdicts on seed §4.1–4.2 and §5, each decided by the measured values in ``r``."""
  return [
    claim(r, config)
    for claim in (
      _claim_gradient_descent_optimises,
      _claim_loss_trains_the_classifier,
      _claim_cross_entropy_trains_classifiers,
    )
  ]


def _claim_gradient_descent_optimises(r: dict, config) -> dict:
  """Seed §4.2: gradient descent on the cross-entropy converges to the optimal parameters."""
  rtol = config.optimum_rtol
  syn = r["synthetic"]
  bc = r["breast_cancer"]
  un = r["breast_cancer_unpenalised"]
  converged = {
    name: r[name]["final_relative_gap"] <= rtol for name in ("synthetic", "breast_cancer")
  }
  # λ = 0 on separable data: ‖w‖ still grows (by more than 1% over the second half of the
  # run) while the loss keeps falling: no convergence of the parameters.
  diverging = (
    un["w_norm_growth_second_half"] > 0.01 * un["final_w_norm"] and un["loss_ratio_second_half"] < 1
  )
  return _common.claim(
    "4.2-gradient-descent-optimises",
    "4.2",
    "通过梯度下降法更新参数,逐步优化模型: gradient descent on the cross-entropy "
    "converges to the optimal parameters",
    {
      "relative gap, synthetic (λ = 0)": syn["final_relative_gap"],
      "relative gap, breast_cancer (λ > 0)": bc["final_relative_gap"],
      "tolerance": rtol,
      "breast_cancer λ = 0: ‖w‖ at T/2 → T": [
        un["final_w_norm"] - un["w_norm_growth_second_half"],
        un["final_w_norm"],
      ],
      "breast_cancer λ = 0: final loss": un["final_loss"],
    },
    holds=all(converged.values()) and not diverging,
    condition=all(converged.values())
    and (
      "when a minimiser exists (non-separable data, or λ > 0): relative gaps "
      f"{syn['final_relative_gap']:.2g} and {bc['final_relative_gap']:.2g} ≤ {rtol:g}"
    ),
    correction="on linearly separable data (breast_cancer, λ = 0) the cross-entropy has "
    "no minimiser: gradient descent drives the loss towards 0 "
    f"({un['final_loss']:.3g} after {un['num_steps']} steps) while ‖w‖ grows without "
    f"bound (+{un['w_norm_per_log_step_second_half']:.3g} per e-fold of steps at the "
    "end); penalise (λ > 0) or stop early to get a finite model",
  )


def _claim_loss_trains_the_classifier(r: dict, config) -> dict:
  """The verdict on seed §4.1, claim ``4.1-loss-trains-the-classifier``."""
  seed = r["seed_loss"]
  collapsed = [name for name in seed if seed[name]["limit"]["origin_in_hull"]]
  return _common.claim(
    "4.1-loss-trains-the-classifier",
    "4.1",
    "L = -(1/n) Σ y_i log σ(x_i) is the cross-entropy loss; minimising it optimises the classifier",
    {
      f"{name}: {k}": v
      for name in seed
      for k, v in (
        ("final loss", seed[name]["final_loss"]),
        ("predicted positive (train)", seed[name]["train"]["predicted_positive"]),
        ("positive rate (train)", seed[name]["train_positive_rate"]),
        ("held-out accuracy", seed[name]["test"]["accuracy"]),
        ("held-out accuracy, cross-entropy", r[name]["test"]["accuracy"]),
        ("limit: predicted positive (train)", seed[name]["limit"]["train"]["predicted_positive"]),
      )
    },
    holds=all(
      seed[name]["test"]["accuracy"] >= r[name]["test"]["accuracy"] - 0.02
      and seed[name]["limit"]["train"]["predicted_positive"] < 0.99
      for name in seed
    ),
    correction="it omits -(1 - y_i) log(1 - σ_i): only positive examples enter, its "
    "infimum 0 is reached by predicting σ → 1 (b → ∞), and gradient descent heads for "
    "the hard-margin direction that separates the positives from the origin; "
    + "; ".join(
      f"{name}: {seed[name]['train']['predicted_positive']:.1%} predicted "
      f"positive after {seed[name]['num_steps']} steps "
      f"({seed[name]['limit']['train']['predicted_positive']:.1%} in the "
      f"limit), held-out accuracy {seed[name]['test']['accuracy']:.3f} vs "
      f"{r[name]['test']['accuracy']:.3f} with the cross-entropy"
      for name in seed
    )
    + (
      f" — on {', '.join(collapsed)} the origin lies in the positives' hull, so "
      "every prediction → 1 and accuracy → the positive rate"
      if collapsed
      else ""
    ),
  )


def _claim_cross_entropy_trains_classifiers(r: dict, config) -> dict:
  """The verdict on seed §5, claim ``5-cross-entropy-trains-classifiers``."""
  syn = r["synthetic"]
  bc = r["breast_cancer"]
  seed = r["seed_loss"]
  majority = {
    name: max(seed[name]["test_positive_rate"], 1 - seed[name]["test_positive_rate"])
    for name in seed
  }
  return _common.claim(
    "5-cross-entropy-trains-classifiers",
    "5",
    "the cross-entropy, minimised by gradient descent, trains a classifier that "
    "measures the gap between predictions and labels",
    {
      "held-out accuracy, synthetic": syn["test"]["accuracy"],
      "true model's held-out accuracy": syn["true_model"]["test_accuracy"],
      "held-out CE fitted / true model": [
        syn["test_cross_entropy"],
        syn["true_model"]["test_cross_entropy"],
      ],
      "held-out accuracy, breast_cancer": bc["test"]["accuracy"],
      "majority-class rate, breast_cancer": majority["breast_cancer"],
    },
    holds=syn["test"]["accuracy"] >= syn["true_model"]["test_accuracy"] - 0.02
    and bc["test"]["accuracy"] >= majority["breast_cancer"] + 0.2,
    correction="the trained classifiers are not clearly better than the baselines",
  )


# --------------------------------------------------------------------------------- figure


def _figure(workdir, r: dict, curves: dict) -> None:
  """Relative gaps, losses without a minimiser, ‖w‖ and margin at λ = 0, accuracy, §4.1 loss.

  Per-step curves are lines; checkpoint values (every num_steps / num_checkpoints steps)
  are points. Step axes are logarithmic (symlog where step 0 is drawn).
  """
  fig, axes = _common.new_figure(2, 3, figsize=(18, 9))
  (ax_g, ax_l, ax_w), (ax_a, ax_s, ax_m) = axes
  _plot_relative_gaps(ax_g, r, curves)
  _plot_losses_without_minimiser(ax_l, curves)
  _plot_unpenalised(ax_w, ax_m, r)
  _plot_accuracy(ax_a, r)
  _plot_seed_loss_limit(ax_s, r)
  for ax in axes.flat:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  workdir.save_figure(
    fig,
    "train_logistic.png",
    caption=(
      "Relative gaps to the optimum, losses that have no minimiser (λ = 0, §4.1 loss), "
      "‖w‖ and the smallest signed logit at λ = 0, accuracy and where the §4.1 loss "
      "heads (checkpoints as points)."
    ),
  )


def _plot_relative_gaps(ax_g, r: dict, curves: dict) -> None:
  """The cross-entropies that have an optimum: relative gap per step and at checkpoints."""
  for name, color in (("synthetic", "C0"), ("breast_cancer", "C1")):
    _training.plot_relative_gap(
      ax_g,
      curves[name]["loss"],
      curves[name]["reference"],
      r["dtype"],
      color=color,
      label=f"{name} (λ = {r[name]['l2']:g})",
    )
    ck = r[name]["checkpoints"]
    ax_g.plot(
      ck["step"][1:],
      ck["relative_gap"][1:],
      color=color,
      ls="none",
      marker="x",
      label=f"{name}: checkpoints, objective in float64",
    )
  ax_g.set(
    xscale="log",
    yscale="log",
    xlabel="step",
    ylabel="(L_t - L*) / L*",
    title="cross-entropy to its optimum L* (a minimiser exists)",
  )
  lowest = min(
    min(g for g in r[n]["checkpoints"]["relative_gap"] if g > 0)
    for n in ("synthetic", "breast_cancer")
  )
  ax_g.set_ylim(bottom=lowest * 1e-5)  # room for the legend below the curves


def _plot_losses_without_minimiser(ax_l, curves: dict) -> None:
  """λ = 0 cross-entropy and the §4.1 loss: L_t → 0, no minimiser."""
  for key, color, label in (
    ("breast_cancer_unpenalised", "C2", "breast_cancer, cross-entropy, λ = 0"),
    ("seed_loss_synthetic", "C3", "synthetic, §4.1 loss"),
    ("seed_loss_breast_cancer", "C4", "breast_cancer, §4.1 loss"),
  ):
    loss_T = curves[key]["loss"]
    ax_l.plot(np.arange(1, len(loss_T) + 1), loss_T, color=color, label=label)
  ax_l.set(
    xscale="log",
    yscale="log",
    xlabel="step",
    ylabel="training loss L_t (nats)",
    title="losses without a minimiser: L_t → 0",
  )


def _plot_unpenalised(ax_w, ax_m, r: dict) -> None:
  """breast_cancer at λ = 0: ‖w‖ and the smallest signed logit at checkpoints."""
  un = r["breast_cancer_unpenalised"]["checkpoints"]
  ax_w.plot(un["step"][1:], un["w_norm"][1:], color="C2", ls="none", marker="o", label="‖w‖, λ = 0")
  ax_w.set(
    xscale="log",
    xlabel="step",
    ylabel="‖w‖",
    title="breast_cancer without penalty: ‖w‖ grows without bound",
  )
  ax_m.plot(
    un["step"][1:],
    un["min_signed_margin"][1:],
    color="C2",
    ls="none",
    marker="o",
    label="λ = 0, training split",
  )
  ax_m.axhline(0, color="gray", lw=0.8)
  ax_m.set(
    xscale="log",
    xlabel="step",
    ylabel="min_i (2y_i - 1)·z_i (> 0: every example on its side)",
    title="breast_cancer without penalty: smallest signed logit",
  )


def _plot_accuracy(ax_a, r: dict) -> None:
  """Held-out and training accuracy at checkpoints, and the §4.1 loss's."""
  marks = {"held-out": "o", "train": "s", "§4.1 loss, held-out": "^"}
  for name, color in (("synthetic", "C0"), ("breast_cancer", "C1")):
    ck, sk = r[name]["checkpoints"], r["seed_loss"][name]["checkpoints"]
    for what, steps, values in (
      ("held-out", ck["step"], ck["test_accuracy"]),
      ("train", ck["step"], ck["train_accuracy"]),
      ("§4.1 loss, held-out", sk["step"], sk["test_accuracy"]),
    ):
      ax_a.plot(
        steps,
        values,
        color=color,
        ls="none",
        marker=marks[what],
        ms=4,
        mfc="none" if what == "train" else color,
        label=f"{name}, {what}",
      )
    ax_a.axhline(r["seed_loss"][name]["test_positive_rate"], color=color, lw=0.6, ls="-.")
  ax_a.set(
    xscale="symlog",
    xlim=(-0.5, None),
    xlabel="step",
    ylabel="accuracy",
    title="accuracy at checkpoints (dash-dot: held-out positive rate)",
  )


def _plot_seed_loss_limit(ax_s, r: dict) -> None:
  """Where the §4.1 loss heads: fraction predicted positive, cosine to the limit."""
  for name, color in (("synthetic", "C0"), ("breast_cancer", "C1")):
    sk, limit = r["seed_loss"][name]["checkpoints"], r["seed_loss"][name]["limit"]
    ax_s.plot(
      sk["step"],
      sk["train_predicted_positive"],
      color=color,
      ls="none",
      marker="o",
      ms=4,
      label=f"{name}: fraction predicted positive",
    )
    ax_s.plot(
      sk["step"],
      sk["cosine_to_limit"],
      color=color,
      ls="none",
      marker="x",
      label=f"{name}: cos(θ_t, limit direction)",
    )
    ax_s.axhline(
      limit["train"]["predicted_positive"],
      color=color,
      ls=":",
      lw=0.8,
      label=f"{name}: limit's fraction predicted positive",
    )
  ax_s.set(
    xscale="symlog",
    xlim=(-0.5, None),
    xlabel="step",
    ylim=(0, 1.02),
    title="§4.1 loss -(1/n) Σ y log σ: where it heads (checkpoints)",
  )


if __name__ == "__main__":
  _common.main(run, validate)
