r"""E4: the seed's §4.2 gradient, checked against ``jax.grad`` — and the §4.1 loss it does not fit.

From the repository root::

    python -m experiments.gradient_check --config=configs/gradient_check.py --workdir=runs/e4

Seed §4.2 states σ' = σ(1 - σ) and ∇_β L = -(1/n) Σ (y_i - σ_i) x_i for "the" loss L of §4.1.
The run checks, in float32 and in float64:

1. σ'(z) = σ(z)(1 - σ(z)): ``jax.grad`` of :func:`xent_jax.sigmoid` on a z-grid against the
   identity evaluated as σ(z)·σ(-z) (1 - σ(z) = σ(-z) exactly), both against a numpy float64
   reference e^{-|z|} / (1 + e^{-|z|})². Evaluating the identity literally, 1 - σ(z) cancels
   to 0 once σ(z) rounds to 1 (z ≳ 17 in float32), so that form loses the tail; its error
   is reported too.
2. the closed forms :func:`xent_jax.models.logistic_regression_grad`, -(1/N) Σ (y - σ) x, and
   :func:`xent_jax.models.softmax_regression_grad`, -(1/N) Xᵀ(Y - P), against ``jax.grad`` of
   the mean cross-entropies on a random problem at several parameter scales, as the
   normwise relative error ‖g_autodiff - g_closed‖∞ / ‖g_closed‖∞ (and each against the
   float64 closed form);
3. ``jax.test_util.check_grads`` (float64, reverse mode) on both losses (forward mode is
   reported: the library's losses are ``custom_vjp`` functions, so JAX has none);
4. the seed's §4.1 loss as written, L₄.₁ = -(1/N) Σ y log σ(z): its gradient is not §4.2's.

Derivation of 4. With z = x·w + b and dσ/dz = σ(1 - σ)::

    d/dz [-y log σ(z)]           = -y (1 - σ)
    d/dz [-(1 - y) log(1 - σ(z))] = (1 - y) σ
    sum: the full cross-entropy   = σ - y.

Only the full binary cross-entropy -(1/N) Σ [y log σ + (1 - y) log(1 - σ)] has the §4.2
gradient. The §4.1 loss drops the second term, so by the chain rule (∂z/∂w = x)::

    ∇_w L₄.₁ = -(1/N) Σ y_n (1 - σ_n) x_n = -(1/N) Σ (y_n - σ_n) x_n - (1/N) Σ (1 - y_n) σ_n x_n,

i.e. the §4.2 formula minus the gradient of the missing term, (1/N) Σ (1 - y) σ x, which
vanishes only if σ_n = 0 on every negative example (never at finite parameters). The run
measures the relative discrepancy ‖∇L₄.₁ - g₄.₂‖∞ / ‖g₄.₂‖∞ and the cosine between the two,
and checks that autodiff of L₄.₁ equals the derived -(1/N) Σ y (1 - σ) x to rounding.

Precision. float32 numbers come from explicitly float32 arrays; float64 ones are computed
inside ``jax.enable_x64(True)``; so every number is the same whatever ``JAX_ENABLE_X64``
says. A gradient is a mean of N terms: two correct formulas for it differ by the rounding
of that sum, about ⌈log₂ N⌉·eps of its norm (pairwise summation), so the claims accept
2·⌈log₂ N⌉·eps (normwise). σ' is one product of two correctly rounded σ's: 8·eps.
"""

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from experiments import _common
from xent_jax import models
from xent_jax.softmax import sigmoid

DTYPES = ("float32", "float64")


def validate(config) -> None:
  """The bounds declared in ``configs/gradient_check.py`` and the constraints between keys."""
  _common.check_declared(config)
  _common.check_grid(config, "sigmoid_grid")
  n, d, k = config.num_examples, config.num_features, config.num_classes
  _common.check_memory(  # σ' errors on the grid; X, Y one-hot and the logits, per dtype
    {
      "config.sigmoid_grid.num × 8 curves": 8 * config.sigmoid_grid.num,
      "config.num_examples × (num_features + 2 num_classes) × 2 dtypes": 2 * n * (d + 2 * k),
    }
  )


def _precision(dtype: str):
  """float64 inside ``jax.enable_x64(True)`` (whatever the global mode); float32 as is."""
  return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


