"""Tests for xent_jax.training and xent_jax.optimum: steps vs hand-written updates, scan vs
Python loops, vmap vs single runs, and training that reaches the float64 reference optimum."""

import functools
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from xent_jax import _core, data, models, optimum, training

jax.config.update("jax_numpy_rank_promotion", "raise")

X64 = jax.config.jax_enable_x64
RTOL = 1e-12 if X64 else 2e-5
OPTIMUM_RTOL = 1e-6  # SPEC §3: final objective within 1e-6 (relative) of the optimum.

LOGISTIC_LOSS = models.logistic_regression_loss
SOFTMAX_LOSS = models.softmax_regression_loss
# Static arguments shared between tests, so that a whole run compiles once per module; the
# counted loss fails if any of those runs traces it a second time.
COUNTED_LOGISTIC_LOSS = chex.assert_max_traces(LOGISTIC_LOSS, n=1)
MOMENTUM_SGD = training.sgd(1.0, momentum=0.9)
MINIBATCH_SGD = training.sgd(0.2)
SYNTHETIC_STEPS = 200


@functools.cache
def _synthetic():
  return data.make_logistic_data(0, 2000, 500, 5)


@functools.cache
def _small_softmax():
  return data.make_softmax_data(1, 96, 8, 4, 3)


def _fresh_state(params, optimizer):
  return training.init_train_state(params, optimizer)


def _train_synthetic():
  state = _fresh_state(models.init_logistic_regression(5), MOMENTUM_SGD)
  return training.train_full_batch(
    state,
    _synthetic().train,
    loss_fn=COUNTED_LOGISTIC_LOSS,
    optimizer=MOMENTUM_SGD,
    num_steps=SYNTHETIC_STEPS,
  )


# Read by the loss _reads_a_global() makes, as a loss defined in a script's sweep loop reads
# the loop variable (a module global there).
_SWEEP_PENALTY = 0.0


def _reads_a_global():
  def loss(params, x, y):
    return LOGISTIC_LOSS(params, x, y) + _SWEEP_PENALTY * jnp.sum(jnp.square(params["w"]))

  return loss


def _rel_gap(value, reference):
  return (value - reference) / abs(reference)


class TrainStepTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_sgd_step_is_gradient_descent_with_the_closed_form_gradient(self):
    batch = _synthetic().train
    params = models.init_logistic_regression(5, key=jax.random.key(2), scale=0.5)
    opt = training.sgd(0.3)
    step = self.variant(
      functools.partial(training.train_step, loss_fn=LOGISTIC_LOSS, optimizer=opt)
    )
    state, metrics = step(training.init_train_state(params, opt), batch)
    grad = models.logistic_regression_grad(params, *batch)
    expected = jax.tree.map(lambda p, g: p - 0.3 * g, params, grad)
    chex.assert_trees_all_close(state.params, expected, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(metrics["loss"], LOGISTIC_LOSS(params, *batch), rtol=RTOL)
    grad_norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grad)))
    np.testing.assert_allclose(metrics["grad_norm"], grad_norm, rtol=RTOL)
    self.assertEqual(int(state.step), 1)

  def test_jitted_step_does_not_retrace(self):
    opt = training.sgd(0.1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch):
      return training.train_step(state, batch, loss_fn=LOGISTIC_LOSS, optimizer=opt)

    state = training.init_train_state(models.init_logistic_regression(5), opt)
    batch = _synthetic().train
    for _ in range(3):
      state, _ = step(state, batch)
    self.assertEqual(int(state.step), 3)

  def test_whole_run_is_compiled_once_and_donates_only_when_asked(self):
    state = _fresh_state(models.init_logistic_regression(5), MOMENTUM_SGD)
    run = functools.partial(
      training.train_full_batch,
      batch=_synthetic().train,
      loss_fn=COUNTED_LOGISTIC_LOSS,
      optimizer=MOMENTUM_SGD,
      num_steps=SYNTHETIC_STEPS,
    )
    kept, _ = run(state)  # COUNTED_LOGISTIC_LOSS raises if any of these runs retraces.
    self.assertFalse(state.params["w"].is_deleted())
    donated, _ = run(state, donate=True)
    self.assertTrue(state.params["w"].is_deleted())
    chex.assert_trees_all_equal(kept.params, donated.params)

  def test_donating_a_state_that_holds_one_array_twice(self):
    # Tied weights: one array under two names ("Attempt to donate the same buffer twice").
    dtype = jnp.zeros(()).dtype
    w = jnp.full((5,), 0.1, dtype)
    opt, batch = training.sgd(0.5), _synthetic().train

    def tied_loss(params, x, y):
      return LOGISTIC_LOSS({"w": params["enc"] + params["dec"], "b": params["b"]}, x, y)

    runs = []
    for donate in (False, True):
      state = training.init_train_state({"enc": w, "dec": w, "b": jnp.zeros((), dtype)}, opt)
      run = training.train_full_batch
      runs.append(run(state, batch, loss_fn=tied_loss, optimizer=opt, num_steps=3, donate=donate))
    # Oracle: the run that donates nothing.
    chex.assert_trees_all_equal(runs[0], runs[1])


