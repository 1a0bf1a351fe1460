"""Tests for xent_jax.checked: value checks eagerly, under jit, vmap and grad (SPEC §1, §5)."""

import functools
import re
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.experimental import checkify

import xent_jax as xj
from xent_jax import _core, _measures, models
from xent_jax.checked import sum_tolerance

jax.config.update("jax_numpy_rank_promotion", "raise")

# Float64 arrays silently become float32 under JAX_ENABLE_X64=0: test float64 only when on.
DTYPES = (np.float32, np.float64) if jax.config.jax_enable_x64 else (np.float32,)
# Eagerly (and under vmap/grad) a failed check is a ValueError; under an outer jit XLA
# reports the host callback's exception as a jax.errors.JaxRuntimeError with the same text.
EAGER_ERROR = checkify.JaxRuntimeError
JIT_ERROR = jax.errors.JaxRuntimeError


def _dirichlet(rng, shape, dtype):
  x = rng.gamma(1.0, size=shape)
  return (x / x.sum(axis=-1, keepdims=True)).astype(dtype)


def _valid_calls(dtype):
  """Valid calls (args, kwargs) on seeded random data."""
  rng = np.random.default_rng(0)
  p = _dirichlet(rng, (4, 5), dtype)
  z = (rng.normal(size=(4, 5)) * 3).astype(dtype)
  z[0, 1] = -np.inf  # a class of probability 0 is valid
  labels = rng.integers(0, 5, size=4)
  where = rng.random((4, 5)) < 0.7
  where[:, 0] = True
  # Renormalised over the included classes; the excluded entries keep values that the
  # checks must ignore (they sum to more than 1 with the included ones).
  p_where = np.where(where, p / np.sum(p, axis=-1, keepdims=True, where=where), p).astype(dtype)
  return {
    "entropy": ((p_where,), {"where": where, "base": 2}),
    "softmax_cross_entropy_with_integer_labels": ((z, labels), {}),
  }


def _error_text(rule, index, value):
  """The regex of a message: the rule text, then the first offending index and value."""
  return re.escape(rule) + r".*at index " + re.escape(index) + r": \w[\w ]* = " + re.escape(value)