# True float32 also on accelerators (SPEC §9): JAX's default precision would be TF32 on a
# GPU, and the errors this experiment reports would measure TF32, not the gradients.
_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _rel_error(a, b) -> float:
  """Normwise relative error ‖a - b‖∞ / ‖b‖∞ of two flat float64 arrays."""
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _flat(params) -> np.ndarray:
  """A ``{"w", "b"}`` pytree as one float64 vector (w first)."""
  return np.concatenate([np.ravel(np.asarray(params[k], np.float64)) for k in ("w", "b")])


# ----------------------------------------------------------------------------- σ' = σ(1 - σ)


@jax.jit
def _sigmoid_derivatives(z_Z):
  """σ'(z) by autodiff, as σ(z)·σ(-z), and as the literal σ(z)·(1 - σ(z))."""
  sigma_Z = sigmoid(z_Z)
  return {
    "autodiff": jax.vmap(jax.grad(sigmoid))(z_Z),
    "identity": sigma_Z * sigmoid(-z_Z),  # 1 - σ(z) = σ(-z), without cancellation
    "literal": sigma_Z * (1 - sigma_Z),
  }


def sigmoid_derivative_reference(z_Z) -> np.ndarray:
  """σ'(z) = e^{-|z|} / (1 + e^{-|z|})² in numpy float64 (even in z; no overflow)."""
  e_Z = np.exp(-np.abs(np.asarray(z_Z, np.float64)))
  return e_Z / (1 + e_Z) ** 2


def _sigmoid_check(z_Z: np.ndarray, dtype: str) -> tuple[dict, dict]:
  """Relative errors of the three σ' evaluations in ``dtype``; and the error curves."""
  with _precision(dtype):
    z_Z = jnp.asarray(z_Z, dtype)
    out = _sigmoid_derivatives(z_Z)
  # At the z actually evaluated: rounding z to float32 alone moves e^{-|z|} by up to
  # |z|·eps/2 (4e-6 at |z| = 80), an error of the input, not of σ'.
  reference_Z = sigmoid_derivative_reference(np.asarray(z_Z, np.float64))
  out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  err = {k: np.abs(v - reference_Z) / reference_Z for k, v in out.items()}
  lost = np.asarray(z_Z, np.float64)[err["literal"] > 0.01]
  return {
    "max_rel_error_autodiff_vs_identity": _rel_error_elementwise(out["autodiff"], out["identity"]),
    "max_rel_error_autodiff_vs_reference": err["autodiff"].max(),
    "max_rel_error_identity_vs_reference": err["identity"].max(),
    "max_rel_error_literal_vs_reference": err["literal"].max(),
    "literal_error_above_1pct_for_z_from": lost.min() if lost.size else None,
  }, err


def _rel_error_elementwise(a, b) -> float:
  return float(np.max(np.abs(a - b) / np.abs(b)))


# -------------------------------------------------------------------- gradients, closed forms


def random_problem(config) -> dict:
  """The random problem (numpy float64): data, labels and unit-scale parameter directions."""
  rng = np.random.default_rng(config.seed)
  n, d, k = config.num_examples, config.num_features, config.num_classes
  return {
    "x_NxD": rng.standard_normal((n, d)),
    "y_binary_N": rng.integers(0, 2, n).astype(np.int32),
    "y_class_N": rng.integers(0, k, n).astype(np.int32),
    "logistic": {"w": rng.standard_normal(d) / np.sqrt(d), "b": rng.standard_normal()},
    "softmax": {"w": rng.standard_normal((d, k)) / np.sqrt(d), "b": rng.standard_normal(k)},
  }


def seed_loss_grad(params, x_NxD, y_N):
  r"""The derived gradient of the seed's §4.1 loss (module docstring).

  .. math::
    \nabla_w L_{4.1} = -\frac{1}{N} \sum_n y_n (1 - \sigma_n) x_n, \qquad
    \nabla_b L_{4.1} = -\frac{1}{N} \sum_n y_n (1 - \sigma_n)
  """
  z_N = models.logistic_regression_logits(params, x_NxD)
  weight_N = y_N * sigmoid(-z_N)  # y (1 - σ(z)), with 1 - σ(z) = σ(-z) (no cancellation)
  return {"w": -_matmul(weight_N, x_NxD) / x_NxD.shape[0], "b": -jnp.mean(weight_N)}


