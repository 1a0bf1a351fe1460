r"""E6: softmax regression on digits, and the entropy of its predictions (seed §2.2–2.3).

From the repository root::

    python -m experiments.softmax_regression --config=configs/softmax_regression.py \
        --workdir=runs/e6

Seed §2.2–2.3: softmax outputs a whole distribution P(C) = {p(c_1), …, p(c_K)} instead of
one label, and its entropy H = -Σ p log p measures how uncertain the prediction is: low
when one class takes almost all the probability, high when several are close.

The run trains softmax regression (full-batch SGD with momentum through
:mod:`xent_jax.training`, from W = 0, b = 0) on scikit-learn's digits, with the L2-penalised
objective mean CE + (λ/2)‖W‖² (the data are linearly separable, SPEC §3), and reports

* the training objective along the run and its relative gap to the float64 L-BFGS optimum
  (:func:`xent_jax.optimum.softmax_regression_optimum`), evaluated in float64;
* train and held-out accuracy and held-out cross-entropy at each checkpoint;
* the entropy of the predicted distributions on the held-out split
  (:func:`xent_jax.entropy_from_logits`) before training (W = 0: every prediction is
  uniform, H = log K, the maximum) and after: mean, histogram, and how it relates to the
  confidence max_k p_k (Spearman rank correlation) and to correctness (mean H of the
  correctly and wrongly classified examples).

Entropy is not a function of the top probability alone when K > 2 (the rest of the
mass can be spread or concentrated), so "more concentrated ⇒ lower entropy" is checked as
a rank correlation, and exactly at the two ends (uniform: log K; one-hot: 0).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from experiments import _common, _training
from xent_jax import data, models, optimum, training
from xent_jax.entropy import entropy_from_logits


def validate(config) -> None:
  """The bounds declared in ``configs/softmax_regression.py`` and the constraints between keys."""
  _common.check_declared(config)
  if config.num_steps % config.num_checkpoints:
    raise _common.ConfigError(
      f"config.num_steps = {config.num_steps} must be a multiple of "
      f"config.num_checkpoints = {config.num_checkpoints}"
    )


@jax.jit
def _predictions(params, x_NxD):
  """Held-out predictions: probabilities and their entropy (nats), by the library."""
  logits_NxK = models.softmax_regression_logits(params, x_NxD)
  return {
    "probs_NxK": models.softmax_regression_probs(params, x_NxD),
    "entropy_N": entropy_from_logits(logits_NxK),
  }


def _accuracy(params, batch) -> float:
  """Accuracy of ``params`` on ``batch``, from numpy float64 logits."""
  logits_NxK = np.asarray(batch.x, np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(
    params["b"], np.float64
  )
  return float(np.mean(np.argmax(logits_NxK, axis=1) == np.asarray(batch.y)))


def _held_out_entropy(params, batch) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities, entropies) of the predictions of ``params`` on ``batch``, float64."""
  out = _predictions(jax.tree.map(jnp.asarray, params), batch.x)
  return np.asarray(out["probs_NxK"], np.float64), np.asarray(out["entropy_N"], np.float64)


def _histogram_edges(num_classes: int, bins: int, *entropies) -> np.ndarray:
  """``bins`` equal bins over [0, log K], the last edge raised to the largest entropy.

  A uniform prediction's entropy, computed in float32, can round above log K (by an ulp):
  with the last edge at log K exactly, the whole "before training" histogram was empty.
  """
  top = max(np.log(num_classes), *(e.max() for e in entropies))
  return np.linspace(0.0, top, bins + 1)


