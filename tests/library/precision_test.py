"""Every dot in the library states its precision (SPEC §9), read from the lowered program.

JAX's default precision lets the backend choose: TF32 for float32 matmuls on recent NVIDIA
GPUs, bfloat16 passes on TPUs; the CPU computes float32 either way, so no value test on the
CPU can see the difference. The precision is part of the lowered StableHLO, though
(``precision = [HIGHEST, HIGHEST]`` on each ``stablehlo.dot_general``), so these tests
lower each model function, loss, gradient (row- and feature-major), train step, solver and
the fused loss with float32 inputs, and fail on any float32 dot left at another
precision; then they lower the same functions with ``precision="default"`` and check that
the request reaches every dot. Lowering only: nothing is compiled or run, except in the
test that counts compilations.

:mod:`xent_jax.optimum` is float64 numpy (no JAX dot); ``fit_logistic_regression``'s
gradient has no dot at all (multiply-reduces, see :mod:`xent_jax.fit`), which is checked.
"""

import collections
import functools
import re
from typing import NamedTuple
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax import lax

import xent_jax
from experiments import gradient_check
from xent_jax import data, fit, models, training
from xent_jax._measures import REGISTRY, Role

jax.config.update("jax_numpy_rank_promotion", "raise")

N, D, K = 6, 4, 3
HIGHEST, DEFAULT = lax.Precision.HIGHEST, lax.Precision.DEFAULT
# A dot's operand and result types: `: (tensor<6x4xf32>, tensor<4xf32>) -> tensor<6xf32>`.
_TYPES = re.compile(
  r": \(tensor<(?:[^>]*x)?(\w+)>, tensor<(?:[^>]*x)?(\w+)>\) -> tensor<(?:[^>]*x)?(\w+)>"
)
_PRECISION = re.compile(r"precision = \[(\w+), (\w+)\]")


class Dot(NamedTuple):
  line: str
  lhs: str  # element types: f32, bf16, ...
  rhs: str
  out: str
  precision: tuple[str, ...] | None  # None: no precision stated (the backend's default)


def dots(fn, *args) -> list[Dot]:
  """The dot_generals of ``jax.jit(fn)`` lowered at ``args`` (no compilation)."""
  found = []
  for line in jax.jit(fn).lower(*args).as_text().splitlines():
    if "stablehlo.dot_general" not in line:
      continue
    types, precision = _TYPES.search(line), _PRECISION.search(line)
    assert types is not None, f"unparsed dot: {line}"
    found.append(
      Dot(
        line=line.strip(),
        lhs=types[1],
        rhs=types[2],
        out=types[3],
        precision=None if precision is None else (precision[1], precision[2]),
      )
    )
  return found


def _problem(dtype=jnp.float32):
  """Float32 (or ``dtype``) features and labels, row-major and feature-major, and params."""
  rng = np.random.default_rng(0)
  x_NxD = jnp.asarray(rng.standard_normal((N, D)), dtype)
  return {
    "x": x_NxD,
    "x_fm": data.feature_major(x_NxD),
    "y_binary": jnp.asarray(rng.integers(0, 2, N), jnp.int32),
    "y_class": jnp.asarray(rng.integers(0, K, N), jnp.int32),
    "logistic": models.init_logistic_regression(D, key=jax.random.key(1), dtype=dtype),
    "softmax": models.init_softmax_regression(D, K, key=jax.random.key(2), dtype=dtype),
  }