def missing_term_grad(params, x_NxD, y_N):
  r"""Gradient of the term §4.1 omits, -(1/N) Σ (1 - y) log(1 - σ): (1/N) Σ (1 - y) σ x."""
  weight_N = (1 - y_N) * models.logistic_regression_probs(params, x_NxD)
  return {"w": _matmul(weight_N, x_NxD) / x_NxD.shape[0], "b": jnp.mean(weight_N)}


def plain_losses():
  """The three losses written with ``jax.nn`` only: JAX's own derivative rules, no custom ones.

  The library's cross-entropies carry hand-written (``custom_vjp``) gradients, so
  ``jax.grad`` of them is partly the closed form again; these give an independent autodiff.
  """

  def bce(params, x_NxD, y_N):
    z_N = _matmul(x_NxD, params["w"]) + params["b"]
    return -jnp.mean(y_N * jax.nn.log_sigmoid(z_N) + (1 - y_N) * jax.nn.log_sigmoid(-z_N))

  def seed_4_1(params, x_NxD, y_N):
    return -jnp.mean(y_N * jax.nn.log_sigmoid(_matmul(x_NxD, params["w"]) + params["b"]))

  def softmax(params, x_NxD, y_N):
    log_p_NxK = jax.nn.log_softmax(_matmul(x_NxD, params["w"]) + params["b"][None, :], axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p_NxK, y_N[:, None], axis=-1))

  return {"logistic": bce, "seed_4_1": seed_4_1, "softmax": softmax}


@jax.jit
def _logistic_gradients(params, x_NxD, y_N):
  """Gradients of the mean BCE and of the §4.1 loss: library/plain autodiff, formulas."""
  y_N = y_N.astype(x_NxD.dtype)
  plain = plain_losses()
  return {
    "library_autodiff": jax.grad(models.logistic_regression_loss)(params, x_NxD, y_N),
    "plain_autodiff": jax.grad(plain["logistic"])(params, x_NxD, y_N),
    "closed_form": models.logistic_regression_grad(params, x_NxD, y_N),
    "seed_4_1_library_autodiff": jax.grad(models.seed_section_4_1_loss)(params, x_NxD, y_N),
    "seed_4_1_plain_autodiff": jax.grad(plain["seed_4_1"])(params, x_NxD, y_N),
    "seed_4_1_derived": seed_loss_grad(params, x_NxD, y_N),
    "missing_term": missing_term_grad(params, x_NxD, y_N),
  }


@jax.jit
def _softmax_gradients(params, x_NxD, y_N):
  """Gradients of the mean softmax cross-entropy: library/plain autodiff, closed form."""
  return {
    "library_autodiff": jax.grad(models.softmax_regression_loss)(params, x_NxD, y_N),
    "plain_autodiff": jax.grad(plain_losses()["softmax"])(params, x_NxD, y_N),
    "closed_form": models.softmax_regression_grad(params, x_NxD, y_N),
  }


def _gradients(problem: dict, model: str, scale: float, dtype: str) -> dict:
  """The gradients of ``model`` at ``scale`` × its parameter direction, as float64 vectors."""
  fn, y = (
    (_logistic_gradients, "y_binary_N")
    if model == "logistic"
    else (_softmax_gradients, "y_class_N")
  )
  with _precision(dtype):
    params = {k: jnp.asarray(scale * v, dtype) for k, v in problem[model].items()}
    grads = fn(params, jnp.asarray(problem["x_NxD"], dtype), jnp.asarray(problem[y]))
  return {k: _flat(g) for k, g in grads.items()}


def _all_gradients(problem: dict, scales) -> dict:
  """``{model: {dtype: [gradients at each scale]}}``."""
  return {
    model: {
      dtype: [_gradients(problem, model, scale, dtype) for scale in scales] for dtype in DTYPES
    }
    for model in ("logistic", "softmax")
  }