class CheckedPassThroughTest(chex.TestCase):
  def test_valid_inputs_give_the_unwrapped_output(self):
    # bad_input_test compares all 16 functions on edge inputs; here random data, `where`
    # excluding entries that would be invalid, and `base`.
    args, kwargs = _valid_calls(DTYPES[-1])["entropy"]
    fn = xj.entropy
    got = xj.checked(fn)(*args, **kwargs)
    # checked runs fn compiled (together with the checks): the same program as jax.jit(fn).
    expected = jax.jit(lambda *a: fn(*a, **kwargs))(*args)
    self.assertEqual(got.dtype, expected.dtype)
    np.testing.assert_array_equal(got, expected)

  def test_valid_inputs_under_jit(self):
    args, kwargs = _valid_calls(DTYPES[-1])["softmax_cross_entropy_with_integer_labels"]
    fn = xj.softmax_cross_entropy_with_integer_labels
    got = jax.jit(lambda *a: xj.checked(fn)(*a, **kwargs))(*args)
    # Compared under the same transformation: XLA may fuse jitted code differently.
    np.testing.assert_array_equal(got, jax.jit(lambda *a: fn(*a, **kwargs))(*args))

  def test_grad_is_the_closed_form(self):
    rng = np.random.default_rng(1)
    z, t = (rng.normal(size=(3, 6)) * 4).astype(np.float32), _dirichlet(rng, (3, 6), np.float32)
    loss = lambda z: xj.checked(xj.softmax_cross_entropy)(z, t, label_smoothing=0.1).sum()
    z64 = z.astype(np.float64)
    softmax = np.exp(z64 - z64.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    expected = softmax - (0.9 * t + 0.1 / 6)  # ∂H/∂z = softmax(z) - smoothed targets
    for wrap in (lambda g: g, jax.jit):
      np.testing.assert_allclose(wrap(jax.grad(loss))(z), expected, rtol=1e-5, atol=1e-6)

  def test_vmap_matches_unwrapped(self):
    rng = np.random.default_rng(2)
    p, q = _dirichlet(rng, (2, 4, 3), np.float32)
    got = jax.vmap(xj.checked(xj.kl_divergence))(p, q)
    expected = np.sum(p * (np.log(p.astype(np.float64)) - np.log(q)), axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)

  def test_wraps_signature_and_docstring(self):
    wrapped = xj.checked(xj.entropy)
    self.assertIs(wrapped.__wrapped__, xj.entropy)
    self.assertEqual(wrapped.__name__, "entropy")
    self.assertEqual(wrapped.__doc__, xj.entropy.__doc__)


_SCALE = 1.0  # read by a lambda of a test: a script's sweep variable


def _user_loss(logits, targets):
  """A user's loss: the mean softmax cross-entropy, written with the library's measures."""
  return jnp.mean(xj.cross_entropy(targets, jnp.exp(xj.log_softmax(logits))))


class CheckedAnyFunctionTest(chex.TestCase):
  """SPEC §8: checked(fn) for any fn checks the library calls inside it; one-line errors."""

  _Z = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], np.float32)
  _T = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], np.float32)
  _BAD_T = np.array([[0.2, 0.3, 0.5], [1.5, -0.25, -0.25]], np.float32)  # sums to 1

  @parameterized.named_parameters(
    ("partial", functools.partial(_user_loss), "_user_loss"),
    ("lambda", lambda z, t: _user_loss(z, t), "<lambda>"),
    ("jitted", jax.jit(_user_loss), "_user_loss"),
    ("jitted_partial", jax.jit(functools.partial(_user_loss)), "_user_loss"),  # was its repr
  )
  def test_user_functions(self, fn, name):
    wrapped = xj.checked(fn)
    z64 = self._Z.astype(np.float64)
    log_p = z64 - np.log(np.sum(np.exp(z64), axis=-1, keepdims=True))
    expected = -np.mean(np.sum(self._T * log_p, axis=-1))  # numpy float64 oracle
    np.testing.assert_allclose(wrapped(self._Z, self._T), expected, rtol=1e-6)
    with self.assertRaises(EAGER_ERROR) as raised:
      wrapped(self._Z, self._BAD_T)
    self.assertEqual(
      str(raised.exception),
      "cross_entropy: `p` must lie in [0, 1]; first offending entry at index (1, 0): "
      f"value = 1.5 (inside {name})",
    )

  def test_a_new_function_reading_a_changed_global_sees_its_value(self):
    global _SCALE
    for scale in (1.0, 2.0):
      _SCALE = scale
      # a new lambda each time, reading the global (not a loop variable)
      wrapped = xj.checked(lambda z, t: _SCALE * _user_loss(z, t))  # noqa: B023
      np.testing.assert_allclose(wrapped(self._Z, self._T), scale * _user_loss(self._Z, self._T))

  def test_one_line_and_nothing_logged_also_from_a_jitted_step(self):
    step = xj.checked(jax.jit(jax.value_and_grad(_user_loss)))
    with self.assertNoLogs(level="WARNING"):
      with self.assertRaises(EAGER_ERROR) as raised:
        step(self._Z, self._BAD_T)
    self.assertNotIn("INTERNAL", str(raised.exception))
    self.assertEqual(len(str(raised.exception).splitlines()), 1)
    # Under a plain outer jit the error comes from a host callback; still nothing logged.
    with self.assertNoLogs(level="WARNING"):
      with self.assertRaisesRegex(JIT_ERROR, "cross_entropy: `p` must lie in"):
        jax.block_until_ready(jax.jit(xj.checked(_user_loss))(self._Z, self._BAD_T))

  def test_a_function_traced_before_without_checks_is_checked(self):
    jitted = jax.jit(_user_loss)
    self.assertFalse(np.isnan(jitted(self._Z, self._BAD_T)))  # unchecked: a silent number
    with self.assertRaisesRegex(EAGER_ERROR, r"`p` must lie in \[0, 1\]"):
      xj.checked(jitted)(self._Z, self._BAD_T)

  def test_models_losses_and_nested_checked(self):
    params = {"w": jnp.ones(2), "b": jnp.zeros(())}
    x, y = np.ones((3, 2), np.float32), np.array([0.0, 2.0, 1.0], np.float32)
    # The losses and their closed-form gradients alike name themselves and `y_N`.
    for fn in (models.logistic_regression_loss, models.logistic_regression_grad):
      with self.assertRaisesRegex(
        EAGER_ERROR,
        f"^{fn.__name__}: `y_N` must lie in \\[0, 1\\]; first offending example at index "
        f"\\(1,\\): label = 2(\\.0)? \\(inside {fn.__name__}\\)$",
      ):
        xj.checked(fn)(params, x, y)
    softmax_params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    with self.assertRaisesRegex(
      EAGER_ERROR,
      r"^softmax_regression_grad: `y_N` must be a class label in \[0, 3\); first offending "
      r"example at index \(2,\): label = -1 \(inside softmax_regression_grad\)$",
    ):
      xj.checked(models.softmax_regression_grad)(softmax_params, x, np.array([0, 2, -1]))
    outer = xj.checked(lambda z, t: xj.checked(xj.softmax_cross_entropy)(z, t).sum())
    with self.assertRaisesRegex(EAGER_ERROR, r"^softmax_cross_entropy: `targets` must lie in"):
      outer(self._Z, self._BAD_T)
    with self.assertRaisesRegex(EAGER_ERROR, "`p` must lie in"):
      jax.grad(xj.checked(_user_loss))(self._Z, self._BAD_T)