def _model_cases(precision=None) -> dict:
  """name -> (function, args): every model function and the autodiff of each loss."""
  p = _problem()
  kw = {} if precision is None else {"precision": precision}
  cases = {}
  for layout in ("x", "x_fm"):
    x = p[layout]
    for model, y in (("logistic", p["y_binary"]), ("softmax", p["y_class"])):
      params = p[model]
      prefix = f"{model}_regression"
      loss = functools.partial(getattr(models, f"{prefix}_loss"), l2=0.1, **kw)
      cases |= {
        f"{prefix}_logits[{layout}]": (
          functools.partial(getattr(models, f"{prefix}_logits"), **kw),
          (params, x),
        ),
        f"{prefix}_probs[{layout}]": (
          functools.partial(getattr(models, f"{prefix}_probs"), **kw),
          (params, x),
        ),
        f"{prefix}_loss[{layout}]": (loss, (params, x, y)),
        f"{prefix}_grad[{layout}]": (
          functools.partial(getattr(models, f"{prefix}_grad"), l2=0.1, **kw),
          (params, x, y),
        ),
        f"jax.grad({prefix}_loss)[{layout}]": (jax.grad(loss), (params, x, y)),
        # Forward mode: the Hessian (jacfwd of jax.grad) of each loss.
        f"jax.hessian({prefix}_loss)[{layout}]": (jax.hessian(loss), (params, x, y)),
      }
    seed_loss = functools.partial(models.seed_section_4_1_loss, **kw)
    cases[f"seed_section_4_1_loss[{layout}]"] = (seed_loss, (p["logistic"], x, p["y_binary"]))
    cases[f"jax.grad(seed_section_4_1_loss)[{layout}]"] = (
      jax.grad(seed_loss),
      (p["logistic"], x, p["y_binary"]),
    )
  return cases


def _training_cases(precision=None) -> dict:
  """A train step, and whole runs of each trainer, of both models (row- and feature-major)."""
  p = _problem()
  kw = {} if precision is None else {"precision": precision}
  optimizer = training.sgd(0.1, momentum=0.9)
  init_fn = lambda key: models.init_softmax_regression(D, K, key=key)
  cases = {}
  for layout in ("x", "x_fm"):
    for model, y in (("logistic", p["y_binary"]), ("softmax", p["y_class"])):
      loss_fn = functools.partial(getattr(models, f"{model}_regression_loss"), l2=0.1, **kw)
      state = training.init_train_state(p[model], optimizer)
      batch = (p[layout], y)
      run = dict(loss_fn=loss_fn, optimizer=optimizer)
      cases |= {
        f"train_step[{model}, {layout}]": (
          lambda s, b, run=run: training.train_step(s, b, **run),
          (state, batch),
        ),
        f"train_full_batch[{model}, {layout}]": (
          lambda s, b, run=run: training.train_full_batch(s, b, num_steps=2, **run),
          (state, batch),
        ),
        f"train_minibatch[{model}, {layout}]": (
          lambda s, b, k, run=run: training.train_minibatch(
            s, b, k, num_epochs=1, batch_size=3, **run
          ),
          (state, batch, jax.random.key(0)),
        ),
      }
    cases[f"train_seeds[softmax, {layout}]"] = (
      lambda keys, b: training.train_seeds(
        keys,
        b,
        init_fn=init_fn,
        loss_fn=functools.partial(models.softmax_regression_loss, **kw),
        optimizer=optimizer,
        num_epochs=2,
      ),
      (jax.random.split(jax.random.key(0), 2), (p[layout], p["y_class"])),
    )
  return cases


def _fused_cases(precision=None) -> dict:
  """The fused linear cross-entropy: value, its reverse-mode paths and forward mode."""
  rng = np.random.default_rng(3)
  h = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
  b = jnp.asarray(rng.standard_normal(32), jnp.float32)
  y = jnp.asarray(rng.integers(0, 32, 16), jnp.int32)
  c = jnp.asarray(rng.random(16), jnp.float32)
  kw = dict(chunk_size=4, vocab_chunk_size=8)
  if precision is not None:
    kw["precision"] = precision
  loss = functools.partial(xent_jax.linear_softmax_cross_entropy, **kw)
  mean = lambda h, w, b: loss(h, w, y, bias=b).mean()
  per_token = lambda h, w, b: (c * loss(h, w, y, bias=b)).sum()  # the recompute path
  return {
    "linear_softmax_cross_entropy": (lambda h, w, b: loss(h, w, y, bias=b), (h, w, b)),
    "value_and_grad(mean)": (jax.value_and_grad(mean, argnums=(0, 1, 2)), (h, w, b)),
    "value_and_grad(per-token)": (jax.value_and_grad(per_token, argnums=(0, 1, 2)), (h, w, b)),
    "jvp": (lambda h, w, b: jax.jvp(mean, (h, w, b), (h, w, b)), (h, w, b)),
    "return_lse, z_loss, softcap, smoothing": (
      jax.grad(
        lambda h, w: sum(
          jnp.sum(a)
          for a in loss(
            h, w, y, return_lse=True, z_loss=1e-2, logit_softcap=5.0, label_smoothing=0.1
          )
        ),
        argnums=(0, 1),
      ),
      (h, w),
    ),
  }