def _compare(grads: dict, scales) -> dict:
  """Per dtype and scale: both autodiffs vs the closed form, and all vs float64."""
  rows = {dtype: [] for dtype in DTYPES}
  for i, scale in enumerate(scales):
    reference = grads["float64"][i]["closed_form"]
    for dtype in DTYPES:
      g = grads[dtype][i]
      cf = g["closed_form"]
      rows[dtype].append(
        {
          "scale": scale,
          **{
            f"rel_error_{kind}_vs_closed_form": _rel_error(g[kind], cf)
            for kind in ("library_autodiff", "plain_autodiff")
          },
          "max_componentwise_rel_error_plain_vs_closed_form": _rel_error_elementwise(
            g["plain_autodiff"], cf
          ),
          **{
            f"rel_error_{kind}_vs_float64": _rel_error(g[kind], reference)
            for kind in ("library_autodiff", "plain_autodiff", "closed_form")
          },
        }
      )
  return {
    dtype: {
      "by_scale": rows[dtype],
      "max_rel_error_autodiff_vs_closed_form": max(
        max(
          r["rel_error_library_autodiff_vs_closed_form"],
          r["rel_error_plain_autodiff_vs_closed_form"],
        )
        for r in rows[dtype]
      ),
    }
    for dtype in DTYPES
  }


def _seed_loss_rows(grads: dict, scales) -> dict:
  """The §4.1 loss: its (plain) autodiff gradient vs the §4.2 formula and the derived one."""
  rows = {dtype: [] for dtype in DTYPES}
  for i, scale in enumerate(scales):
    for dtype in DTYPES:
      g = grads[dtype][i]
      seed, formula = g["seed_4_1_plain_autodiff"], g["closed_form"]
      rows[dtype].append(
        {
          "scale": scale,
          "rel_discrepancy_vs_4_2_formula": _rel_error(seed, formula),
          "cosine_vs_4_2_formula": float(
            seed @ formula / np.linalg.norm(seed) / np.linalg.norm(formula)
          ),
          "rel_error_vs_derived": _rel_error(seed, g["seed_4_1_derived"]),
          "rel_error_library_autodiff_vs_derived": _rel_error(
            g["seed_4_1_library_autodiff"], g["seed_4_1_derived"]
          ),
          "rel_error_difference_vs_missing_term": _rel_error(formula - seed, g["missing_term"]),
        }
      )
  return {
    dtype: {
      "by_scale": rows[dtype],
      "min_rel_discrepancy": min(r["rel_discrepancy_vs_4_2_formula"] for r in rows[dtype]),
      "max_rel_error_vs_derived": max(r["rel_error_vs_derived"] for r in rows[dtype]),
      "max_rel_error_library_autodiff_vs_derived": max(
        r["rel_error_library_autodiff_vs_derived"] for r in rows[dtype]
      ),
    }
    for dtype in DTYPES
  }


def _check_grads(problem: dict, scales, order: int) -> dict:
  """``jax.test_util.check_grads`` (float64, reverse mode) of both library losses per scale.

  Forward mode is tried once per loss and reported: the library's cross-entropies are
  ``jax.custom_vjp`` functions (for their tail-accurate gradients), which JAX cannot
  differentiate in forward mode (no ``jax.jvp``/``jax.jacfwd``/``jax.hessian``).
  """
  losses = {
    "logistic": (models.logistic_regression_loss, "y_binary_N"),
    "softmax": (models.softmax_regression_loss, "y_class_N"),
  }
  failures, forward = [], {}
  with jax.enable_x64(True):
    x_NxD = jnp.asarray(problem["x_NxD"], jnp.float64)
    for name, (loss_fn, y) in losses.items():
      # jit: check_grads differentiates fn many times; compiled once, each call is cheap.
      fn = jax.jit(functools.partial(_bind_data, loss_fn, x_NxD=x_NxD, y_N=jnp.asarray(problem[y])))
      for scale in scales:
        params = {k: jnp.asarray(scale * v, jnp.float64) for k, v in problem[name].items()}
        try:
          check_grads(fn, (params,), order=order, modes=("rev",))
        except AssertionError as error:
          lines = [line.strip() for line in str(error).splitlines() if line.strip()]
          failures.append(f"{name} at scale {scale:g}: " + " ".join(lines[:2]))
      forward[name] = _forward_mode(fn, params)
  return {
    "scales": list(scales),
    "modes": ["rev"],
    "order": order,
    "passed": {name: not any(f.startswith(name + " ") for f in failures) for name in losses},
    "failures": failures,
    "forward_mode": forward,
  }


def _bind_data(loss_fn, params, *, x_NxD, y_N):
  return loss_fn(params, x_NxD, y_N)