class MeasureRegistryTest(chex.TestCase):
  """Every measure is defined with @measure, exported by xent_jax, and checked by its roles."""

  def test_registry_is_what_xent_jax_exports(self):
    exported = [n for n in xj.__all__ if n not in ("checked", "linear_softmax_cross_entropy")]
    missing = sorted(set(exported) - set(_measures.REGISTRY))
    self.assertEqual(missing, [], f"exported but not defined with @measure: {missing}")
    unexported = sorted(set(_measures.REGISTRY) - set(exported))
    self.assertEqual(unexported, [], f"defined with @measure, missing from __all__: {unexported}")
    for name, spec in _measures.REGISTRY.items():
      self.assertIs(getattr(xj, name), spec.exported, name)
      self.assertIs(_measures.spec_of(spec.fn), spec, name)
    # The fused loss is checkable too; its class axis is implicit (V = weight.shape[1]), so
    # the tests that build a call from the roles alone do not list it.
    fused = _measures.spec_of(xj.linear_softmax_cross_entropy)
    self.assertIs(fused.exported, xj.linear_softmax_cross_entropy)
    self.assertIsNotNone(fused.num_classes)

  def test_roles_must_name_parameters(self):
    def toy(p):
      return p

    with self.assertRaisesRegex(TypeError, "toy has no parameter logits"):
      _measures.measure(logits=_measures.Role.LOGITS)(toy)
    with self.assertRaisesRegex(TypeError, "give each array argument a Role"):
      _measures.measure(p="distribution")

  def test_a_measure_inside_a_measure_is_not_checked(self):
    """Only the user's call adds checks: a measure calling another (an internal step, here
    on values that the inner measure's roles forbid) does not check the inner call."""
    with mock.patch.dict(_measures.REGISTRY), mock.patch.dict(_measures._SPEC_OF):

      @_measures.measure(p=_measures.Role.DISTRIBUTION)
      def toy(p, axis=-1):
        return xj.binary_entropy(2 * p).sum(axis)  # 2p may exceed 1: not a probability

      p = np.array([[0.25, 0.75]], np.float32)
      expected = jax.jit(toy)(p)
      np.testing.assert_array_equal(xj.checked(toy)(p), expected)
      np.testing.assert_array_equal(xj.checked(lambda p: toy(p))(p), expected)
      with self.assertRaisesRegex(EAGER_ERROR, "^toy: `p` must lie in"):
        xj.checked(toy)(-p)
    self.assertNotIn("toy", _measures.REGISTRY)