def _solver_cases() -> dict:
  p = _problem()
  theta = jnp.zeros(D * K + K, jnp.float32)
  return {
    "fit_softmax_regression (its gradient)": (
      fit._softmax_gradient_sums,
      (theta, p["x"], p["y_class"]),
    )
  }


def _experiment_cases() -> dict:
  """The JAX dots of experiments whose numbers are reported (E4's gradient check)."""
  p = _problem()
  y = p["y_binary"].astype(jnp.float32)
  plain = gradient_check.plain_losses()
  return {
    "E4 seed_loss_grad": (gradient_check.seed_loss_grad, (p["logistic"], p["x"], y)),
    "E4 missing_term_grad": (gradient_check.missing_term_grad, (p["logistic"], p["x"], y)),
    "E4 jax.grad(plain bce)": (jax.grad(plain["logistic"]), (p["logistic"], p["x"], y)),
    "E4 jax.grad(plain seed_4_1)": (jax.grad(plain["seed_4_1"]), (p["logistic"], p["x"], y)),
    "E4 jax.grad(plain softmax)": (
      jax.grad(plain["softmax"]),
      (p["softmax"], p["x"], p["y_class"]),
    ),
  }


def _not_at(precision: str, found: list[Dot]) -> list[str]:
  """The lines of float32 dots not at ``precision`` (both operands)."""
  return [d.line for d in found if "f32" in (d.lhs, d.rhs) and d.precision != (precision,) * 2]


class DefaultPrecisionTest(parameterized.TestCase):
  """Float32 inputs: every dot is HIGHEST (true float32 on GPUs and TPUs too)."""

  def assert_all_highest(self, cases: dict) -> None:
    for name, (fn, args) in cases.items():
      found = dots(fn, *args)
      self.assertNotEmpty(found, f"{name}: no dot lowered (what does this test check?)")
      bad = _not_at("HIGHEST", found)
      self.assertEmpty(bad, f"{name}: float32 dots not at HIGHEST:\n" + "\n".join(bad))

  def test_models(self):
    self.assert_all_highest(_model_cases())

  def test_trainers(self):
    self.assert_all_highest(_training_cases())

  def test_fused_linear_cross_entropy(self):
    self.assert_all_highest(_fused_cases())

  def test_solvers(self):
    self.assert_all_highest(_solver_cases())
    p = _problem()
    theta = jnp.zeros(D + 1, jnp.float32)
    lowered = fit._gradient_sums.lower(theta, p["x"], p["y_binary"].astype(jnp.float32))
    self.assertNotIn("dot_general", lowered.as_text())  # multiply-reduces: nothing to state

  def test_reported_experiment_numbers(self):
    self.assert_all_highest(_experiment_cases())

  def test_no_measure_has_a_dot_below_highest(self):
    logits = jnp.linspace(-3.0, 3.0, 2 * K, dtype=jnp.float32).reshape(2, K)
    probs = jax.nn.softmax(logits)
    labels = jnp.array([0, K - 1])
    # Arguments from the roles: logits for logits, labels for labels, probabilities otherwise.
    examples = {Role.LOGITS: (logits, logits[::-1]), Role.LABELS: (labels,)}
    for name, spec in REGISTRY.items():
      kwargs, used = {}, collections.Counter()
      for arg, role in spec.roles.items():
        kwargs[arg] = examples.get(role, (probs, probs[::-1]))[used[role]]
        used[role] += 1
      x = next(a for a, r in spec.roles.items() if r is not Role.LABELS)  # differentiated

      def loss(v, fn=spec.exported, x=x, kwargs=kwargs):
        return fn(**{**kwargs, x: v}).sum()

      self.assertEmpty(_not_at("HIGHEST", dots(jax.grad(loss), kwargs[x])), name)

  def test_bfloat16_multiplies_in_bfloat16_accumulates_in_float32(self):
    p = _problem(jnp.bfloat16)
    for name, fn in (
      ("logistic_regression_logits", models.logistic_regression_logits),
      ("softmax_regression_logits", models.softmax_regression_logits),
    ):
      params = p["logistic" if name.startswith("logistic") else "softmax"]
      for layout in ("x", "x_fm"):
        (dot,) = dots(fn, params, p[layout])
        self.assertEqual((dot.lhs, dot.rhs, dot.out), ("bf16", "bf16", "f32"), dot.line)
        self.assertEqual(fn(params, p[layout]).dtype, jnp.float32)
    # Their gradients multiply float32 cotangents: true float32 (HIGHEST) again.
    loss = models.softmax_regression_loss
    for layout in ("x", "x_fm"):
      args = (p["softmax"], p[layout], p["y_class"])
      self.assertEmpty(_not_at("HIGHEST", dots(jax.grad(loss), *args)))
      self.assertEmpty(_not_at("HIGHEST", dots(models.softmax_regression_grad, *args)))