class SweepTest(chex.TestCase):
  """SPEC §8: the caller's arrays survive every call; equal settings compile once."""

  def test_one_state_reused_across_a_sweep(self):
    batch, key = _small_softmax().train, jax.random.key(0)
    params = models.init_softmax_regression(4, 3)
    state = training.init_train_state(params, MINIBATCH_SGD)
    run = dict(loss_fn=SOFTMAX_LOSS, num_epochs=3, batch_size=40)  # compiled once per module
    finals = []
    for learning_rate in (0.1, 0.2, 0.4):
      opt = training.sgd(learning_rate)
      final, _ = training.train_minibatch(state, batch, key, optimizer=opt, **run)
      finals.append(final.params["w"])
    self.assertFalse(any(leaf.is_deleted() for leaf in jax.tree.leaves((params, state, batch))))
    # Oracle: the same run from a state built afresh (identity), at the last rate.
    fresh = training.init_train_state(jax.tree.map(jnp.array, params), opt)
    final, _ = training.train_minibatch(fresh, batch, key, optimizer=opt, **run)
    np.testing.assert_array_equal(finals[-1], final.params["w"])
    self.assertGreater(float(jnp.max(jnp.abs(finals[0] - finals[-1]))), 1e-3)  # η matters

  def test_state_of_another_sgd_trains_with_the_given_rates(self):
    batch, params = _small_softmax().train, models.init_softmax_regression(4, 3)
    run = dict(loss_fn=SOFTMAX_LOSS, num_steps=3)
    # (optimiser that built the state, optimiser passed): an integer η or μ = 0 in the state
    # must not truncate or drop the η and μ passed.
    for built, passed in (
      (training.sgd(1), training.sgd(0.5)),
      (training.sgd(0.5, momentum=0), training.sgd(0.5, momentum=0.9)),
    ):
      _, got = training.train_full_batch(
        training.init_train_state(params, built), batch, optimizer=passed, **run
      )
      # Oracle: the same run from a state the passed optimiser built.
      _, want = training.train_full_batch(
        training.init_train_state(params, passed), batch, optimizer=passed, **run
      )
      np.testing.assert_array_equal(got["loss"], want["loss"])
      self.assertLess(float(got["loss"][-1]), float(got["loss"][0]))

  def test_state_of_another_optimiser_is_refused(self):
    batch, params = _small_softmax().train, models.init_softmax_regression(4, 3)
    for built, passed in (
      (training.sgd(0.5), training.sgd(0.5, momentum=0.9)),  # would silently drop μ
      (training.sgd(0.5, momentum=0.9), training.sgd(0.5)),
      (training.sgd(0.5), optax.adam(1e-2)),
    ):
      state = training.init_train_state(params, built)
      message = r"`state.opt_state` was not made by `optimizer`"
      with self.assertRaisesRegex(ValueError, message):
        training.train_full_batch(state, batch, loss_fn=SOFTMAX_LOSS, optimizer=passed, num_steps=1)
      with self.assertRaisesRegex(ValueError, message):
        training.train_step(state, batch, loss_fn=SOFTMAX_LOSS, optimizer=passed)

  def test_learning_rate_and_l2_sweep_compiles_once(self):
    batch, params = _small_softmax().train, models.init_softmax_regression(4, 3)
    # l2 as a sweep writes it: an int 0 first, then floats of several types; one program.
    l2s = [0, np.float32(1e-3), jnp.asarray(2e-3)] + [1e-3 * i for i in range(3, 8)]
    losses = []
    # _l2_penalty runs once per trace of a models loss, never per step. (num_steps=2 with
    # momentum 0.5 is this test's own program: no other test compiles it first.)
    with mock.patch.object(models, "_l2_penalty", wraps=models._l2_penalty) as traces:
      for i, l2 in enumerate(l2s):
        # Fresh, equal objects every time: a new optimiser, a new partial with a new l2.
        opt = training.sgd(0.05 * (i + 1), momentum=0.5)
        loss_fn = functools.partial(SOFTMAX_LOSS, l2=l2)
        _, m = training.train_full_batch(
          training.init_train_state(params, opt), batch, loss_fn=loss_fn, optimizer=opt, num_steps=2
        )
        expected = optimum.softmax_regression_objective(params, *batch, l2=float(l2))
        np.testing.assert_allclose(m["loss"][0], expected, rtol=RTOL)  # l2 really is this run's
        losses.append(m["loss"][-1])
    self.assertEqual(traces.call_count, 1)
    self.assertEqual(len(set(np.asarray(losses).tolist())), 8)  # eight different runs

  def test_partial_with_an_array_keyword_the_loss_reads_as_numpy(self):
    """An array keyword is traced (a sweep compiles once); a loss that needs its value while
    traced (here np.asarray) gets it as a constant instead, and an equal partial built again
    compiles nothing new."""
    batch, params, traces = _synthetic().train, models.init_logistic_regression(5), []

    def weighted_loss(params, x, y, *, class_weights):
      traces.append(1)
      weights = np.asarray(class_weights, np.float32)  # needs the value: not traceable
      return LOGISTIC_LOSS(params, x, y) * float(weights[1] / weights[0])

    opt, runs = training.sgd(0.5), []
    for _ in range(2):  # equal partials, built afresh
      loss_fn = functools.partial(weighted_loss, class_weights=jnp.array([1.0, 3.0]))
      state = training.init_train_state(params, opt)
      runs.append(
        training.train_full_batch(state, batch, loss_fn=loss_fn, optimizer=opt, num_steps=3)[1]
      )
      num_traces = len(traces)
    self.assertEqual(len(traces), num_traces)  # the second run traced nothing
    # Oracle: three times the library loss, trained with three times the step.
    state = training.init_train_state(params, training.sgd(1.5))
    _, want = training.train_full_batch(
      state, batch, loss_fn=LOGISTIC_LOSS, optimizer=training.sgd(1.5), num_steps=3
    )
    for got in runs:
      np.testing.assert_allclose(got["loss"], 3 * want["loss"], rtol=10 * RTOL)

  def test_a_loss_wrapping_a_models_loss_is_a_user_loss(self):
    """Recognised by identity, not by functools.wraps: a user loss wearing a models loss's
    name gets feature-major features as [N, D] rows, like any user loss."""
    batch, opt = _synthetic().train, training.sgd(0.1)

    @functools.wraps(LOGISTIC_LOSS)
    def squared_error(params, x, y):  # reads x as [N, D]: x @ w
      return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))

    params = models.init_logistic_regression(5, key=jax.random.key(6), scale=0.5)
    runs = [
      training.train_full_batch(
        training.init_train_state(params, opt),
        (x, batch.y),
        loss_fn=squared_error,
        optimizer=opt,
        num_steps=2,
      )[1]["loss"]
      for x in (batch.x, data.feature_major(batch.x))
    ]
    x64, w64 = np.asarray(batch.x, np.float64), np.asarray(params["w"], np.float64)
    first = np.mean(np.square(x64 @ w64 - np.asarray(batch.y)))  # b = 0
    np.testing.assert_allclose(runs[0][0], first, rtol=10 * RTOL)
    np.testing.assert_allclose(runs[1], runs[0], rtol=RTOL)
    state = training.init_train_state(params, opt)
    _, m = training.train_step(
      state, (data.feature_major(batch.x), batch.y), loss_fn=squared_error, optimizer=opt
    )
    np.testing.assert_allclose(m["loss"], first, rtol=10 * RTOL)

  def test_a_loss_sees_the_values_it_reads_at_each_call(self):
    """A new loss object that reads a module global, a list or a numpy array changed since
    the last call trains with their values now: compared by value where it can be (the
    global), by identity where it cannot (a list, read through len), as jax.jit does."""
    global _SWEEP_PENALTY
    batch, opt = _synthetic().train, training.sgd(0.5)
    params = models.init_logistic_regression(5, key=jax.random.key(3), scale=0.5)
    objective = optimum.logistic_regression_objective(params, *batch)
    square = float(np.sum(np.square(np.asarray(params["w"], np.float64))))
    log, scales = [], np.ones(100)

    def run(loss_fn):
      state = training.init_train_state(params, opt)
      return training.train_full_batch(state, batch, loss_fn=loss_fn, optimizer=opt, num_steps=2)

    with mock.patch.object(models, "_l2_penalty", wraps=models._l2_penalty) as traces:
      for penalty in (0.0, 1.0, 0.0):
        _SWEEP_PENALTY = penalty
        _, m = run(_reads_a_global())
        # Oracle: the float64 objective at the initial parameters, plus the penalty.
        np.testing.assert_allclose(m["loss"][0], objective + penalty * square, rtol=RTOL)
      self.assertEqual(traces.call_count, 2)  # the third value is the first one's program
    for n in (1, 2):
      log.append(n)
      scales[0] = n
      for loss_fn in (
        lambda p, x, y: LOGISTIC_LOSS(p, x, y) * len(log),
        lambda p, x, y: LOGISTIC_LOSS(p, x, y) * scales[0],
      ):
        _, m = run(loss_fn)
        np.testing.assert_allclose(m["loss"][0], n * objective, rtol=RTOL)

  def test_equal_optax_optimisers_share_a_compilation(self):
    batch, params, traces = _small_softmax().train, models.init_softmax_regression(4, 3), []

    def loss_fn(p, x, y):
      traces.append(1)  # once per trace
      return SOFTMAX_LOSS(p, x, y)

    finals = []
    for _ in range(2):
      opt = optax.adam(1e-2)  # a new object, equal in value to the previous one
      state, _ = training.train_full_batch(
        training.init_train_state(params, opt), batch, loss_fn=loss_fn, optimizer=opt, num_steps=2
      )
      finals.append(state.params)
    self.assertLen(traces, 1)
    chex.assert_trees_all_equal(*finals)