class SwappedArgumentsTest(chex.TestCase):
  """README's argument-order table: a call in another library's order fails loudly."""

  _Z = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)  # logits
  _P = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)  # targets
  _Y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], np.float32)  # binary labels

  @parameterized.named_parameters(
    # torch.nn.functional.cross_entropy(input=logits, target) order, into ours (targets 2nd)
    ("softmax_cross_entropy", xj.softmax_cross_entropy, "_P", "_Z", "targets"),
    # optax.kl_divergence(log_predictions, targets): log-probabilities land in `p`
    ("kl_divergence_optax_order", xj.kl_divergence, "log_P", "_P", "p"),
    # torch.nn.functional.kl_div(input=log q, target=p)
    ("kl_divergence_torch_order", xj.kl_divergence, "log_P", "_P", "p"),
    ("cross_entropy_logits_for_q", xj.cross_entropy, "_P", "_Z", "q"),
    # torch.nn.functional.binary_cross_entropy(input=q, target=p): ours is (p, q); q = σ(z)
    ("binary_cross_entropy_logits", xj.binary_cross_entropy, "_Z", "_Y", "p"),
    # optax.sigmoid_binary_cross_entropy(logits, labels) is ours too; swapped, it is caught
    ("sigmoid_binary_cross_entropy", xj.sigmoid_binary_cross_entropy, "_Y", "_Z", "labels"),
  )
  def test_swapped_call_is_flagged(self, fn, first, second, arg):
    value = lambda name: np.log(self._P) if name == "log_P" else getattr(self, name)
    with self.assertRaisesRegex(EAGER_ERROR, f"^{fn.__name__}: `{arg}` must lie in \\[0, 1\\]"):
      xj.checked(fn)(value(first), value(second))