def _forward_mode(fn, params) -> str:
  """ "supported", or the first line of the error ``jax.jvp`` raises."""
  try:
    jax.jvp(fn, (params,), (params,))
  except TypeError as error:
    return "unsupported: " + str(error).splitlines()[0]
  return "supported"


# ------------------------------------------------------------------------------------ run


def run(config, workdir: _common.Workdir) -> dict:
  """Computes E4's numbers, claims and figure (see the module docstring)."""
  z_Z = np.linspace(config.sigmoid_grid.start, config.sigmoid_grid.stop, config.sigmoid_grid.num)
  sigmoid_checks = {dtype: _sigmoid_check(z_Z, dtype) for dtype in DTYPES}
  problem = random_problem(config)
  scales = tuple(config.param_scales)
  grads = _all_gradients(problem, scales)
  results = _common.to_jsonable(
    {
      "sigmoid_derivative": {dtype: s for dtype, (s, _) in sigmoid_checks.items()},
      "gradients": {model: _compare(grads[model], scales) for model in grads},
      "seed_4_1_loss": _seed_loss_rows(grads["logistic"], scales),
      "check_grads": _check_grads(problem, scales, config.check_grads_order),
      "tolerance": {dtype: _tolerances(dtype, config.num_examples) for dtype in DTYPES},
    }
  )
  results["claims"] = _claims(results)
  results["summary"] = _summary(results)
  for key, value in results["summary"].items():
    workdir.log("%s: %s", key, value)
  for failure in results["check_grads"]["failures"]:
    workdir.log("check_grads failed: %s", failure)
  errors = {d: err for d, (_, err) in sigmoid_checks.items()}
  _figure(workdir, z_Z, errors, grads["logistic"]["float64"], results)
  return results


def _tolerances(dtype: str, num_examples: int) -> dict:
  eps = float(np.finfo(dtype).eps)
  return {
    "eps": eps,
    "sigmoid_derivative": 8 * eps,
    "gradient": 2 * math.ceil(math.log2(num_examples)) * eps,
  }


def _summary(r: dict) -> dict:
  g, seed = r["gradients"], r["seed_4_1_loss"]
  summary = {
    f"max rel. error autodiff vs closed form, {model}, {dtype}": g[model][dtype][
      "max_rel_error_autodiff_vs_closed_form"
    ]
    for model in g
    for dtype in DTYPES
  }
  summary.update(
    {
      f"max rel. error of the float32 gradients vs float64, {model}": max(
        r[f"rel_error_{k}_vs_float64"]
        for r in g[model]["float32"]["by_scale"]
        for k in ("library_autodiff", "plain_autodiff", "closed_form")
      )
      for model in g
    }
  )
  summary.update(
    {
      f"§4.1 loss: rel. discrepancy of its gradient vs §4.2, scale {row['scale']:g}": row[
        "rel_discrepancy_vs_4_2_formula"
      ]
      for row in seed["float64"]["by_scale"]
    }
  )
  return summary


def _claims(r: dict) -> list[dict]:
  """The verdicts on seed §4.1–4.2, each decided by the measured values in ``r``."""
  return [
    claim(r)
    for claim in (
      _claim_sigmoid_derivative,
      _claim_gradient_binary_cross_entropy,
      _claim_gradient_softmax_cross_entropy,
      _claim_gradient_of_the_stated_loss,
    )
  ]


def _claim_sigmoid_derivative(r: dict) -> dict:
  """Seed §4.2: σ'(x) = σ(x)(1 - σ(x))."""
  tol = r["tolerance"]
  sd = r["sigmoid_derivative"]
  return _common.claim(
    "4.2-sigmoid-derivative",
    "4.2",
    "σ'(x) = σ(x)(1 - σ(x))",
    {
      **{
        f"max rel. error jax.grad(σ) vs σ(z)σ(-z), {d}": sd[d]["max_rel_error_autodiff_vs_identity"]
        for d in DTYPES
      },
      **{
        f"max rel. error jax.grad(σ) vs float64 reference, {d}": sd[d][
          "max_rel_error_autodiff_vs_reference"
        ]
        for d in DTYPES
      },
      "literal σ(1 - σ) in float32: max rel. error": sd["float32"][
        "max_rel_error_literal_vs_reference"
      ],
      "literal σ(1 - σ) in float32: error > 1% for z ≥": sd["float32"][
        "literal_error_above_1pct_for_z_from"
      ],
    },
    holds=all(
      max(sd[d]["max_rel_error_autodiff_vs_identity"], sd[d]["max_rel_error_autodiff_vs_reference"])
      <= tol[d]["sigmoid_derivative"]
      for d in DTYPES
    ),
    correction="jax.grad(σ) differs from σ(z)σ(-z) by more than rounding",
  )