class CallersJitTest(chex.TestCase):
  def test_values_unchecked_under_a_callers_jit_shapes_and_dtypes_checked(self):
    batch, opt = _small_softmax().train, MINIBATCH_SGD
    state = training.init_train_state(models.init_softmax_regression(4, 3), opt)
    run = lambda x, y: training.train_full_batch(
      state, (x, y), loss_fn=SOFTMAX_LOSS, optimizer=opt, num_steps=2
    )
    # Traced data: the value checks step aside (they would fail on tracers), shapes pass.
    _, metrics = jax.eval_shape(run, *batch)
    self.assertEqual(metrics["loss"].shape, (2,))
    with self.assertRaisesRegex(TypeError, "train_full_batch: `y_N` must hold integer class"):
      jax.eval_shape(run, batch.x, batch.y.astype(jnp.float32))


class ProgressTest(chex.TestCase):
  def test_hook_is_called_every_k_steps_with_the_loss(self):
    batch, opt = _small_softmax().train, MINIBATCH_SGD
    reports = []
    state = training.init_train_state(models.init_softmax_regression(4, 3), opt)
    _, metrics = training.train_minibatch(
      state,
      batch,
      jax.random.key(1),
      loss_fn=SOFTMAX_LOSS,
      optimizer=opt,
      num_epochs=3,
      batch_size=40,  # 2 minibatches an epoch: 6 steps
      log_every=4,
      hook=reports.append,
    )
    self.assertEqual([(r.step, r.num_steps) for r in reports], [(4, 6), (6, 6)])  # k·4 and n
    losses = np.asarray(metrics["loss"]).ravel()  # [E, M] → steps 1..6
    np.testing.assert_allclose([r.loss for r in reports], losses[[3, 5]], rtol=RTOL)
    elapsed = [r.elapsed_s for r in reports]
    self.assertEqual(elapsed, sorted(elapsed))
    self.assertGreaterEqual(elapsed[0], 0.0)

  def test_elapsed_is_measured_when_the_run_executes_also_under_a_callers_jit(self):
    """A fake host clock that the hook advances by 1 s per report: each execution of the
    compiled run is timed from its own start (0, 1, 2 s), not from when it was traced."""
    batch, opt = _small_softmax().train, MINIBATCH_SGD
    state = training.init_train_state(models.init_softmax_regression(4, 3), opt)
    clock_ns, reports = [10**12], []

    def hook(progress):
      reports.append(progress.elapsed_s)
      clock_ns[0] += 10**9

    run = jax.jit(
      lambda s: training.train_full_batch(
        s, batch, loss_fn=SOFTMAX_LOSS, optimizer=opt, num_steps=3, log_every=1, hook=hook
      )
    )
    with mock.patch.object(training.time, "monotonic_ns", lambda: clock_ns[0]):
      for _ in range(2):  # traced once, executed twice
        jax.block_until_ready(run(state))
        jax.effects_barrier()
    self.assertEqual(reports, [0.0, 1.0, 2.0] * 2)

  def test_no_callback_in_the_program_when_off(self):
    batch, opt = _small_softmax().train, MINIBATCH_SGD
    state = training.init_train_state(models.init_softmax_regression(4, 3), opt)

    def program(**kwargs):
      run = lambda s: training.train_full_batch(
        s, batch, loss_fn=SOFTMAX_LOSS, optimizer=opt, num_steps=3, **kwargs
      )
      return str(jax.make_jaxpr(run)(state))

    self.assertNotIn("callback", program())
    self.assertIn("debug_callback", program(log_every=2, hook=lambda p: None))

  def test_without_a_cpu_backend_one_line_says_how_to_enable_it(self):
    """Host callbacks need JAX's CPU backend (missing with JAX_PLATFORMS=cuda): simulated."""
    batch, opt = _small_softmax().train, MINIBATCH_SGD
    state = training.init_train_state(models.init_softmax_regression(4, 3), opt)
    run = dict(loss_fn=SOFTMAX_LOSS, optimizer=opt, num_steps=2)
    with mock.patch.object(_core, "has_cpu_backend", return_value=False):
      with self.assertRaisesRegex(
        RuntimeError, r"^train_full_batch: `log_every` .* run with JAX_PLATFORMS=\S+,cpu"
      ):
        training.train_full_batch(state, batch, log_every=1, **run)
      training.train_full_batch(state, batch, **run)  # no progress reports: no callback


