"""Tests for xent_jax.models: values vs numpy float64, closed-form gradients vs autodiff."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from xent_jax import data, models

jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = jax.config.jax_enable_x64
# Agreement expected between two float computations of the same quantity.
RTOL = 1e-12 if X64 else 2e-5


def _random_problem(seed, num_examples=64, num_features=5, num_classes=None, scale=1.0):
  """Seeded features, labels and non-zero parameters (numpy float64, then default dtype)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_examples, num_features))
  if num_classes is None:
    y = rng.integers(0, 2, num_examples)
    params = {"w": scale * rng.normal(size=num_features), "b": np.asarray(0.3)}
  else:
    y = rng.integers(0, num_classes, num_examples)
    params = {
      "w": scale * rng.normal(size=(num_features, num_classes)),
      "b": rng.normal(size=num_classes),
    }
  to_jax = lambda a: jnp.asarray(a, jnp.zeros(()).dtype)
  return jax.tree.map(to_jax, params), to_jax(x), jnp.asarray(y, jnp.int32)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _np_sigmoid(z):
  return np.exp(-np.logaddexp(0.0, -z))


def _np_logistic_loss_and_grad(params, x, y, l2):
  """Float64 numpy reference of the mean BCE + L2 and its textbook gradient."""
  params, x, y = _f64(params), np.asarray(x, np.float64), np.asarray(y, np.float64)
  z = x @ params["w"] + params["b"]
  loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * np.sum(params["w"] ** 2)
  r = _np_sigmoid(z) - y
  return loss, {"w": x.T @ r / len(y) + l2 * params["w"], "b": r.mean()}


def _np_softmax_loss_and_grad(params, x, y, l2):
  params, x = _f64(params), np.asarray(x, np.float64)
  z = x @ params["w"] + params["b"]
  log_p = z - z.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  onehot = np.eye(z.shape[1])[np.asarray(y)]
  loss = -np.mean(np.sum(onehot * log_p, 1)) + 0.5 * l2 * np.sum(params["w"] ** 2)
  r = np.exp(log_p) - onehot
  return loss, {"w": x.T @ r / len(y) + l2 * params["w"], "b": r.mean(0)}


def _max_rel_err(tree, ref_tree):
  """max over leaves of ‖a - ref‖_∞ / ‖ref‖_∞ (norm-wise: entries near 0 are not amplified)."""
  errs = jax.tree.map(
    lambda a, r: np.max(np.abs(np.asarray(a, np.float64) - r)) / np.max(np.abs(r)),
    tree,
    _f64(ref_tree),
  )
  return max(jax.tree.leaves(errs))


class LogisticRegressionTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_logits_and_probs_match_numpy(self):
    params, x, _ = _random_problem(0)
    logits = self.variant(models.logistic_regression_logits)(params, x)
    probs = self.variant(models.logistic_regression_probs)(params, x)
    z_ref = np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64) + float(params["b"])
    chex.assert_shape([logits, probs], (64,))
    np.testing.assert_allclose(logits, z_ref, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(probs, _np_sigmoid(z_ref), rtol=RTOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("unpenalised", 0.0), ("l2", 0.05))
  def test_loss_matches_numpy(self, l2):
    params, x, y = _random_problem(1)
    loss = self.variant(functools.partial(models.logistic_regression_loss, l2=l2))(params, x, y)
    chex.assert_shape(loss, ())
    np.testing.assert_allclose(loss, _np_logistic_loss_and_grad(params, x, y, l2)[0], rtol=RTOL)

  @chex.variants(with_jit=True)  # Eager paths are covered by the value tests above.
  def test_closed_form_grad_equals_autodiff(self, l2=0.05):
    params, x, y = _random_problem(2)
    loss_fn = functools.partial(models.logistic_regression_loss, l2=l2)
    autodiff = self.variant(jax.grad(loss_fn))(params, x, y)
    closed = self.variant(functools.partial(models.logistic_regression_grad, l2=l2))(params, x, y)
    chex.assert_trees_all_equal_shapes_and_dtypes(autodiff, closed, params)
    reference = _np_logistic_loss_and_grad(params, x, y, l2)[1]  # float64 recomputation
    self.assertLess(_max_rel_err(autodiff, reference), RTOL)
    self.assertLess(_max_rel_err(closed, reference), RTOL)

  def test_check_grads(self):
    params, x, y = _random_problem(3, num_examples=16, num_features=3)
    loss_fn = lambda p: models.logistic_regression_loss(p, x, y, l2=0.1)
    jtu.check_grads(jax.jit(loss_fn), (params,), order=1, modes=("rev",))

  def test_loss_is_tail_accurate(self):
    # Confidently right: z = ±60 with the matching label. The loss is log1p(e^-60) = e^-60,
    # which a log(σ) of a rounded probability returns as 0.
    params = {"w": jnp.ones(1), "b": jnp.zeros(())}
    x, y = jnp.array([[60.0], [-60.0]]), jnp.array([1, 0])
    np.testing.assert_allclose(
      models.logistic_regression_loss(params, x, y), np.exp(-60.0), rtol=RTOL
    )
    np.testing.assert_allclose(
      models.seed_section_4_1_loss(params, x, y), np.exp(-60.0) / 2, rtol=RTOL
    )

  @chex.variants(with_jit=True)
  def test_seed_section_4_1_loss_and_its_missing_gradient_term(self):
    params, x, y = _random_problem(4)
    seed_loss = self.variant(models.seed_section_4_1_loss)(params, x, y)
    z = np.asarray(models.logistic_regression_logits(params, x), np.float64)
    y64, x64 = np.asarray(y, np.float64), np.asarray(x, np.float64)
    np.testing.assert_allclose(seed_loss, -np.mean(y64 * -np.logaddexp(0, -z)), rtol=RTOL)
    # Dropping -(1-y) log(1-σ) drops its gradient, (1/N) Σ (1-y) σ x, from the closed form.
    seed_grad = self.variant(jax.grad(models.seed_section_4_1_loss))(params, x, y)
    missing_w = x64.T @ ((1 - y64) * _np_sigmoid(z)) / len(y64)
    closed = models.logistic_regression_grad(params, x, y)
    np.testing.assert_allclose(
      seed_grad["w"], np.asarray(closed["w"]) - missing_w, rtol=10 * RTOL, atol=10 * RTOL
    )
    self.assertGreater(np.max(np.abs(missing_w)), 0.1)  # a real difference, not rounding

  def test_init(self):
    params = models.init_logistic_regression(4)
    chex.assert_trees_all_equal(params, {"w": jnp.zeros(4), "b": jnp.zeros(())})
    random = models.init_logistic_regression(4, key=jax.random.key(0), scale=0.5)
    chex.assert_shape(random["w"], (4,))
    self.assertGreater(float(jnp.std(random["w"])), 0.0)

  @parameterized.named_parameters(
    ("x_rank", np.ones(5), np.zeros(5), "`x_NxD` must have rank 2"),
    ("x_features", np.ones((5, 2)), np.zeros(5), "`x_NxD` has 2 features"),
    ("y_length", np.ones((5, 3)), np.zeros(4), r"`y_N` must have shape \[N\]=\(5,\)"),
    ("y_range", np.ones((2, 3)), np.array([0.0, 2.0]), r"`y_N` must lie in \[0, 1\]"),
    ("y_nan", np.ones((2, 3)), np.array([0.0, np.nan]), r"`y_N` must lie in \[0, 1\]"),
  )
  def test_bad_inputs_raise_naming_the_argument(self, x, y, message):
    params = models.init_logistic_regression(3)
    for fn in (
      models.logistic_regression_loss,
      models.logistic_regression_grad,
      models.seed_section_4_1_loss,
    ):
      with self.assertRaisesRegex(ValueError, message):
        fn(params, x, y)

  def test_out_of_range_labels_under_jit_give_nan(self):
    """Under a caller's jit the labels cannot be checked: a label outside [0, 1] gives NaN,
    not the formula's finite value (negative for the seed's loss at y = -1)."""
    params, x, y = _random_problem(12, num_examples=4)
    y = y.astype(x.dtype)
    labels_SxN = jnp.stack([y, y.at[1].set(2.0), y.at[1].set(-1.0), y.at[1].set(1.5)])
    reference_loss, reference_grad = _np_logistic_loss_and_grad(params, x, y, 0.0)
    z = np.asarray(x, np.float64) @ _f64(params)["w"] + _f64(params)["b"]
    reference_seed = -np.mean(np.asarray(y, np.float64) * -np.logaddexp(0, -z))
    for fn, reference in (
      (models.logistic_regression_loss, reference_loss),
      (models.logistic_regression_grad, reference_grad),
      (models.seed_section_4_1_loss, reference_seed),
    ):
      out = jax.jit(jax.vmap(fn, in_axes=(None, None, 0)))(params, x, labels_SxN)
      valid, bad = jax.tree.map(lambda a: a[0], out), jax.tree.map(lambda a: a[1:], out)
      self.assertLess(_max_rel_err(valid, reference), RTOL)  # valid labels: unchanged
      for leaf in jax.tree.leaves(bad):
        self.assertTrue(np.all(np.isnan(leaf)), f"{fn.__name__}: {leaf}")

  def test_bad_params_raise(self):
    with self.assertRaisesRegex(ValueError, r"`params` must have shapes w \[D\], b \[\]"):
      models.logistic_regression_logits({"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, np.ones((1, 3)))
    with self.assertRaisesRegex(ValueError, "keys 'w' and 'b'"):
      models.logistic_regression_logits({"w": jnp.ones(3)}, np.ones((1, 3)))


class FeatureMajorTest(chex.TestCase):
  """The same matrix stored [D, N] gives the models' values and gradients (float64 reference)."""

  @chex.variants(with_jit=True)
  @parameterized.named_parameters(("logistic", None), ("softmax", 4))
  def test_values_and_gradients_equal_row_major(self, num_classes):
    params, x, y = _random_problem(7, num_classes=num_classes)
    if num_classes is None:
      loss_fn, grad_fn, np_ref = (
        models.logistic_regression_loss,
        models.logistic_regression_grad,
        _np_logistic_loss_and_grad,
      )
    else:
      loss_fn, grad_fn, np_ref = (
        models.softmax_regression_loss,
        models.softmax_regression_grad,
        _np_softmax_loss_and_grad,
      )
    fm = data.feature_major(x)
    chex.assert_shape(fm.x_DxN, (x.shape[1], x.shape[0]))
    self.assertEqual(fm.shape, x.shape)
    loss_ref, grad_ref = np_ref(params, x, y, 0.05)
    loss = self.variant(functools.partial(loss_fn, l2=0.05))(params, fm, y)
    np.testing.assert_allclose(loss, loss_ref, rtol=RTOL)
    autodiff = self.variant(jax.grad(functools.partial(loss_fn, l2=0.05)))(params, fm, y)
    closed = self.variant(functools.partial(grad_fn, l2=0.05))(params, fm, y)
    self.assertLess(_max_rel_err(autodiff, grad_ref), RTOL)
    self.assertLess(_max_rel_err(closed, grad_ref), RTOL)

  def test_wrong_features_raise_naming_the_array(self):
    params, x, y = _random_problem(8)
    with self.assertRaisesRegex(
      ValueError, r"`x_NxD` has 64 features .*x_NxD\.x_DxN\.shape=\(64, 5\)"
    ):
      models.logistic_regression_loss(params, data.FeatureMajor(x), y)
    with self.assertRaisesRegex(ValueError, "rank 2"):
      data.feature_major(np.ones(3))


class SoftmaxRegressionTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_probs_are_a_distribution_matching_numpy(self):
    params, x, _ = _random_problem(5, num_classes=4)
    probs = self.variant(models.softmax_regression_probs)(params, x)
    chex.assert_shape(probs, (64, 4))
    z = np.asarray(models.softmax_regression_logits(params, x), np.float64)
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(probs, ref / ref.sum(1, keepdims=True), rtol=RTOL, atol=1e-30)
    np.testing.assert_allclose(jnp.sum(probs, axis=-1), 1.0, rtol=RTOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("unpenalised", 0.0), ("l2", 0.05))
  def test_loss_matches_numpy(self, l2):
    params, x, y = _random_problem(6, num_classes=4)
    loss = self.variant(functools.partial(models.softmax_regression_loss, l2=l2))(params, x, y)
    chex.assert_shape(loss, ())
    np.testing.assert_allclose(loss, _np_softmax_loss_and_grad(params, x, y, l2)[0], rtol=RTOL)

  @chex.variants(with_jit=True)  # Eager paths are covered by the value tests above.
  def test_closed_form_grad_equals_autodiff(self, l2=0.05):
    params, x, y = _random_problem(7, num_classes=4)
    loss_fn = functools.partial(models.softmax_regression_loss, l2=l2)
    autodiff = self.variant(jax.grad(loss_fn))(params, x, y)
    closed = self.variant(functools.partial(models.softmax_regression_grad, l2=l2))(params, x, y)
    chex.assert_trees_all_equal_shapes_and_dtypes(autodiff, closed, params)
    reference = _np_softmax_loss_and_grad(params, x, y, l2)[1]
    self.assertLess(_max_rel_err(autodiff, reference), RTOL)
    self.assertLess(_max_rel_err(closed, reference), RTOL)

  def test_check_grads(self):
    params, x, y = _random_problem(8, num_examples=16, num_features=3, num_classes=3)
    loss_fn = lambda p: models.softmax_regression_loss(p, x, y, l2=0.1)
    jtu.check_grads(jax.jit(loss_fn), (params,), order=1, modes=("rev",))

  def test_two_classes_equal_logistic_regression(self):
    # softmax([0, z]) = [1 - σ(z), σ(z)]: with w = [0, w], b = [0, b] the models coincide.
    params, x, y = _random_problem(9)
    two_class = {
      "w": jnp.stack([jnp.zeros_like(params["w"]), params["w"]], axis=1),
      "b": jnp.stack([jnp.zeros_like(params["b"]), params["b"]]),
    }
    np.testing.assert_allclose(
      models.softmax_regression_loss(two_class, x, y),
      models.logistic_regression_loss(params, x, y),
      rtol=RTOL,
    )
    np.testing.assert_allclose(
      models.softmax_regression_probs(two_class, x)[:, 1],
      models.logistic_regression_probs(params, x),
      rtol=RTOL,
    )

  def test_init(self):
    params = models.init_softmax_regression(3, 5)
    chex.assert_trees_all_equal(params, {"w": jnp.zeros((3, 5)), "b": jnp.zeros(5)})

  @parameterized.named_parameters(
    (
      "y_high",
      np.array([0, 4]),
      ValueError,
      r"`y_N` must be a class label in \[0, 4\); found y_N\[1\] = 4",
    ),
    (
      "y_negative",
      np.array([-1, 0]),
      ValueError,
      r"`y_N` must be a class label in \[0, 4\); found y_N\[0\] = -1",
    ),
    ("y_float", np.array([0.0, 1.0]), TypeError, "integer class labels"),
    ("y_length", np.array([0, 1, 2]), ValueError, r"`y_N` must have shape \[N\]=\(2,\)"),
  )
  def test_bad_labels_raise(self, y, error, message):
    params = models.init_softmax_regression(3, 4)
    for fn in (models.softmax_regression_loss, models.softmax_regression_grad):
      with self.assertRaisesRegex(error, message):
        fn(params, np.ones((2, 3)), y)

  def test_out_of_range_labels_under_jit_give_nan_not_wrapped(self):
    """Loss, closed-form gradient and autodiff gradient alike: NaN, not a zero one-hot row
    or a wrapped label (the autodiff gradient was finite: a jitted step trained on)."""
    params, x, y = _random_problem(10, num_examples=3, num_classes=4)
    labels_SxN = jnp.stack([y, y.at[1].set(4), y.at[1].set(-1)])
    functions = (
      models.softmax_regression_loss,
      models.softmax_regression_grad,
      jax.grad(models.softmax_regression_loss),
    )
    loss, grad = _np_softmax_loss_and_grad(params, x, y, 0.0)
    reference = (loss, grad, grad)
    for fn, want in zip(functions, reference, strict=True):
      out = jax.jit(jax.vmap(fn, in_axes=(None, None, 0)))(params, x, labels_SxN)
      valid, bad = jax.tree.map(lambda a: a[0], out), jax.tree.map(lambda a: a[1:], out)
      self.assertLess(_max_rel_err(valid, want), RTOL)  # valid labels: unchanged
      for leaf in jax.tree.leaves(bad):
        self.assertTrue(np.all(np.isnan(leaf)), f"{fn.__name__}: {leaf}")

  def test_bad_params_raise(self):
    with self.assertRaisesRegex(ValueError, r"params\['b'\].shape=\(3,\)"):
      models.softmax_regression_logits({"w": jnp.ones((3, 2)), "b": jnp.zeros(3)}, np.ones((1, 3)))


if __name__ == "__main__":
  absltest.main()