class CheckedRejectsTest(chex.TestCase):
  """Each rule, eagerly, under an outer jit, and under vmap; with index and value."""

  _P = np.array([[0.5, 0.5], [0.25, 0.75], [0.5, 0.5], [0.5, 0.5]], np.float32)
  _BAD_Q = np.array([[0.5, 0.5], [0.25, 0.75], [0.5, 0.5], [0.47, 0.5]], np.float32)

  def _assert_raises(self, fn, args, pattern, under_jit=False, **kwargs):
    """Eagerly, and (a compile each, so for a few rules) under an outer jax.jit."""
    wrapped = xj.checked(fn)
    with self.assertRaisesRegex(EAGER_ERROR, pattern):
      wrapped(*args, **kwargs)
    if under_jit:
      with self.assertRaisesRegex(JIT_ERROR, pattern):
        jax.block_until_ready(jax.jit(lambda *a: wrapped(*a, **kwargs))(*args))

  def test_sum_message_names_function_argument_rule_index_value(self):
    tol = sum_tolerance(np.float32, 2)
    pattern = re.escape(
      f"kl_divergence: `q` must sum to 1 along axis -1 (|sum - 1| ≤ {tol:.2g}); "
      "first offending example at index (3,): sum = 0.97000003"
    )
    self._assert_raises(xj.kl_divergence, (self._P, self._BAD_Q), pattern, under_jit=True)

  def test_vmap_reports_the_offending_example(self):
    pattern = _error_text("kl_divergence: `q` must sum to 1", "()", "0.97000003")
    with self.assertRaisesRegex(EAGER_ERROR, pattern):
      jax.vmap(xj.checked(xj.kl_divergence))(self._P, self._BAD_Q)
    with self.assertRaisesRegex(JIT_ERROR, pattern):
      jax.block_until_ready(jax.jit(jax.vmap(xj.checked(xj.kl_divergence)))(self._P, self._BAD_Q))

  def test_grad_of_invalid_input_raises(self):
    loss = lambda q: xj.checked(xj.cross_entropy)(self._P, q).sum()
    with self.assertRaisesRegex(EAGER_ERROR, "`q` must sum to 1"):
      jax.grad(loss)(self._BAD_Q)

  def test_nan_is_reported_before_the_sum(self):
    q = self._BAD_Q.copy()
    q[3, 1] = np.nan
    with self.assertRaisesRegex(EAGER_ERROR, r"`q` must not contain NaN.*index \(3, 1\)"):
      xj.checked(xj.kl_divergence)(self._P, q)

  def test_plus_inf_logit(self):
    z = np.zeros((2, 3, 4), np.float32)
    z[1, 0, 2] = np.inf
    pattern = _error_text("log_softmax: `logits` must not be +inf", "(1, 0, 2)", "inf")
    self._assert_raises(xj.log_softmax, (z,), pattern, under_jit=True)

  @parameterized.named_parameters(("negative", -1), ("too_large", 4))
  def test_integer_labels_out_of_range(self, bad):
    z = np.zeros((3, 4), np.float32)
    labels = np.array([0, bad, 3])
    pattern = _error_text(
      "softmax_cross_entropy_with_integer_labels: `labels` must be in [0, 4)", "(1,)", str(bad)
    )
    self._assert_raises(
      xj.softmax_cross_entropy_with_integer_labels, (z, labels), pattern, under_jit=bad < 0
    )

  def test_labels_out_of_range_are_allowed_in_padding_rows(self):
    z = np.zeros((3, 4), np.float32)
    labels = np.array([0, -1, 7])
    where = np.array([[True], [False], [False]])
    fn = xj.softmax_cross_entropy_with_integer_labels
    got = xj.checked(fn)(z, labels, where=where)
    np.testing.assert_allclose(got, [np.log(4), 0.0, 0.0], rtol=1e-6)
    labels[0] = 5  # a row with included classes is checked
    with self.assertRaisesRegex(EAGER_ERROR, r"`labels` must be in \[0, 4\).*index \(0,\)"):
      xj.checked(fn)(z, labels, where=where)

  def test_ignore_index_and_weights_pass_through(self):
    z = np.array([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0], [1.0, 1.0, 3.0]], np.float32)
    labels, weights = np.array([2, -100, 0]), np.array([0.5, 2.0, 1.5], np.float32)
    fn = xj.softmax_cross_entropy_with_integer_labels
    z64 = z.astype(np.float64)
    log_p = z64 - np.log(np.sum(np.exp(z64), axis=-1, keepdims=True))
    expected = [-0.5 * log_p[0, 2], 0.0, -1.5 * log_p[2, 0]]  # torch: an ignored example is 0
    kwargs = dict(ignore_index=-100, weights=weights)
    np.testing.assert_allclose(xj.checked(fn)(z, labels, **kwargs), expected, rtol=1e-6)
    user_loss = xj.checked(lambda a, b: fn(a, b, **kwargs))
    np.testing.assert_allclose(user_loss(z, labels), expected, rtol=1e-6)
    padded = z.copy()
    padded[1] = [np.nan, np.inf, -np.inf]  # an ignored example is padding: never inspected
    np.testing.assert_allclose(xj.checked(fn)(padded, labels, **kwargs), expected, rtol=1e-6)
    padded[0, 0] = np.nan  # but a kept one is
    with self.assertRaisesRegex(EAGER_ERROR, r"`logits` must not contain NaN.*index \(0, 0\)"):
      xj.checked(fn)(padded, labels, **kwargs)
    labels[1] = -5  # not the ignore label: out of range
    with self.assertRaisesRegex(EAGER_ERROR, r"or labelled ignore_index=-100; .*index \(1,\)"):
      xj.checked(fn)(z, labels, **kwargs)

  def test_where_excluding_every_class(self):
    p = np.full((3, 2), 0.5, np.float32)
    where = np.array([[True, True], [True, True], [False, False]])
    pattern = _error_text(
      "entropy: `where` must include at least one class of every example", "(2,)", "0"
    )
    self._assert_raises(xj.entropy, (p,), pattern, under_jit=True, where=where)

  def test_sum_respects_where_and_tuple_axes(self):
    p = np.full((2, 2, 3), 1 / 6, np.float32)
    np.testing.assert_allclose(xj.checked(xj.entropy)(p, axis=(1, 2)), [np.log(6)] * 2, rtol=1e-6)
    with self.assertRaisesRegex(EAGER_ERROR, re.escape("must sum to 1 along axis -1")):
      xj.checked(xj.entropy)(p)
    where = np.array([True, True, False])  # 4 of the 6 classes: renormalised, 1.5 × 1/6
    got = xj.checked(xj.entropy)(p * 1.5, axis=(1, 2), where=where)
    np.testing.assert_allclose(got, [np.log(4)] * 2, rtol=1e-6)
    with self.assertRaisesRegex(EAGER_ERROR, r"sum = 0\.6666"):
      xj.checked(xj.entropy)(p, axis=(1, 2), where=where)

  def test_empty_batch_passes(self):
    got = xj.checked(xj.softmax_cross_entropy)(
      np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    )
    chex.assert_shape(got, (0,))

  def test_base_is_a_trace_time_error(self):
    for base in (0, -2.0, 1, 1.0):
      with self.assertRaisesRegex(ValueError, r"entropy: `base` must be finite, > 0 and != 1"):
        xj.checked(xj.entropy)(self._P, base=base)