class RequestedPrecisionTest(parameterized.TestCase):
  """``precision="default"`` (a speed request) reaches every dot, as asked."""

  @parameterized.named_parameters(
    ("models", _model_cases),
    ("trainers", _training_cases),
    ("fused_linear_cross_entropy", _fused_cases),
  )
  def test_reaches_every_dot(self, cases):
    for name, (fn, args) in cases("default").items():
      found = dots(fn, *args)
      self.assertNotEmpty(found, name)
      bad = _not_at("DEFAULT", found)
      self.assertEmpty(bad, f"{name}: precision='default' did not reach:\n" + "\n".join(bad))

  def test_bad_precision_is_named(self):
    p = _problem()
    args = (p["softmax"], p["x"], p["y_class"])
    for value, error in (("tf32", ValueError), (2, TypeError), (jnp.float32, TypeError)):
      for fn in (models.softmax_regression_loss, models.softmax_regression_grad):
        with self.assertRaisesRegex(error, f"{fn.__name__}: `precision`"):
          fn(*args, precision=value)
    with self.assertRaisesRegex(ValueError, "linear_softmax_cross_entropy: `precision`"):
      xent_jax.linear_softmax_cross_entropy(
        jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.array([0, 1]), precision="fast"
      )
    state = training.init_train_state(p["softmax"], training.sgd(0.1))
    loss_fn = functools.partial(models.softmax_regression_loss, precision="tf32")
    with self.assertRaisesRegex(ValueError, "train_step: `precision`"):
      training.train_step(state, args[1:], loss_fn=loss_fn, optimizer=training.sgd(0.1))

  def test_a_precision_sweep_point_compiles_once(self):
    """Equal precisions, spelled as a name or a ``lax.Precision``, share one compilation."""
    p, losses = _problem(), []
    # _l2_penalty runs once per trace of a models loss. (sgd without momentum, no l2: this
    # test's own program, which no other test compiles first.)
    with mock.patch.object(models, "_l2_penalty", wraps=models._l2_penalty) as traces:
      for precision in ("tensorfloat32", lax.Precision.HIGH, "high"):
        opt = training.sgd(0.1)
        _, m = training.train_full_batch(
          training.init_train_state(p["softmax"], opt),
          (p["x"], p["y_class"]),
          # A new partial each time:
          loss_fn=functools.partial(models.softmax_regression_loss, precision=precision),
          optimizer=opt,
          num_steps=2,
        )
        losses.append(m["loss"])
    self.assertEqual(traces.call_count, 1)
    chex.assert_trees_all_equal(*losses)


if __name__ == "__main__":
  absltest.main()