def _entropy_report(probs_NxK, entropy_N, batch, edges) -> dict:
  """Entropy of the predictions on ``batch``: mean, histogram, vs confidence and correctness."""
  correct_N = np.argmax(probs_NxK, axis=1) == np.asarray(batch.y)
  counts, edges = np.histogram(entropy_N, bins=edges)
  spread = np.ptp(entropy_N) > 0 and np.ptp(probs_NxK.max(axis=1)) > 0
  return {
    "mean": entropy_N.mean(),
    "median": np.median(entropy_N),
    "min": entropy_N.min(),
    "max": entropy_N.max(),
    "histogram": {"counts": counts, "edges": edges},
    "mean_correct": entropy_N[correct_N].mean() if correct_N.any() else None,
    "mean_wrong": entropy_N[~correct_N].mean() if (~correct_N).any() else None,
    "num_wrong": int((~correct_N).sum()),
    "spearman_vs_max_probability": (
      float(stats.spearmanr(entropy_N, probs_NxK.max(axis=1)).statistic) if spread else None
    ),
    "max_abs_row_sum_error": np.abs(probs_NxK.sum(axis=1) - 1).max(),
    "probability_range": [probs_NxK.min(), probs_NxK.max()],
  }


def run(config, workdir: _common.Workdir) -> dict:
  """Computes E6's numbers, claims and figure (see the module docstring)."""
  digits = data.load_digits(test_fraction=config.test_fraction, seed=config.split_seed)
  k, d = digits.num_classes, digits.train.x.shape[1]
  reference = optimum.softmax_regression_optimum(*digits.train, k, l2=config.l2)
  checkpoints, loss_T = _training.train_with_checkpoints(
    models.init_softmax_regression(d, k),
    digits.train,
    loss_fn=functools.partial(models.softmax_regression_loss, l2=config.l2),
    optimizer=training.sgd(config.learning_rate, momentum=config.momentum),
    num_steps=config.num_steps,
    num_checkpoints=config.num_checkpoints,
    workdir=workdir,
    name="digits",
  )
  objective = [
    optimum.softmax_regression_objective(p, *digits.train, l2=config.l2) for p in checkpoints
  ]
  (probs_before, entropy_before), (probs_after, entropy_after) = (
    _held_out_entropy(p, digits.test) for p in (checkpoints[0], checkpoints[-1])
  )
  edges = _histogram_edges(k, config.entropy_bins, entropy_before, entropy_after)
  before = _entropy_report(probs_before, entropy_before, digits.test, edges)
  after = _entropy_report(probs_after, entropy_after, digits.test, edges)
  hit = np.flatnonzero(loss_T - reference.value <= config.optimum_rtol * reference.value)
  results = _common.to_jsonable(
    {
      "dtype": str(digits.train.x.dtype),
      "num_classes": k,
      "num_features": d,
      "num_train": digits.train.x.shape[0],
      "num_test": digits.test.x.shape[0],
      "l2": config.l2,
      "num_steps": config.num_steps,
      "reference_objective": reference.value,
      "reference_grad_max_abs": reference.grad_max_abs,
      "final_objective": objective[-1],
      "final_relative_gap": (objective[-1] - reference.value) / reference.value,
      "steps_to_rtol": int(hit[0]) if hit.size else None,
      "train_accuracy": _accuracy(checkpoints[-1], digits.train),
      "test_accuracy": _accuracy(checkpoints[-1], digits.test),
      "reference_test_accuracy": _accuracy(reference.params, digits.test),
      "final_params": checkpoints[-1],
      "majority_class_rate": np.bincount(np.asarray(digits.test.y)).max() / len(digits.test.y),
      "log_num_classes": np.log(k),
      "entropy_before": before,
      "entropy_after": after,
      "checkpoints": {
        "step": _training.checkpoint_steps(config.num_steps, config.num_checkpoints),
        "relative_gap": [(v - reference.value) / reference.value for v in objective],
        "train_accuracy": [_accuracy(p, digits.train) for p in checkpoints],
        "test_accuracy": [_accuracy(p, digits.test) for p in checkpoints],
        "test_cross_entropy": [
          optimum.softmax_regression_objective(p, *digits.test) for p in checkpoints
        ],
        "test_mean_entropy": [_held_out_entropy(p, digits.test)[1].mean() for p in checkpoints],
      },
    }
  )
  results["claims"] = _claims(results, config)
  results["summary"] = {
    f"relative gap to the optimum (λ = {config.l2:g})": results["final_relative_gap"],
    f"first step within {config.optimum_rtol:g} of the optimum, of {config.num_steps} run": (
      results["steps_to_rtol"]
    ),
    "train / held-out accuracy": (
      f"{results['train_accuracy']:.4f} / {results['test_accuracy']:.4f}"
    ),
    "held-out mean entropy before / after (nats)": f"{before['mean']:.4f} / {after['mean']:.4f}",
  }
  for key, value in results["summary"].items():
    workdir.log("%s: %s", key, value)
  _figure(workdir, results, loss_T, reference.value, entropy_before, entropy_after)
  return results