class WholeRunTest(chex.TestCase):
  def test_full_batch_run_is_the_heavy_ball_recursion_with_the_closed_form_gradient(self):
    state, metrics = _train_synthetic()
    batch = _synthetic().train

    @jax.jit
    def heavy_ball(params, velocity):  # v ← μ v + g(θ);  θ ← θ - η v  (optax.sgd's momentum)
      grad = models.logistic_regression_grad(params, *batch)
      velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, grad)
      new_params = jax.tree.map(lambda p, v: p - 1.0 * v, params, velocity)
      return new_params, velocity, LOGISTIC_LOSS(params, *batch)

    params = models.init_logistic_regression(5)
    velocity, losses = jax.tree.map(jnp.zeros_like, params), []
    for _ in range(SYNTHETIC_STEPS):
      params, velocity, loss = heavy_ball(params, velocity)
      losses.append(loss)
    chex.assert_shape(metrics["loss"], (SYNTHETIC_STEPS,))
    chex.assert_trees_all_close(state.params, params, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=RTOL)
    self.assertEqual(int(state.step), SYNTHETIC_STEPS)

  def test_minibatch_epochs_equal_a_python_loop_over_shuffled_batches(self):
    batch, opt = _small_softmax().train, MINIBATCH_SGD
    key, params = jax.random.key(3), models.init_softmax_regression(4, 3)
    state, metrics = training.train_minibatch(
      _fresh_state(params, opt),
      batch,
      key,
      loss_fn=SOFTMAX_LOSS,
      optimizer=opt,
      num_epochs=3,
      batch_size=40,
    )
    chex.assert_shape(metrics["loss"], (3, 2))  # 96 // 40 = 2 batches, 16 examples skipped

    @jax.jit
    def gradient_descent(params, x, y):
      grad = models.softmax_regression_grad(params, x, y)
      return jax.tree.map(lambda p, g: p - 0.2 * g, params, grad), SOFTMAX_LOSS(params, x, y)

    losses = []
    for epoch_key in jax.random.split(key, 3):
      order = np.asarray(jax.random.permutation(epoch_key, 96))
      for m in range(2):
        idx = order[40 * m : 40 * (m + 1)]
        params, loss = gradient_descent(params, batch.x[idx], batch.y[idx])
        losses.append(loss)
    chex.assert_trees_all_close(state.params, params, rtol=10 * RTOL, atol=10 * RTOL)
    np.testing.assert_allclose(metrics["loss"].ravel(), losses, rtol=10 * RTOL)

  def test_vmap_over_seeds_equals_single_runs_and_compiles_once(self):
    batch, opt = _small_softmax().train, MINIBATCH_SGD
    keys = jax.random.split(jax.random.key(4), 3)
    counted = chex.assert_max_traces(SOFTMAX_LOSS, n=1)  # fails on a second trace
    run = dict(optimizer=opt, num_epochs=3, batch_size=40)
    for learning_rate in (0.05, 0.1, 0.15, 0.2):  # η = 0.2 = MINIBATCH_SGD's is checked below
      # Fresh objects per call, equal in value: a lambda, a partial, an optimiser.
      init_fn = lambda key: models.init_softmax_regression(4, 3, key=key, scale=0.5)
      states, metrics = training.train_seeds(
        keys,
        batch,
        init_fn=init_fn,
        loss_fn=functools.partial(counted),
        optimizer=training.sgd(learning_rate),
        num_epochs=3,
        batch_size=40,
      )
    run["loss_fn"] = SOFTMAX_LOSS
    chex.assert_shape(states.params["w"], (3, 4, 3))
    chex.assert_shape(metrics["loss"], (3, 3, 2))
    for s, key in enumerate(keys):
      init_key, shuffle_key = jax.random.split(key)
      state, m = training.train_minibatch(
        _fresh_state(init_fn(init_key), opt), batch, shuffle_key, **run
      )
      run_s = jax.tree.map(lambda a, s=s: a[s], (states.params, metrics))
      chex.assert_trees_all_close(run_s, (state.params, m), rtol=RTOL, atol=RTOL)
    # Different seeds really are different runs.
    self.assertGreater(float(jnp.max(jnp.abs(states.params["w"][0] - states.params["w"][1]))), 0)

  def test_seeds_with_an_optimiser_state_holding_the_params(self):
    """SPEC §8: the run donates only buffers the library made. An optimiser whose state is
    the params themselves (as proximal and schedule-free ones hold them), and an init_fn
    returning the caller's params, neither fail nor delete the caller's arrays."""
    batch, params = _small_softmax().train, models.init_softmax_regression(4, 3)

    def anchored_sgd(learning_rate, strength):  # gradient + strength · (θ - θ_0)
      def update(grads, anchor, params):
        pull = lambda g, p, a: -learning_rate * (g + strength * (p - a))
        return jax.tree.map(pull, grads, params, anchor), anchor

      return optax.GradientTransformation(lambda params: params, update)

    opt = anchored_sgd(0.5, 0.1)
    states, metrics = training.train_seeds(
      jax.random.split(jax.random.key(7), 2),
      batch,
      init_fn=lambda key: params,
      loss_fn=SOFTMAX_LOSS,
      optimizer=opt,
      num_epochs=3,
    )
    self.assertFalse(any(leaf.is_deleted() for leaf in jax.tree.leaves(params)))
    # Oracle: the same run alone (each seed starts from the same params: equal runs).
    alone, m = training.train_full_batch(
      training.init_train_state(params, opt),
      batch,
      loss_fn=SOFTMAX_LOSS,
      optimizer=opt,
      num_steps=3,
    )
    for s in range(2):
      run_s = jax.tree.map(lambda a, s=s: a[s], (states.params, metrics))
      chex.assert_trees_all_close(run_s, (alone.params, m), rtol=RTOL, atol=RTOL)
    self.assertLess(float(m["loss"][-1]), float(m["loss"][0]))