def _lm_loss(hidden, weight, labels, bias, weights, where):
  """A language model's per-token loss: its output layer fused with the loss, -100 ignored."""
  return xj.linear_softmax_cross_entropy(
    hidden, weight, labels, bias=bias, weights=weights, where=where, ignore_index=-100
  )


def _largest_value(jaxpr) -> int:
  """The number of elements of the largest value in ``jaxpr``, sub-jaxprs included."""
  sizes = [0]
  for eqn in jaxpr.eqns:
    sizes += [int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape")]
    for param in eqn.params.values():
      for p in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(p, "jaxpr", p)
        if hasattr(inner, "eqns"):
          sizes.append(_largest_value(inner))
  return max(sizes)


_LABEL_RULE = (
  "must be in [0, 5) except in examples fully excluded by `where` or labelled ignore_index=-100"
)


class CheckedLinearCrossEntropyTest(chex.TestCase):
  """checked(linear_softmax_cross_entropy) and of a loss calling it: labels, hidden rows and
  token weights of the included tokens, the whole weight and bias; never [N, V]."""

  def _valid(self):
    """Tokens [2, 3], D = 4, V = 5: token (0, 2) ignored, token (1, 1) excluded by `where`,
    both holding values that the checks must not inspect."""
    rng = np.random.default_rng(7)
    hidden = rng.normal(size=(2, 3, 4)).astype(np.float32)
    weight = rng.normal(size=(4, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, size=(2, 3)).astype(np.float32)
    labels = np.array([[0, 4, -100], [2, 7, 1]])
    where = np.array([[True, True, True], [True, False, True]])
    hidden[0, 2], weights[0, 2] = np.inf, np.nan  # ignored token
    hidden[1, 1], weights[1, 1] = np.nan, -3.0  # excluded token, whose label 7 ≥ V
    return dict(
      hidden=hidden, weight=weight, labels=labels, bias=bias, weights=weights, where=where
    )

  def test_valid_inputs_give_the_unchecked_result(self):
    arrays = self._valid()
    expected = jax.jit(_lm_loss)(**arrays)
    self.assertTrue(np.all(np.isfinite(expected)))
    np.testing.assert_array_equal(expected[[0, 1], [2, 1]], [0.0, 0.0])
    np.testing.assert_array_equal(xj.checked(jax.jit(_lm_loss))(**arrays), expected)
    hidden, weight, labels = arrays.pop("hidden"), arrays.pop("weight"), arrays.pop("labels")
    fn = xj.checked(xj.linear_softmax_cross_entropy)
    got = fn(hidden, weight, labels, **arrays, ignore_index=-100)
    np.testing.assert_array_equal(got, expected)

  def test_valid_gradients_give_the_unchecked_result(self):
    grad = jax.jit(jax.grad(lambda *a: _lm_loss(*a).mean(), argnums=(0, 1, 3)))
    arrays = self._valid()
    expected = grad(*arrays.values())
    chex.assert_trees_all_equal(xj.checked(grad)(*arrays.values()), expected)
    np.testing.assert_array_equal(expected[0][[0, 1], [2, 1]], 0.0)  # ignored, excluded rows

  @parameterized.named_parameters(
    ("label_too_large", "labels", (1, 2), 5, _LABEL_RULE),
    ("label_negative", "labels", (0, 0), -1, _LABEL_RULE),
    ("hidden_nan", "hidden", (1, 2, 3), np.nan, "must not contain NaN"),
    ("hidden_inf", "hidden", (0, 1, 0), -np.inf, "must be finite"),
    ("weight_nan", "weight", (3, 4), np.nan, "must not contain NaN"),
    ("weight_inf", "weight", (0, 2), np.inf, "must be finite"),
    ("bias_inf", "bias", (2,), -np.inf, "must be finite"),
    ("weights_negative", "weights", (1, 0), -0.5, "must be ≥ 0"),
    ("weights_inf", "weights", (0, 1), np.inf, "must be finite"),
    ("weights_nan", "weights", (1, 2), np.nan, "must not contain NaN"),
  )
  def test_each_invalid_value_raises_one_line(self, arg, index, bad, rule):
    arrays = self._valid()
    arrays[arg][index] = bad
    with self.assertRaises(EAGER_ERROR) as raised:
      xj.checked(jax.jit(_lm_loss))(**arrays)
    at = f"({index[0]},)" if len(index) == 1 else str(index)
    kind, value = ("example", "label") if arg == "labels" else ("entry", "value")
    self.assertEqual(
      str(raised.exception),
      f"linear_softmax_cross_entropy: `{arg}` {rule}; first offending {kind} at index {at}: "
      f"{value} = {bad:.8g} (inside _lm_loss)",
    )

  def test_the_fused_loss_itself_also_under_an_outer_jit(self):
    hidden, weight = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    fn = xj.checked(xj.linear_softmax_cross_entropy)
    np.testing.assert_allclose(fn(hidden, weight, np.array([0, 3])), [np.log(4)] * 2, rtol=1e-6)
    label_rule = _error_text(
      "linear_softmax_cross_entropy: `labels` must be in [0, 4)", "(1,)", "4"
    )
    self._raises_also_under_jit(fn, (hidden, weight, np.array([0, 4])), label_rule)
    hidden[0, 0] = np.nan
    nan_rule = _error_text(
      "linear_softmax_cross_entropy: `hidden` must not contain NaN", "(0, 0)", "nan"
    )
    self._raises_also_under_jit(fn, (hidden, weight, np.array([0, 1])), nan_rule)

  def _raises_also_under_jit(self, fn, args, pattern):
    with self.assertRaisesRegex(EAGER_ERROR, "^" + pattern + "$"):
      fn(*args)
    with self.assertRaisesRegex(JIT_ERROR, pattern):
      jax.block_until_ready(jax.jit(fn)(*args))

  def test_checks_form_nothing_of_size_tokens_times_classes(self):
    num_tokens, dim, num_classes = 64, 8, 32
    loss = lambda h, w, y: xj.linear_softmax_cross_entropy(h, w, y, chunk_size=16).mean()
    args = (jnp.ones((num_tokens, dim)), jnp.ones((dim, num_classes)), jnp.zeros(num_tokens, int))
    traced = jax.make_jaxpr(xj.checked(jax.value_and_grad(loss, argnums=(0, 1))))(*args)
    self.assertLess(_largest_value(traced.jaxpr), num_tokens * num_classes)
    self.assertGreaterEqual(_largest_value(traced.jaxpr), 16 * num_classes)  # a chunk's logits

  def test_unchecked_program_is_the_undecorated_function(self):
    """Outside `checked` the decorator adds nothing: the program of the function as written."""
    spec = _measures.spec_of(xj.linear_softmax_cross_entropy)
    hidden, weight, labels = jnp.ones((8, 4)), jnp.ones((4, 16)), jnp.arange(8)

    def program(fn):
      loss = lambda h, w: fn(h, w, labels, where=labels < 6).mean()
      return str(jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(hidden, weight))

    self.assertEqual(program(xj.linear_softmax_cross_entropy), program(spec.fn))


class AcceleratorOnlyTest(chex.TestCase):
  """Without JAX's CPU backend (``JAX_PLATFORMS=cuda``), which host callbacks need: simulated
  here by reporting the CPU backend missing."""

  _P = np.array([0.5, 0.5], np.float32)
  _Q = np.array([0.25, 0.75], np.float32)

  def setUp(self):
    super().setUp()
    no_cpu = mock.patch.object(_core, "has_cpu_backend", return_value=False)
    no_cpu.start()
    self.addCleanup(no_cpu.stop)

  def test_eager_calls_need_no_host_callback(self):
    expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    np.testing.assert_allclose(xj.checked(xj.kl_divergence)(self._P, self._Q), expected, rtol=1e-6)
    with self.assertRaisesRegex(EAGER_ERROR, "`q` must sum to 1"):
      xj.checked(xj.kl_divergence)(self._P, self._P + 0.1)
    np.testing.assert_allclose(
      xj.checked(_user_loss)(self._Q, self._P), _user_loss(self._Q, self._P)
    )

  def test_under_transformations_one_line_says_how_to_enable_it(self):
    for name, call in (
      ("kl_divergence", lambda: jax.jit(xj.checked(xj.kl_divergence))(self._P, self._Q)),
      ("kl_divergence", lambda: jax.grad(xj.checked(xj.kl_divergence), 1)(self._P, self._Q)),
      ("_user_loss", lambda: jax.vmap(xj.checked(_user_loss))(self._Q[None], self._P[None])),
    ):
      with self.assertRaises(RuntimeError) as raised:  # at trace time, valid input or not
        call()
      message = str(raised.exception)
      self.assertEqual(len(message.splitlines()), 1, message)
      self.assertStartsWith(message, f"checked({name}): under jax.jit, jax.vmap or jax.grad")
      self.assertRegex(message, r"needs JAX's CPU backend.*run with JAX_PLATFORMS=\S+,cpu")


class SumToleranceTest(chex.TestCase):
  """|sum - 1| just inside the documented tolerance passes, just outside fails."""

  @parameterized.product(dtype=DTYPES, num_classes=(1, 7), side=(-1, 1), inside=(True, False))
  def test_edges(self, dtype, num_classes, side, inside):
    tol = sum_tolerance(dtype, num_classes)
    self.assertLess(tol, 1e-4 if dtype == np.float32 else 1e-13)
    if side == 1 and num_classes == 1:
      self.skipTest("a single class above 1 is a probability > 1, not a sum error")
    p = 2.0 ** -np.arange(1, num_classes + 1)
    p[-1] *= 2  # dyadic: the sum is exactly 1 in any dtype
    p[-1] += side * tol * (0.9 if inside else 1.1)
    p = p.astype(dtype)
    total = float(jnp.sum(jnp.asarray(p)))  # the sum as the check computes it
    self.assertEqual(abs(total - 1) <= tol, inside)  # the edge survives rounding
    wrapped = xj.checked(xj.entropy)
    if inside:
      p64 = p.astype(np.float64)
      np.testing.assert_allclose(wrapped(p), -np.sum(p64 * np.log(p64)), rtol=1e-5)
    else:
      with self.assertRaisesRegex(EAGER_ERROR, "`probs` must sum to 1"):
        wrapped(p)

  def test_dtype_aware(self):
    f32, f16, bf16 = (sum_tolerance(d, 10) for d in (np.float32, np.float16, jnp.bfloat16))
    self.assertAlmostEqual(f32, 2 * 2**-23 + 8 * 2**-23 * np.sqrt(10))
    self.assertAlmostEqual(bf16, 2 * 2**-7 + 8 * 2**-23 * np.sqrt(10))
    self.assertLess(f32, f16)
    self.assertLess(f16, bf16)
    self.assertLess(sum_tolerance(np.float64, 10), 1e-14)

  def test_honest_distributions_pass(self):
    """Softmax outputs, x / x.sum() in float32, and their bfloat16 roundings."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(4, 1000)) * 5
    softmax = np.exp(z - z.max(-1, keepdims=True)).astype(np.float32)
    softmax /= softmax.sum(-1, keepdims=True)
    for p in (softmax, _dirichlet(rng, (4, 1000), np.float32)):
      for dtype in (np.float32, jnp.bfloat16):
        p_low = jnp.asarray(p).astype(dtype)
        p64 = np.asarray(p_low, np.float64)
        expected = -np.sum(p64 * np.log(np.where(p64 > 0, p64, 1)), axis=-1)
        np.testing.assert_allclose(xj.checked(xj.entropy)(p_low), expected, rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