def _claims(r: dict, config) -> list[dict]:
  """The verdicts on seed §2.2–2.3 (and §4.2 for softmax), decided by the values in ``r``."""
  return [
    claim(r, config)
    for claim in (
      _claim_softmax_outputs_a_distribution,
      _claim_concentrated_means_low_entropy,
      _claim_gradient_descent_optimises_softmax,
    )
  ]


def _claim_softmax_outputs_a_distribution(r: dict, config) -> dict:
  """Seed §2.2: softmax outputs a probability distribution over the classes (values in [0, 1])."""
  eps = float(np.finfo(r["dtype"]).eps)
  after = r["entropy_after"]
  return _common.claim(
    "2.2-softmax-outputs-a-distribution",
    "2.2",
    "softmax outputs a probability distribution over the classes (values in [0, 1])",
    {
      "max |Σ_k p_k - 1|": after["max_abs_row_sum_error"],
      "min / max p": after["probability_range"],
    },
    holds=after["max_abs_row_sum_error"] <= 16 * eps
    and 0 <= after["probability_range"][0]
    and after["probability_range"][1] <= 1,
    correction="the predicted rows are not distributions to rounding",
  )


def _claim_concentrated_means_low_entropy(r: dict, config) -> dict:
  """Seed §2.3: the entropy of the predicted distribution reflects the model's uncertainty."""
  eps = float(np.finfo(r["dtype"]).eps)
  before, after = r["entropy_before"], r["entropy_after"]
  log_k = r["log_num_classes"]
  rho = after["spearman_vs_max_probability"]
  wrong_higher = after["mean_wrong"] is not None and after["mean_wrong"] > after["mean_correct"]
  return _common.claim(
    "2.3-concentrated-means-low-entropy",
    "2.3",
    "预测越集中,熵越低;预测越模糊,熵越高: the entropy of the predicted distribution "
    "reflects the model's uncertainty",
    {
      "held-out mean H before training (uniform) / log K": [before["mean"], log_k],
      "held-out mean H after training": after["mean"],
      "Spearman(H, max_k p_k) after training": rho,
      "mean H, correct / wrong predictions": [after["mean_correct"], after["mean_wrong"]],
      "wrong predictions": after["num_wrong"],
    },
    holds=abs(before["mean"] - log_k) <= 8 * eps * log_k
    and after["mean"] < before["mean"]
    and rho is not None
    and rho < -0.8
    and wrong_higher,
    correction="on the held-out digits the entropy did not track the confidence "
    "(see the rank correlation and the correct/wrong means)",
  )


def _claim_gradient_descent_optimises_softmax(r: dict, config) -> dict:
  """Seed §4.2: gradient descent optimises the (multi-class) cross-entropy."""
  return _common.claim(
    "4.2-gradient-descent-optimises-softmax",
    "4.2",
    "gradient descent optimises the (multi-class) cross-entropy",
    {
      "relative gap to the float64 optimum": r["final_relative_gap"],
      "tolerance": config.optimum_rtol,
      "steps run": r["num_steps"],
      "held-out accuracy / majority-class rate": [r["test_accuracy"], r["majority_class_rate"]],
    },
    holds=r["final_relative_gap"] <= config.optimum_rtol,
    correction=f"after {r['num_steps']} steps the objective is still "
    f"{r['final_relative_gap']:.2g} (relative) above the optimum",
  )