def _gradient_claim(r: dict, model: str, claim_id: str, statement: str) -> dict:
  """§4.2: autodiff of ``model``'s loss equals its closed-form gradient in every dtype."""
  tol, g, cg = r["tolerance"], r["gradients"][model], r["check_grads"]
  return _common.claim(
    claim_id,
    "4.2",
    statement,
    {
      **{
        f"max rel. error autodiff (library and plain jax.nn) vs closed form, {d}": g[d][
          "max_rel_error_autodiff_vs_closed_form"
        ]
        for d in DTYPES
      },
      **{f"tolerance {d}": tol[d]["gradient"] for d in DTYPES},
      f"check_grads (float64, rev, order {cg['order']}) passed": cg["passed"][model],
    },
    holds=all(g[d]["max_rel_error_autodiff_vs_closed_form"] <= tol[d]["gradient"] for d in DTYPES)
    and cg["passed"][model],
    correction="autodiff and the closed form disagree beyond rounding",
  )


def _claim_gradient_binary_cross_entropy(r: dict) -> dict:
  return _gradient_claim(
    r,
    "logistic",
    "4.2-gradient-binary-cross-entropy",
    "∇_β L = -(1/n) Σ (y_i - σ_i) x_i, L the (full) mean binary cross-entropy",
  )


def _claim_gradient_softmax_cross_entropy(r: dict) -> dict:
  return _gradient_claim(
    r,
    "softmax",
    "4.2-gradient-softmax-cross-entropy",
    "its multi-class form (§2.2 softmax): ∇_W L = -(1/n) Xᵀ(Y - P)",
  )


def _claim_gradient_of_the_stated_loss(r: dict) -> dict:
  """The verdict on seed §4.1, 4.2, claim ``4.1-4.2-gradient-of-the-stated-loss``."""
  tol = r["tolerance"]
  seed = r["seed_4_1_loss"]

  discrepancy = {
    f"{row['scale']:g}": row["rel_discrepancy_vs_4_2_formula"]
    for row in seed["float64"]["by_scale"]
  }
  derived = max(seed[d]["max_rel_error_vs_derived"] / tol[d]["gradient"] for d in DTYPES)
  return _common.claim(
    "4.1-4.2-gradient-of-the-stated-loss",
    "4.1, 4.2",
    "the §4.2 gradient -(1/n) Σ (y_i - σ_i) x_i is the gradient of the §4.1 loss "
    "L = -(1/n) Σ y_i log σ(x_i)",
    {
      "rel. discrepancy ‖∇L₄.₁ - g₄.₂‖∞/‖g₄.₂‖∞ (float64) by parameter scale": discrepancy,
      "max rel. error autodiff ∇L₄.₁ vs -(1/n) Σ y(1 - σ) x, in tolerances": derived,
    },
    holds=min(seed[d]["min_rel_discrepancy"] for d in DTYPES)
    <= max(tol[d]["gradient"] for d in DTYPES),
    correction="the §4.1 loss has gradient -(1/n) Σ y_i (1 - σ_i) x_i (autodiff agrees to "
    f"{derived:.2g}× the rounding tolerance); it differs from the §4.2 formula by "
    "(1/n) Σ (1 - y_i) σ_i x_i, the gradient of the omitted -(1/n) Σ (1 - y_i) "
    "log(1 - σ_i), by a relative "
    + ", ".join(f"{v:.3g} (scale {k})" for k, v in discrepancy.items())
    + ". The §4.2 gradient belongs to the full cross-entropy "
    "-(1/n) Σ [y_i log σ_i + (1 - y_i) log(1 - σ_i)]",
  )


# --------------------------------------------------------------------------------- figure