class ReferenceOptimumTest(chex.TestCase):
  def test_the_optimum_does_not_depend_on_feature_scale_and_offset(self):
    """J(w, b) on X·diag(s) + c is J(s·w, b + c·w) on X (λ = 0): the same optimum value. (In
    raw coordinates scipy stopped 4.8% above it with features scaled by 1e4 and 1e-4.)"""
    scale, offset = np.array([1e4, 1e-4, 1.0, 1.0, 1.0]), np.array([0.0, 0.0, 1000.0, 0, 0])
    x, y = (np.asarray(a, np.float64) for a in _synthetic().train)
    want = optimum.logistic_regression_optimum(x, y).value
    got = optimum.logistic_regression_optimum(x * scale + offset, y).value
    self.assertBetween(_rel_gap(got, want), -1e-10, 1e-10)
    x, y = (np.asarray(a) for a in data.make_softmax_data(0, 3000, 5, 5, 4).train)
    x = x.astype(np.float64)  # not separable: the unpenalised optimum exists
    want = optimum.softmax_regression_optimum(x, y, 5).value
    got = optimum.softmax_regression_optimum(x * scale + offset, y, 5).value
    self.assertBetween(_rel_gap(got, want), -1e-10, 1e-10)


class ReachesTheOptimumTest(chex.TestCase):
  """Full-batch SGD with (heavy-ball) momentum reaches the float64 L-BFGS optimum.

  The gap is measured with the float64 numpy objective evaluated at the trained parameters
  (:mod:`xent_jax.optimum`): in float32 the objective itself rounds at ~1e-7 relative, but
  the float32 parameters get close enough to the optimum for a float64 gap below 1e-6.
  Steps are about twice what the runs need to get within 1e-6 (93, 197 and 148).
  """

  def _check_reaches(self, params, metrics, reference, objective):
    chex.assert_tree_all_finite((params, metrics))
    self.assertLess(reference.grad_max_abs, 1e-8)  # the reference is a stationary point
    value = objective(params)
    self.assertBetween(_rel_gap(value, reference.value), -1e-12, OPTIMUM_RTOL)
    # The float64 numpy objective agrees with the JAX loss before the last step (up to that
    # step's decrease, and float32 rounding).
    np.testing.assert_allclose(metrics["loss"][-1], value, rtol=1e-8 if X64 else 1e-5)

  def _train(self, params, batch, loss_fn, num_steps, learning_rate):
    opt = training.sgd(learning_rate, momentum=0.9)
    state, metrics = training.train_full_batch(
      _fresh_state(params, opt), batch, loss_fn=loss_fn, optimizer=opt, num_steps=num_steps
    )
    return state.params, metrics

  def test_synthetic_unpenalised(self):
    dataset = _synthetic()
    reference = optimum.logistic_regression_optimum(*dataset.train)  # exists: not separable
    state, metrics = _train_synthetic()
    objective = lambda p: optimum.logistic_regression_objective(p, *dataset.train)
    self._check_reaches(state.params, metrics, reference, objective)
    # With N = 400 D the maximum-likelihood fit estimates the true model (±5 std. errors).
    chex.assert_trees_all_close(state.params, dataset.true_params, atol=0.25)

  def test_breast_cancer_l2(self):
    l2, dataset = 1e-3, data.load_breast_cancer()
    reference = optimum.logistic_regression_optimum(*dataset.train, l2=l2)
    loss_fn = functools.partial(LOGISTIC_LOSS, l2=l2)
    params, metrics = self._train(
      models.init_logistic_regression(30), dataset.train, loss_fn, num_steps=400, learning_rate=2.0
    )
    objective = lambda p: optimum.logistic_regression_objective(p, *dataset.train, l2=l2)
    self._check_reaches(params, metrics, reference, objective)
    chex.assert_trees_all_close(params, reference.params, rtol=1e-3, atol=1e-3)
    # An independent optimiser: scikit-learn minimises C Σ ℓ_n + ‖w‖²/2 = C N · objective.
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(dataset.train.x, np.float64), np.asarray(dataset.train.y)
    clf = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    sklearn_value = objective({"w": clf.coef_[0], "b": clf.intercept_[0]})
    self.assertBetween(_rel_gap(sklearn_value, reference.value), -1e-12, 1e-8)

  def test_digits_l2(self):
    l2, dataset = 1e-2, data.load_digits()
    reference = optimum.softmax_regression_optimum(*dataset.train, 10, l2=l2)
    loss_fn = functools.partial(SOFTMAX_LOSS, l2=l2)
    params, metrics = self._train(
      models.init_softmax_regression(64, 10),
      dataset.train,
      loss_fn,
      num_steps=300,
      learning_rate=1.0,
    )
    objective = lambda p: optimum.softmax_regression_objective(p, *dataset.train, l2=l2)
    self._check_reaches(params, metrics, reference, objective)
    # W is unique; b only up to a common shift (softmax is shift invariant).
    chex.assert_trees_all_close(params["w"], reference.params["w"], rtol=1e-3, atol=1e-3)
    b, b_ref = params["b"], reference.params["b"]
    np.testing.assert_allclose(b - b.mean(), b_ref - b_ref.mean(), rtol=1e-3, atol=1e-3)