def _figure(workdir, r: dict, loss_T, reference: float, entropy_before, entropy_after) -> None:
  """Objective gap, held-out CE/entropy, accuracy, and the entropy histograms."""
  fig, (ax_l, ax_c, ax_a, ax_h) = _common.new_figure(1, 4, figsize=(21, 4.8))
  ck = r["checkpoints"]
  steps = np.asarray(ck["step"])
  checkpoint_style = {"ls": "none", "marker": "o", "ms": 4}
  _training.plot_relative_gap(ax_l, loss_T, reference, r["dtype"], color="C0", label="digits")
  ax_l.plot(
    steps[1:],
    np.asarray(ck["relative_gap"])[1:],
    color="C0",
    **{**checkpoint_style, "marker": "x"},
    label="checkpoints, objective in float64",
  )
  ax_l.set(
    xscale="log",
    yscale="log",
    xlabel="step",
    ylabel="(L_t - L*) / L*",
    title=f"digits, λ = {r['l2']:g}: objective vs the float64 optimum L*",
  )

  ax_c.plot(steps, ck["test_cross_entropy"], color="C1", **checkpoint_style, label="cross-entropy")
  ax_c.plot(
    steps,
    ck["test_mean_entropy"],
    color="C2",
    **{**checkpoint_style, "marker": "s", "mfc": "none"},
    label="mean entropy of the predictions",
  )
  ax_c.axhline(r["log_num_classes"], color="gray", ls=":", lw=0.8, label=f"log {r['num_classes']}")
  ax_c.set(
    yscale="log",
    xlabel="step",
    ylabel="nats",
    title="held-out cross-entropy and entropy (checkpoints)",
  )

  ax_a.plot(steps, ck["train_accuracy"], color="C0", **checkpoint_style, label="train")
  ax_a.plot(
    steps,
    ck["test_accuracy"],
    color="C1",
    **{**checkpoint_style, "marker": "s", "mfc": "none"},
    label="held-out",
  )
  ax_a.axhline(r["majority_class_rate"], color="gray", ls=":", lw=0.8, label="majority class")
  ax_a.set(
    xlabel="step",
    ylabel="accuracy",
    title="accuracy (checkpoints)",
  )

  edges = np.asarray(r["entropy_after"]["histogram"]["edges"])
  ax_h.hist(
    entropy_after,
    bins=edges,
    color="C1",
    alpha=0.7,
    label=f"after training (mean {r['entropy_after']['mean']:.3f} nats)",
  )
  ax_h.hist(
    entropy_before,
    bins=edges,
    color="C0",
    alpha=0.7,
    label=f"before (W = 0, uniform: H = log {r['num_classes']} = {r['log_num_classes']:.3f})",
  )
  for key, ls in (("mean_correct", "--"), ("mean_wrong", "-.")):
    if r["entropy_after"][key] is not None:
      ax_h.axvline(
        r["entropy_after"][key],
        color="k",
        ls=ls,
        lw=0.8,
        label=f"{key.replace('_', ' ')} prediction: {r['entropy_after'][key]:.3f}",
      )
  ax_h.set(
    yscale="log",
    xlabel="entropy of the predicted distribution (nats)",
    ylabel="held-out examples",
    title="§2.3: entropy of the predictions",
  )
  for ax in (ax_l, ax_c, ax_a, ax_h):
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  workdir.save_figure(
    fig,
    "softmax_regression.png",
    caption=(
      "Digits: relative gap to the optimum (per-step float32 line, float64 checkpoints "
      "as crosses), held-out cross-entropy, entropy and accuracy at checkpoints, and "
      "the entropy histogram before and after training."
    ),
  )


if __name__ == "__main__":
  _common.main(run, validate)