def _figure(workdir, z_Z, errors, logistic_f64, results) -> None:
  """σ' errors along z; gradient errors by model/scale; §4.1 vs §4.2 gradient components."""
  fig, (ax_s, ax_g, ax_c) = _common.new_figure(1, 3, figsize=(17, 4.8))
  floor = 1e-18  # exact agreement (0) is drawn at this floor of the log axis
  curves = (
    ("float32", "autodiff", "jax.grad(σ), float32", "C0", "o"),
    ("float32", "identity", "σ(z)·σ(-z), float32", "C1", "s"),
    ("float32", "literal", "σ(z)·(1 - σ(z)), float32", "C3", "^"),
    ("float64", "autodiff", "jax.grad(σ), float64", "C2", "o"),
  )
  # Rounding errors jump by decades between neighbouring z: drawn as points, a line through
  # them would fill the band between its extremes.
  for dtype, key, label, color, marker in curves:
    ax_s.plot(
      z_Z,
      np.maximum(errors[dtype][key], floor),
      color=color,
      ls="none",
      marker=marker,
      ms=1.5,
      mew=0,
      label=label,
    )
  for dtype, color in (("float32", "C0"), ("float64", "C2")):
    ax_s.axhline(
      results["tolerance"][dtype]["eps"], color=color, ls=":", lw=0.8, label=f"eps {dtype}"
    )
  ax_s.set(
    yscale="log",
    xlabel="z",
    ylabel=f"relative error vs float64 σ'(z) (0 drawn at {floor:g})",
    title="σ'(z) = σ(z)(1 - σ(z)): exact, but 1 - σ cancels",
  )

  labels, width = [], 0.38
  for m, model in enumerate(("logistic", "softmax")):
    for dtype, offset in (("float32", -width / 2), ("float64", width / 2)):
      rows = results["gradients"][model][dtype]["by_scale"]
      xs = np.arange(len(rows)) + m * (len(rows) + 1) + offset
      ax_g.bar(
        xs,
        [max(r["rel_error_plain_autodiff_vs_closed_form"], floor) for r in rows],
        width,
        color="C0" if dtype == "float32" else "C2",
        label=dtype if m == 0 else None,
      )
    labels += [f"{model}\nscale {r['scale']:g}" for r in rows] + [""]
  for dtype, color in (("float32", "C0"), ("float64", "C2")):
    ax_g.axhline(
      results["tolerance"][dtype]["gradient"],
      color=color,
      ls=":",
      lw=0.8,
      label=f"tolerance {dtype}",
    )
  ax_g.set_xticks(np.arange(len(labels)), labels, fontsize=7)
  ax_g.set(
    yscale="log",
    ylim=(floor / 2, 1),
    ylabel="‖g_autodiff - g_closed‖∞ / ‖g_closed‖∞",
    title=f"jax.grad (plain jax.nn loss) vs closed form; {floor:g}: identical",
  )

  rows = results["seed_4_1_loss"]["float64"]["by_scale"]
  i = max(range(len(rows)), key=lambda i: rows[i]["scale"] == 1.0)  # scale 1 if there is one
  g, scale = logistic_f64[i], rows[i]["scale"]
  lim = np.max(np.abs(g["closed_form"])) * 1.1
  ax_c.plot([-lim, lim], [-lim, lim], color="gray", lw=0.8)
  ax_c.scatter(
    g["closed_form"],
    g["plain_autodiff"],
    s=14,
    color="C0",
    label="jax.grad of the full cross-entropy",
  )
  ax_c.scatter(
    g["closed_form"],
    g["seed_4_1_plain_autodiff"],
    s=14,
    color="C3",
    marker="x",
    label="jax.grad of the §4.1 loss -(1/n) Σ y log σ",
  )
  ax_c.set(
    xlabel="§4.2 formula -(1/n) Σ (y - σ) x, component",
    ylabel="autodiff, component",
    title=f"gradient components at parameter scale {scale:g} (float64)",
  )
  for ax in (ax_s, ax_g, ax_c):
    ax.legend(fontsize=7, markerscale=4 if ax is ax_s else 1)
    ax.grid(alpha=0.3)
  workdir.save_figure(
    fig,
    "gradient_check.png",
    caption=(
      "Relative error of σ'(z) three ways (points; 0 drawn at 1e-18), autodiff vs "
      "closed-form gradients, and the §4.1 loss's gradient against the §4.2 formula."
    ),
  )


if __name__ == "__main__":
  _common.main(run, validate)