class FeatureMajorTrainingTest(chex.TestCase):
  """Features stored [D, N] (data.feature_major) train exactly like the row-major ones."""

  def test_full_batch_equals_row_major(self):
    batch = _synthetic().train
    runs = [
      training.train_full_batch(
        _fresh_state(models.init_logistic_regression(5), MOMENTUM_SGD),
        (x, batch.y),
        loss_fn=LOGISTIC_LOSS,
        optimizer=MOMENTUM_SGD,
        num_steps=20,
      )
      for x in (batch.x, data.feature_major(batch.x))
    ]
    (row, row_metrics), (col, col_metrics) = runs
    chex.assert_trees_all_close(col.params, row.params, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(col_metrics["loss"], row_metrics["loss"], rtol=RTOL)
    self.assertLess(float(row_metrics["loss"][-1]), float(row_metrics["loss"][0]))

  def test_minibatch_epochs_visit_the_same_examples(self):
    batch = _small_softmax().train
    runs = [
      training.train_minibatch(
        _fresh_state(models.init_softmax_regression(4, 3), MINIBATCH_SGD),
        (x, batch.y),
        jax.random.key(5),
        loss_fn=SOFTMAX_LOSS,
        optimizer=MINIBATCH_SGD,
        num_epochs=2,
        batch_size=32,
      )
      for x in (batch.x, data.feature_major(batch.x))
    ]
    (row, row_metrics), (col, col_metrics) = runs
    chex.assert_trees_all_close(col.params, row.params, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(col_metrics["loss"], row_metrics["loss"], rtol=RTOL)


if __name__ == "__main__":
  absltest.main()
