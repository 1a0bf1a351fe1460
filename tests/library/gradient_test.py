"""Values and derivatives of every measure, reverse and forward mode, against mpmath (SPEC §2).

Property-based: hypothesis draws batches of rows with extreme inputs (logits up to ±80 in
float32 and ±700 in float64, ±1e30 and ±inf for the elementwise measures, dominant and tied
classes, -inf logits, probabilities exactly 0 and 1 and their neighbours, hard and soft
labels, label smoothing, `where` masks with garbage in the excluded entries), and every
differentiable argument is checked four ways against the exact jets of
``tests/library/_mp_reference.py``:

- the value (plain call, and the primal outputs of ``jax.vjp`` / ``jax.jvp``);
- ``jax.vjp`` with a random cotangent per example;
- ``jax.jvp`` with a unit tangent per input entry (the forward-mode gradient);
- ``jax.jvp`` with a random tangent on every argument at once.

The tolerance is SPEC §2's condition-aware rule (:func:`_mp_reference.assert_accurate`): the
inherent change of the exact derivative when every input (cotangent and tangent included)
moves by one ulp, from the Hessians written out in mpmath. The divergences use the absolute
rule with the size of the terms each derivative adds up (like their values, 1 + H(p, q)).
Draws are derandomised and never shrunk: a failure shows the first failing batch.
"""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
from absl.testing import absltest, parameterized
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import xent_jax as xj
from tests.library import _grids
from tests.library import _mp_reference as ref

jax.config.update("jax_numpy_rank_promotion", "raise")

SETTINGS = settings(
  derandomize=True,
  max_examples=6,
  deadline=None,
  database=None,
  phases=(Phase.explicit, Phase.generate),  # no shrinking: each step recomputes mpmath
  suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
)
ROWS = 6  # examples per drawn batch
CLASSES = (2, 33)  # class counts a batch is drawn with (each compiles once per dtype)
ELEMENTS = 24  # entries per drawn batch of an elementwise measure
GARBAGE = (np.nan, np.inf, -np.inf, -1.0, 2.0, 1e30)  # what excluded entries hold

# Public function -> the kind of each differentiable argument, in call order (the names are
# the reference's, ref.jet_args). "support": probabilities that are 0 only where the first
# argument's are; "logits_support": logits -inf only where the first argument's are; "wide":
# any float, ±inf included.
MEASURES = {
  "entropy": ("probs",),
  "entropy_from_logits": ("logits",),
  "cross_entropy": ("probs", "probs"),
  "softmax_cross_entropy": ("logits", "probs"),
  "kl_divergence": ("probs", "support"),
  "kl_divergence_from_logits": ("logits", "logits_support"),
  "js_divergence": ("probs", "probs"),
}
ELEMENTWISE = {
  "sigmoid": ("wide",),
  "log_sigmoid": ("wide",),
  "tanh_probability": ("wide",),
  "binary_entropy_from_logits": ("wide",),
  "binary_entropy": ("prob",),
  "binary_cross_entropy": ("prob", "prob"),
  "sigmoid_binary_cross_entropy": ("wide", "prob"),
}
DIVERGENCES = ("kl_divergence", "kl_divergence_from_logits", "js_divergence")


def _dtype_params(names, **extra_axes):
  """named_parameters over ``names`` × the mode's dtype (see _grids.DTYPES) × extra axes."""
  return [
    {**p, "testcase_name": f"{name}_{p['testcase_name']}", "name": name}
    for name in names
    for p in _grids.dtype_params(**extra_axes)
  ]


# ----------------------------------------------------------------------------------------------
# Strategies. Every array is built in float64 and rounded once to the dtype under test.


def _floats(dtype, lo, hi):
  width = 32 if np.dtype(dtype) == np.float32 else 64
  return st.floats(lo, hi, width=width, allow_subnormal=False, allow_nan=False)


@st.composite
def _logit_row(draw, c, dtype):
  """Random, dominant, tied, impossible (-inf) and offset rows; at least one finite logit."""
  big = _grids.MAX_LOGIT[np.dtype(dtype)]
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  kind = draw(st.sampled_from(("drawn", "dominant", "tied", "impossible", "offset")))
  if kind == "drawn":  # hypothesis' own floats: 0, ±big, simple and odd values
    return np.array(draw(st.lists(_floats(dtype, -big, big), min_size=c, max_size=c)))
  z = rng.normal(size=c) * draw(st.sampled_from((0.5, 3.0, 20.0)))
  if kind == "dominant":
    margin = draw(st.one_of(st.sampled_from((17.0, 20.0, 30.0, 40.0, big)), _floats(dtype, 5, big)))
    z[rng.integers(c)] = z.max() + margin
  elif kind == "tied":
    z[: max(2, c // 2)] = z.max() + draw(st.sampled_from((0.0, 15.0, big / 2)))
  elif kind == "impossible":
    z[rng.random(c) < 0.5] = -np.inf
    z[rng.integers(c)] = rng.normal()
  else:
    z = z / 10 + draw(st.sampled_from((50.0, -big / 2, big / 2)))
  return np.clip(z, -big, big)


@st.composite
def _prob_row(draw, c, dtype):
  """Softmaxes of logit rows (tails), one-hots, near-one-hots (1 - ulp), uniform, edges."""
  kind = draw(
    st.sampled_from(("softmax", "softmax", "one_hot", "near_one_hot", "uniform", "edges"))
  )
  eps = np.finfo(dtype).eps
  k = draw(st.integers(0, c - 1))
  if kind == "softmax":
    return _grids.softmax64(draw(_logit_row(c, dtype)))
  if kind == "one_hot":
    return (np.arange(c) == k).astype(np.float64)
  if kind == "near_one_hot":  # the largest probability below 1, the rest spread on the others
    p = np.full(c, eps / 2 / (c - 1))
    p[k] = 1 - eps / 2
    return p
  if kind == "uniform":
    return np.full(c, 1.0 / c)
  tiny = np.finfo(dtype).tiny
  edges = (0.0, 1.0, tiny, 1 - eps / 2, eps, 0.5, 1e-20)
  p = np.array(draw(st.lists(st.sampled_from(edges), min_size=c, max_size=c)))
  return p / max(1.0, p.sum())  # at most 1 in total (exact 0 and 1 kept where alone)


def _cast(x, dtype):
  """Rounds to ``dtype``, flushing subnormals (out of scope: XLA on CPU treats them as 0)."""
  x = np.asarray(x, np.float64).astype(dtype)
  return np.where(np.abs(x) < np.finfo(dtype).tiny, 0, x).astype(dtype)


@st.composite
def _batch(draw, kinds, dtype, c=None, masked=False, normalized=False):
  """{argument: [ROWS, C] array} with the given kinds; with ``masked``, also a mask.

  ``support``: a probability row that is 0 only where the first argument is (finite KL);
  ``logits_support``: logits that are -inf only where the first argument's are. With
  ``normalized``, probability rows sum to 1 over the kept classes (KL and JS are defined
  for distributions: of sub-distributions they can be negative).
  """
  c = draw(st.sampled_from(CLASSES)) if c is None else c
  arrays = []
  for kind in kinds:
    rows = []
    for r in range(ROWS):
      if kind == "logits":
        rows.append(draw(_logit_row(c, dtype)))
      elif kind == "logits_support":
        z = draw(_logit_row(c, dtype))
        rows.append(np.where(np.isinf(arrays[0][r]), -np.inf, np.where(np.isinf(z), 0.0, z)))
      else:
        p = draw(_prob_row(c, dtype))
        if kind == "support":
          p = np.where(arrays[0][r] > 0, np.maximum(p, 0.5 / c), p)
          p = p / p.sum()
        rows.append(p)
    arrays.append(_cast(rows, dtype))
  where = None
  if masked:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    where = rng.random((ROWS, c)) < 0.7
    where[-1] = False  # a fully excluded example: value 0, zero gradient
  if normalized:
    kept = np.ones((ROWS, c), bool) if where is None else where
    arrays = [
      x if "logits" in k else _normalized(x, kept, dtype)
      for x, k in zip(arrays, kinds, strict=True)
    ]
  if masked:
    garbage = rng.choice(np.array(GARBAGE), size=(ROWS, c))
    arrays = [np.where(where, x, garbage).astype(dtype) for x in arrays]
  return arrays, where


def _normalized(p, where, dtype):
  """Rows rescaled to sum to 1 over the kept classes (rows with no mass stay 0)."""
  kept = np.where(where, p.astype(np.float64), 0)
  total = kept.sum(axis=1, keepdims=True)
  return _cast(kept / np.where(total > 0, total, 1), dtype)


@st.composite
def _elementwise_batch(draw, kinds, dtype):
  """[ELEMENTS] arrays: logits over the whole float range (±1e30, ±inf) or probabilities."""
  big = _grids.MAX_LOGIT[np.dtype(dtype)]
  fmax = float(np.finfo(dtype).max)
  specials = (0.0, 1e-30, -1e-30, 17.0, 20.0, 30.0, 40.0, -88.0, 43.7, 1e30, -1e30, np.inf, -np.inf)
  eps = np.finfo(dtype).eps
  prob_edges = (0.0, 1.0, 0.5, eps, 1 - eps, 1 - eps / 2, np.finfo(dtype).tiny, 1e-20)
  arrays = []
  for kind in kinds:
    if kind == "wide":
      element = st.one_of(
        _floats(dtype, -big, big), _floats(dtype, -fmax, fmax), st.sampled_from(specials)
      )
    else:
      element = st.one_of(_floats(dtype, 0.0, 1.0), st.sampled_from(prob_edges))
    x = draw(st.lists(element, min_size=ELEMENTS, max_size=ELEMENTS))
    arrays.append(_cast(x, dtype))
  return arrays


# ----------------------------------------------------------------------------------------------
# The library under test: value, reverse mode and forward mode, each one compiled function.


def _call(name, options, masked, extra):
  fn = getattr(xj, name)

  def call(where, *args):
    kwargs = dict(options)
    if masked:
      kwargs["where"] = where
    return fn(*args, *extra, **kwargs)

  return call


# XLA's own defaults for the flags `make test` changes (Makefile, TEST_CACHE): per-program
# compiler options override XLA_FLAGS, so a program compiled with these is what users get.
XLA_DEFAULTS = {
  "xla_backend_optimization_level": 3,
  "xla_llvm_disable_expensive_passes": False,
  "xla_cpu_use_fusion_emitters": True,
}


def _jit(fn, default_codegen):
  return jax.jit(fn, compiler_options=XLA_DEFAULTS if default_codegen else None)


@functools.cache
def _reverse(name, options=(), masked=False, default_codegen=False):
  """(plain value, value under vjp, the vjp's cotangents) for cotangent w."""

  def run(args, extra, where, w):
    call = functools.partial(_call(name, options, masked, extra), where)
    value, pullback = jax.vjp(call, *args)
    return call(*args), value, pullback(w)

  return _jit(run, default_codegen)


@functools.cache
def _forward(name, options=(), masked=False, default_codegen=False):
  """(value under jvp, jvp with tangents t, per-argument forward-mode gradients)."""

  def run(args, extra, where, t):
    call = functools.partial(_call(name, options, masked, extra), where)
    value, out = jax.jvp(call, tuple(args), tuple(t))
    zeros = [jnp.zeros_like(a) for a in args]
    grads = []
    for i, a in enumerate(args):
      if a.ndim == 1:  # elementwise: a tangent of ones gives every derivative at once
        tangent = zeros[:i] + [jnp.ones_like(a)] + zeros[i + 1 :]
        grads.append(jax.jvp(call, tuple(args), tuple(tangent))[1])
        continue

      def column(e, i=i, a=a):  # the unit tangent e_k in every example
        tangent = zeros[:i] + [jnp.broadcast_to(e, a.shape)] + zeros[i + 1 :]
        return jax.jvp(call, tuple(args), tuple(tangent))[1]

      grads.append(jax.vmap(column)(jnp.eye(a.shape[-1], dtype=a.dtype)).T)
    return value, out, grads

  return _jit(run, default_codegen)


# ----------------------------------------------------------------------------------------------
# The checks.


def _value_scale(name, arrays, where):
  """1 + H(p, q) for the divergences (their absolute rule), None for the rest."""
  if name not in DIVERGENCES:
    return None
  a, b = arrays
  if name == "kl_divergence":
    cross = ref.cross_entropy(a, b, where).value
  elif name == "kl_divergence_from_logits":
    kl = ref.kl_divergence_from_logits(a, b, where)
    cross = kl.value + ref.entropy_from_logits(a, where).value
  else:
    m = ((a.astype(np.float64) + b) / 2).astype(a.dtype)
    m = np.where(where, m, 0) if where is not None else m
    cross = ref.cross_entropy(a, m, where).value + ref.cross_entropy(b, m, where).value
  with np.errstate(invalid="ignore"):
    return 1 + np.abs(np.nan_to_num(cross, posinf=0.0))


class _Failures:
  """Collects every failing check of one drawn batch, so that one report lists them all."""

  def __init__(self, title, inputs=None):
    self.title, self.messages, self.inputs = title, [], inputs or {}

  def check(self, label, fn, *args, **kwargs):
    try:
      fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - a refused transformation is a failure too
      message = f"[{label}] {type(e).__name__}: {str(e)[:1500]}"
      self.messages.append(message + self._context(message))

  def _context(self, message) -> str:
    """The inputs at the first failing entry, e.g. `logits=20.0 labels=1.0`."""
    match = re.search(r"at \(([\d, ]+)\)", message)
    if not match or not self.inputs:
      return ""
    index = tuple(int(i) for i in match.group(1).split(",") if i.strip())
    parts = []
    for name, x in self.inputs.items():
      x = np.asarray(x)
      row = x[index[0]]
      if x.ndim == 1:
        parts.append(f"{name}={row!r}")
      elif len(index) == 2:
        parts.append(
          f"{name}[{index[1]}]={row[index[1]]!r} row={np.array2string(row, precision=4, max_line_width=10**4, threshold=12)}"
        )
      else:
        parts.append(
          f"{name} row={np.array2string(row, precision=4, max_line_width=10**4, threshold=12)}"
        )
    return "\n    inputs: " + "; ".join(parts)

  def raise_any(self):
    if self.messages:
      raise AssertionError(f"{self.title}\n" + "\n".join(self.messages))


def _in_range(expected: ref.DerivativeRef, dtype):
  """The reference as the dtype can hold it: ±inf beyond its range (the correctly rounded
  result), and an absolute scale of at least tiny/rtol (below tiny nothing is representable).
  """
  finfo = np.finfo(dtype)
  value, cond = expected.ref
  with np.errstate(invalid="ignore"):
    over = np.abs(value) > finfo.max
  # A condition the reference could not form (0·inf where an input is infinite) adds no
  # allowance: the strict rule applies there.
  cond = np.where(np.isnan(cond) & np.isfinite(value), 0.0, cond)
  exact = ref.Ref(np.where(over, np.sign(value) * np.inf, value), np.where(over, 0, cond))
  scale = expected.scale
  if scale is not None:
    scale = np.maximum(scale, finfo.tiny / ref.RTOL[np.dtype(dtype)])
  return exact, scale


def _assert_zero_where_excluded(got, where):
  """SPEC §2: excluded entries get exactly 0, whatever they hold."""
  got = np.asarray(got)[~np.broadcast_to(where, np.shape(got))]
  if np.any(got != 0):
    raise AssertionError(f"{np.sum(got != 0)} excluded entries are not 0: {got[got != 0][:6]}")


def check_measure(
  name, arrays, dtype, *, where=None, extra=(), options=(), seed=0, default_codegen=False
):
  """Value, vjp, unit-tangent jvp and random-tangent jvp of ``name`` against mpmath.

  ``arrays``: the differentiable arguments in call order; ``extra``: the others (integer
  labels, checked through exact one-hot targets); ``options``: static keyword options as
  ``((key, value), ...)``; ``default_codegen``: compile with XLA's default flags
  (:data:`XLA_DEFAULTS`) rather than the suite's. Raises one AssertionError listing every
  check that missed.
  """
  ref_name = "softmax_cross_entropy" if extra else name
  arg_names = ref.jet_args(ref_name)[: len(arrays)]
  ref_arrays = dict(zip(arg_names, arrays, strict=True))
  if extra:
    ref_arrays["targets"] = ref.one_hot(extra[0], arrays[0].shape[-1], dtype)
  masked = where is not None
  opts = dict(options)
  inputs = dict(zip(arg_names, arrays, strict=True))
  if extra:
    inputs["labels"] = extra[0]
  if masked:
    inputs["where"] = where
  fails = _Failures(f"{name} {opts} ({np.dtype(dtype).name}), where={masked}", inputs)
  kw = {"where": where, **opts}
  rng = np.random.default_rng(seed)

  value = ref.value_ref(ref_name, ref_arrays, **kw)
  scale = _value_scale(name, arrays, where)
  grads = {a: ref.vjp(ref_name, ref_arrays, a, **kw) for a in arg_names}
  n = arrays[0].shape[0]
  w = (rng.uniform(0.5, 2.0, n) * rng.choice([-1, 1], n)).astype(dtype)
  tangents = []
  for a, x in zip(arg_names, arrays, strict=True):
    t = rng.normal(size=x.shape) * np.isfinite(grads[a].ref.value)
    if masked:  # large tangents on excluded entries: they must not reach the output
      t = np.where(where, t, 1e3)
    tangents.append(t.astype(dtype))
  args = tuple(jnp.asarray(x) for x in arrays)
  extra = tuple(jnp.asarray(e) for e in extra)
  where_arg = jnp.asarray(where) if masked else None

  def check_value(got, label):
    got = forgive_flush_next_to_tiny(got, value)
    fails.check(label, ref.assert_accurate, got, value, dtype, name=f"{name} {label}", scale=scale)

  # The one documented exception (README, "Derivatives"): where the value itself is ±inf, a
  # forward-mode contraction may meet 0·∞ (a zero tangent entry times an infinite partial)
  # and give NaN. Only that NaN is forgiven there; reverse mode is checked everywhere.
  infinite_value = ~np.isfinite(np.asarray(value.value))

  # README, "Subnormal": XLA on the CPU flushes subnormal intermediates, so a derivative
  # within 8x of the smallest normal number (a subnormal partial times a cotangent or
  # tangent of up to 2, or a sum of subnormal terms) may come out as exactly 0.
  # Likewise a subnormal term flushed inside a sum (a probability e^{-92} next to a target
  # of 1e-36) costs at most the smallest normal number in absolute terms.
  def forgive_flush_next_to_tiny(got, exact):
    got = np.asarray(got, np.float64)
    tiny = np.finfo(dtype).tiny
    near = np.abs(exact.value) < 8 * tiny
    with np.errstate(invalid="ignore"):
      flushed_term = np.abs(got - exact.value) <= tiny
    return np.where(((got == 0) & near) | flushed_term, exact.value, got)

  def forgive_nan_at_infinite_values(got, exact):
    got = np.asarray(got, np.float64)
    inf_rows = infinite_value.reshape(
      infinite_value.shape + (1,) * (got.ndim - infinite_value.ndim)
    )
    return np.where(np.isnan(got) & inf_rows, exact.value, got)

  def check_derivative(got, expected, label, forward=False):
    exact, scale = _in_range(expected, dtype)
    if forward:
      got = forgive_nan_at_infinite_values(got, exact)
    got = forgive_flush_next_to_tiny(got, exact)
    fails.check(label, ref.assert_accurate, got, exact, dtype, name=f"{name} {label}", scale=scale)
    if masked and np.ndim(got) == 2:
      fails.check(f"{label}, excluded entries", _assert_zero_where_excluded, got, where)

  def reverse():
    reverse_fn = _reverse(name, options, masked, default_codegen)
    plain, primal, cotangents = reverse_fn(args, extra, where_arg, w)
    check_value(plain, "value")
    check_value(primal, "value under vjp")
    for a, got in zip(arg_names, cotangents, strict=True):
      check_derivative(got, ref.vjp(ref_name, ref_arrays, a, cotangent=w, **kw), f"vjp d/d{a}")

  def forward():
    forward_fn = _forward(name, options, masked, default_codegen)
    primal, out, unit = forward_fn(args, extra, where_arg, tuple(tangents))
    check_value(primal, "value under jvp")
    expected = ref.jvp(ref_name, ref_arrays, dict(zip(arg_names, tangents, strict=True)), **kw)
    check_derivative(out, expected, "jvp, random tangent", forward=True)
    for a, got in zip(arg_names, unit, strict=True):
      check_derivative(got, grads[a], f"jvp d/d{a}, unit tangents", forward=True)

  fails.check("reverse mode", reverse)
  fails.check("forward mode", forward)
  fails.raise_any()


# ----------------------------------------------------------------------------------------------
# Property tests.


class MeasureDerivativesTest(chex.TestCase):
  @parameterized.named_parameters(_dtype_params(MEASURES, masked=(False, True)))
  def test_matches_mpmath(self, name, dtype, masked):
    kinds = MEASURES[name]

    normalized = name in ("kl_divergence", "js_divergence")

    @SETTINGS
    @given(_batch(kinds, dtype, masked=masked, normalized=normalized), st.integers(0, 2**16))
    def prop(batch, seed):
      arrays, where = batch
      check_measure(name, arrays, dtype, where=where, seed=seed)

    prop()

  @parameterized.named_parameters(
    _dtype_params(["softmax_cross_entropy"], smoothing_masked=((0.25, True), (1.0, False)))
  )
  def test_label_smoothing_matches_mpmath(self, name, dtype, smoothing_masked):
    smoothing, masked = smoothing_masked

    @SETTINGS
    @given(_batch(("logits", "probs"), dtype, masked=masked), st.integers(0, 2**16))
    def prop(batch, seed):
      arrays, where = batch
      options = (("label_smoothing", smoothing),)
      check_measure(name, arrays, dtype, where=where, options=options, seed=seed)

    if dtype == np.float32 and smoothing_masked == (0.25, True):
      # OPEN DEFECT, asserted so that a fix shows: ∂/∂z_j = T·q_j - t'_j cancels where the
      # smoothed target ε/K is close to T·q_j (logits within ±1, 24 kept classes: errors
      # of 1-2.4 ulps of q_j against an allowance of 0.4). q_j rounded to float32 alone is
      # 0.5 ulp, so working precision cannot meet SPEC §2 here; it needs the partial formed
      # in more precision than q. Found once this suite's draws were made reproducible
      # (tests/conftest.py); the float64 analogue (logits ±1.2e-38, ε = 1) was drawn before.
      with self.assertRaisesRegex(AssertionError, r"vjp d/dlogits.*miss the SPEC"):
        prop()
      return
    prop()

  @parameterized.named_parameters(
    _dtype_params(
      ["softmax_cross_entropy_with_integer_labels"],
      smoothing_masked=((0.0, False), (0.0, True), (0.25, True), (1.0, False)),
    )
  )
  def test_integer_labels_match_mpmath(self, name, dtype, smoothing_masked):
    smoothing, masked = smoothing_masked

    @SETTINGS
    @given(_batch(("logits",), dtype, masked=masked), st.integers(0, 2**16))
    def prop(batch, seed):
      (z,), where = batch
      rng = np.random.default_rng(seed)
      kept = np.ones(z.shape, bool) if where is None else where
      # The dominant class on even examples, a random kept class on odd ones.
      candidates = np.where(kept, np.where(np.isnan(z), -np.inf, z), -np.inf)
      top = np.argmax(candidates, axis=1)
      random = np.array([rng.choice(np.flatnonzero(k)) if k.any() else 0 for k in kept])
      labels = np.where(np.arange(len(z)) % 2 == 0, top, random)
      options = (("label_smoothing", smoothing),) if smoothing else ()
      check_measure(name, [z], dtype, where=where, extra=(labels,), options=options, seed=seed)

    prop()

  @parameterized.named_parameters(_dtype_params(ELEMENTWISE))
  def test_elementwise_matches_mpmath(self, name, dtype):
    kinds = ELEMENTWISE[name]

    @SETTINGS
    @given(_elementwise_batch(kinds, dtype), st.integers(0, 2**16))
    def prop(arrays, seed):
      check_measure(name, arrays, dtype, seed=seed)

    prop()

  @parameterized.named_parameters(
    _dtype_params(["sigmoid_binary_cross_entropy"], smoothing=(0.25, 1.0))
  )
  def test_sigmoid_label_smoothing_matches_mpmath(self, name, dtype, smoothing):
    @SETTINGS
    @given(_elementwise_batch(("wide", "prob"), dtype), st.integers(0, 2**16))
    def prop(arrays, seed):
      options = (("label_smoothing", smoothing),)
      check_measure(name, arrays, dtype, options=options, seed=seed)

    prop()


@functools.cache
def _log_softmax_derivatives(masked):
  def run(z, where, v, t):
    kwargs = {"where": where} if masked else {}
    call = functools.partial(xj.log_softmax, **kwargs)
    value, pullback = jax.vjp(call, z)
    return value, pullback(v)[0]

  def run_forward(z, where, t):
    kwargs = {"where": where} if masked else {}
    return jax.jvp(functools.partial(xj.log_softmax, **kwargs), (z,), (t,))

  return jax.jit(run), jax.jit(run_forward)


class LogSoftmaxDerivativesTest(chex.TestCase):
  @parameterized.named_parameters(_grids.dtype_params(masked=(False, True)))
  def test_matches_mpmath(self, dtype, masked):
    @SETTINGS
    @given(_batch(("logits",), dtype, masked=masked), st.integers(0, 2**16))
    def prop(batch, seed):
      (z,), where = batch
      rng = np.random.default_rng(seed)
      kept = np.ones(z.shape, bool) if where is None else where
      present = kept & (z > -np.inf)
      fails = _Failures(f"log_softmax ({np.dtype(dtype).name}), where={masked}")
      # Cotangents: 0 on -inf logits (their output is the constant -inf), anything on
      # excluded entries (their output is constant too), random elsewhere.
      v = np.where(present | ~kept, rng.normal(size=z.shape), 0).astype(dtype)
      t = np.where(kept, rng.normal(size=z.shape), 1e3).astype(dtype)
      reverse, forward = _log_softmax_derivatives(masked)
      where_arg = jnp.asarray(where) if masked else None
      exact = ref.log_softmax(z, where=where)

      def check_reverse():
        value, grad = reverse(z, where_arg, v, t)
        fails.check("value", ref.assert_accurate, value, exact, dtype, name="log_softmax")
        expected = ref.log_softmax_vjp(z, np.where(kept, v, 0), where=where)
        fails.check("vjp", ref.assert_accurate, grad, expected.ref, dtype, name="vjp log_softmax")
        if masked:
          fails.check("vjp, excluded entries", _assert_zero_where_excluded, grad, where)

      def check_forward():
        value, out = forward(z, where_arg, t)
        fails.check("value under jvp", ref.assert_accurate, value, exact, dtype, name="log_softmax")
        expected = ref.log_softmax_jvp(z, np.where(kept, t, 0).astype(dtype), where=where)
        # Outputs at -inf logits are constant -inf: their tangent is not compared.
        got = np.where(present | ~kept, np.asarray(out, np.float64), 0)
        fails.check("jvp", ref.assert_accurate, got, expected, dtype, name="jvp log_softmax")
        if masked:
          fails.check("jvp, excluded entries", _assert_zero_where_excluded, out, where)

      fails.check("reverse mode", check_reverse)
      fails.check("forward mode", check_forward)
      fails.raise_any()

    prop()

  @parameterized.named_parameters(_grids.dtype_params())
  def test_vjp_keeps_the_tail_of_a_dominant_class(self, dtype):
    # A cotangent concentrated on a class that wins by 20+ nats (the CE of a confident row
    # with smoothed targets): its gradient r v_k - p_k Σ_{j≠k} v_j, r = 1 - p_k, is of the
    # order of r; v_k - p_k Σv rounds p_k to 1 and cancels to 0. Reverse mode evaluates its
    # own formula (not the transpose of the JVP's), so it is checked on its own, with no
    # allowance for the contraction's rounding.
    z = np.array([[0.0, -20.0, -25.0], [3.0, -30.0, 1.0], [0.0, -20.0, -25.0]], dtype)
    v = np.array([[1.0, 1e-9, 0.0], [1.0, 0.0, 0.0], [-1.0, 3e-10, 7e-10]], dtype)
    grad = jax.jit(lambda z, v: jax.vjp(xj.log_softmax, z)[1](v)[0])(z, v)
    want = ref.log_softmax_vjp(z, v).ref.value
    np.testing.assert_allclose(grad, want, rtol=4 * ref.RTOL[np.dtype(dtype)])


# ----------------------------------------------------------------------------------------------
# The fast paths' tails as users compile them.


def _tail_logits(dtype, num_rows=None):
  """[R, 5] logit rows that take the fast paths' branches in the tails.

  Without ``num_rows``: dominant rows make up more than 1/8 of the batch (the log1p mass
  from one pass over every row). With it: ``num_rows`` benign rows and one dominant row
  (its log1p mass from the row fallback); ``num_rows=9`` gives the same [10, 5] shape, so
  both batches run one compiled program.
  """
  big = _grids.MAX_LOGIT[np.dtype(dtype)]
  margin = {np.dtype(np.float32): 85.0, np.dtype(np.float64): 700.0}[np.dtype(dtype)]
  rng = np.random.default_rng(7)
  if num_rows is not None:
    benign = rng.normal(size=(num_rows, 5)) * 2
    return np.concatenate([benign, [[0.0, -20.0, -21.0, -22.0, -23.0]]]).astype(dtype)
  rows = [
    [0.0, -margin, -margin, -margin, -margin],  # terms next to the underflow threshold
    [0.0, -margin + 5, -margin, -margin + 10, -margin],
    [0.0, -20.0, -20.0, -20.0, -20.0],  # L ≈ 8e-9: the log1p of the mass
    [5.0, 0.0, 0.0, 0.0, 0.0],  # a dominant class, L < log 2
    [90.0, 0.0, -3.0, 5.0, 1.0],  # a class 90 nats below the maximum
    [big, -big, 0.0, big / 2, -1.0],  # the whole range
    [0.0, -np.inf, 1.0, 2.0, 3.0],  # an impossible class
    [3.0, 3.0, 3.0, 3.0, 3.0],  # ties
    [0.3, -1.2, 2.5, 0.7, -0.4],
    [50.0, 50.1, 49.9, 50.0, 50.05],  # a large common offset
  ]
  return np.array(rows, dtype)


def _tail_labels(z):
  """The dominant class on even rows, the least likely possible class on odd ones."""
  top = np.argmax(z, axis=1)
  bottom = np.argmin(np.where(np.isfinite(z), z, np.inf), axis=1)
  return np.where(np.arange(len(z)) % 2 == 0, top, bottom)


def _tail_targets(z, dtype):
  """Soft targets, a one-hot and a near-one-hot row (1 - ulp), 0 on impossible classes."""
  rng = np.random.default_rng(8)
  t = _grids.softmax64(rng.normal(size=z.shape) * 3)
  t[0] = np.eye(z.shape[1])[1]  # all the target on a class of probability ~e^-85
  eps = np.finfo(dtype).eps
  t[1] = np.full(z.shape[1], eps / 8)
  t[1, 0] = 1 - eps / 2
  t = np.where(np.isfinite(z), t, 0)
  return (t / t.sum(axis=1, keepdims=True)).astype(dtype)


# Elementwise logits: 0, tiny, the sigmoid's tails (exp flushing at -88 and 43.7 in float32),
# beyond the float32 range, ±inf.
_TAIL_X = (0.0, 1e-30, -1e-30, 17.0, 20.0, 30.0, 40.0, -88.0, 43.7, 90.0, -103.0, 745.0)
_TAIL_X += (-745.0, 1e30, -1e30, np.inf, -np.inf)


class DefaultCodegenTest(chex.TestCase):
  """The fast paths' tails compiled with XLA's default flags, against mpmath (SPEC §2).

  ``make test`` compiles with cheaper flags (no LLVM optimisation, XLA's elemental emitter;
  see the Makefile); users, the benchmark and ``make run`` get XLA's defaults, whose fusion
  emitters generate other code for the same fused passes. Here each fast path's tail rows
  (values, reverse and forward mode) are compiled with the defaults
  (:data:`XLA_DEFAULTS`, per-program compiler options) and checked as everywhere else.
  """

  def _check(self, name, arrays, **kwargs):
    dtype = arrays[0].dtype.type
    check_measure(name, list(arrays), dtype, default_codegen=True, **kwargs)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_softmax_cross_entropy_with_integer_labels(self, dtype):
    for z in (_tail_logits(dtype), _tail_logits(dtype, num_rows=9)):
      self._check("softmax_cross_entropy_with_integer_labels", [z], extra=(_tail_labels(z),))

  @parameterized.named_parameters(_grids.dtype_params())
  def test_softmax_cross_entropy(self, dtype):
    z = _tail_logits(dtype)
    self._check("softmax_cross_entropy", [z, _tail_targets(z, dtype)])

  @parameterized.named_parameters(_grids.dtype_params())
  def test_entropy_and_kl_from_logits(self, dtype):
    for z in (_tail_logits(dtype), _tail_logits(dtype, num_rows=9)):
      self._check("entropy_from_logits", [z])
    z = _tail_logits(dtype)
    noise = np.random.default_rng(9).normal(size=z.shape) * 3
    q = np.where(np.isfinite(z), 0.5 * z + noise, -np.inf)  # -inf only where z is -inf
    self._check("kl_divergence_from_logits", [z, q.astype(dtype)])

  @parameterized.named_parameters(_grids.dtype_params())
  def test_sigmoid_binary_cross_entropy(self, dtype):
    with np.errstate(over="ignore"):
      x = np.array(_TAIL_X, dtype)
    labels = np.resize(np.array([1.0, 0.0, 0.5, 1.0 - np.finfo(dtype).eps], dtype), x.shape)
    self._check("sigmoid_binary_cross_entropy", [x, labels])


# ----------------------------------------------------------------------------------------------
# Known defects and edge cases, one test each (issue 11): exact values from the jets.


def _f32_or_skip(test, dtype):
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    test.skipTest("float64 needs JAX_ENABLE_X64=1")


class RegressionTest(chex.TestCase):
  def _check(self, name, arrays, dtype=np.float32, **kwargs):
    _f32_or_skip(self, dtype)
    check_measure(name, [np.asarray(a, dtype) for a in arrays], dtype, **kwargs)

  def test_sigmoid_bce_gradient_at_confident_logits_float32(self):
    # ∂/∂z = -σ(-z): -2.06e-9 at 20 and -9.36e-14 at 30, not σ(z) - 1 = 0.
    z, y = np.array([20.0, 30.0], np.float32), np.ones(2, np.float32)
    exact = ref.vjp("sigmoid_binary_cross_entropy", {"logits": z, "labels": y}, "logits")
    np.testing.assert_allclose(exact.ref.value, [-2.0611536e-9, -9.3576230e-14], rtol=1e-7)
    self._check("sigmoid_binary_cross_entropy", [z, y])

  def test_sigmoid_bce_gradient_at_40_float64(self):
    self._check("sigmoid_binary_cross_entropy", [[40.0], [1.0]], np.float64)

  def test_sigmoid_bce_chain_rule(self):
    # d/dw H(1, σ(20 w)) at w = 1 is 20 · (-σ(-20)) = -4.12e-8, in both modes.
    def loss(w):
      return xj.sigmoid_binary_cross_entropy(20 * w, jnp.float32(1.0))

    arrays = {"logits": np.float32([20.0]), "labels": np.float32([1.0])}
    g = ref.vjp("sigmoid_binary_cross_entropy", arrays, "logits")
    jet = ref.jets("sigmoid_binary_cross_entropy", arrays)[0][0]
    # d/dw 20 g(20 w) = 400 g'(20 w): its change when w moves by ulp(1).
    cond = 400 * float(jet.hess[("logits", "logits")][0][0]) * np.spacing(np.float32(1))
    exact = ref.Ref(20 * g.ref.value, np.array([cond]))
    fails = _Failures("d/dw sigmoid_binary_cross_entropy(20 w, 1) at w = 1")
    w = jnp.float32(1.0)
    for label, fn in (
      ("grad", lambda: jax.jit(jax.grad(loss))(w)),
      ("jvp", lambda: jax.jit(lambda w: jax.jvp(loss, (w,), (jnp.ones_like(w),))[1])(w)),
    ):
      fails.check(label, lambda fn=fn: ref.assert_accurate([fn()], exact, np.float32, name="d/dw"))
    fails.raise_any()

  def test_softmax_ce_dominant_class_gradient(self):
    # ∂/∂z_1 = S q_1 - t_1 ≈ 1.0e-12 (S = 1 + 9.9e-13): the sum of the others' mass.
    z = [[-80.0, 0.0, -80.0, -80.0]]
    t = [[3.3e-13, 1.0, 3.3e-13, 3.3e-13]]
    exact = ref.vjp(
      "softmax_cross_entropy", {"logits": np.float32(z), "targets": np.float32(t)}, "logits"
    )
    self.assertGreater(exact.ref.value[0, 1], 9e-13)
    self._check("softmax_cross_entropy", [z, t])

  def test_kl_from_logits_q_gradient_sign_at_dominant_class(self):
    # ∂KL/∂zq_0 = q_0 - p_0 = (1 - p_0) - (1 - q_0) = 2.06e-9 - 1.39e-11 > 0.
    self._check("kl_divergence_from_logits", [[[0.0, -20.0]], [[0.0, -25.0]]])

  def test_kl_gradient_where_rounded_kl_is_negative(self):
    # KL of p = [½, ½] from q = [½ + ulp, ½] is exactly -ulp·(1 + O(ulp)) < 0: the value may
    # be clamped to 0, the gradient -p/q must not be.
    half_up = np.nextafter(np.float32(0.5), np.float32(1))
    self._check("kl_divergence", [[[0.5, 0.5]], [[half_up, 0.5]]])

  def test_excluded_certain_class_with_zero_model_probability(self):
    where = np.array([[True, True, False]])
    for name in ("cross_entropy", "kl_divergence"):
      with self.subTest(name):
        self._check(name, [[[0.5, 0.5, 1.0]], [[0.25, 0.75, 0.0]]], where=where)

  def test_entropy_with_excluded_negative_entry(self):
    self._check("entropy", [[[0.5, 0.5, -1.0]]], where=np.array([[True, True, False]]))

  def test_js_with_excluded_inf(self):
    where = np.array([[True, True, False]])
    self._check("js_divergence", [[[0.5, 0.5, np.inf]], [[0.25, 0.75, 0.5]]], where=where)

  def test_q_gradient_where_p_is_certain_and_q_is_zero(self):
    # d/dq of KL([0, 1] ‖ [1, 0]) and H([0, 1], [1, 0]): [0, -inf], not NaN.
    for name in ("kl_divergence", "cross_entropy"):
      with self.subTest(name):
        exact = ref.vjp(name, {"p": [[0.0, 1.0]], "q": [[1.0, 0.0]]}, "q")
        np.testing.assert_array_equal(exact.ref.value, [[0.0, -np.inf]])
        self._check(name, [[[0.0, 1.0]], [[1.0, 0.0]]])

  def test_kl_from_logits_p_gradient_with_impossible_q_class(self):
    # KL(softmax[0, 0] ‖ softmax[0, -inf]) = inf; by the limit ∂/∂zp = [-inf, +inf].
    self._check("kl_divergence_from_logits", [[[0.0, 0.0]], [[0.0, -np.inf]]])

  def test_integer_labels_full_smoothing_on_impossible_class(self):
    # t' = [½, ½] puts mass on the -inf class: the value is +inf (not NaN), ∂/∂z = [½, -½].
    self._check(
      "softmax_cross_entropy_with_integer_labels",
      [[[0.0, -np.inf]]],
      extra=(np.array([1]),),
      options=(("label_smoothing", 1.0),),
    )

  def test_sigmoid_bce_label_gradient_with_full_smoothing(self):
    # ε = 1: the label is ½ whatever y is, so ∂/∂y = 0 (not 0·inf) at z = +inf.
    self._check(
      "sigmoid_binary_cross_entropy", [[np.inf], [0.5]], options=(("label_smoothing", 1.0),)
    )

  def test_binary_entropy_from_logits_does_not_underflow(self):
    # h(σ(-88)) = 5.39e-37 and its derivative at -87.5 ≈ 8.7e-37: normal float32 numbers.
    z = np.array([-88.0, -87.5], np.float32)
    exact = ref.value_ref("binary_entropy_from_logits", {"logits": z})
    np.testing.assert_allclose(exact.value[0], 5.39e-37, rtol=1e-3)
    grad = ref.vjp("binary_entropy_from_logits", {"logits": z}, "logits")
    np.testing.assert_allclose(grad.ref.value[1], 8.7e-37, rtol=1e-2)
    self._check("binary_entropy_from_logits", [z])

  def test_tanh_probability_gradient_does_not_underflow(self):
    # d/dx σ(2x) at 43.7 = 2σ(87.4)σ(-87.4) ≈ 2.2e-38, just above float32's tiny.
    grad = ref.vjp("tanh_probability", {"x": np.float32([43.7])}, "x")
    np.testing.assert_allclose(grad.ref.value, [2.2e-38], rtol=1e-1)
    self._check("tanh_probability", [[43.7]])

  @parameterized.named_parameters(_grids.dtype_params())
  def test_entropy_terms_of_subnormal_probabilities(self, dtype):
    # Found by DefaultCodegenTest (not in issue 11's list): q_j = e^{-90} is subnormal in
    # float32 (flushed to 0 on CPU) but q_j·|log q_j| is not: they add 2.6% to H = 1.07e-35
    # (float64: e^{-712}, 1.9e-5 of H = 6.9e-302). d̄ = Σ q_j d_j lost them, on both paths.
    # [ROWS, 33] batches, as the property tests draw (their programs are reused): the
    # classes beyond the fifth are 1000 nats down (probability 0).
    head = [90.0, 0.0, -3.0, 5.0, 1.0] if dtype == np.float32 else [712.0, 12.0, 0, 0, 0]
    z = np.random.default_rng(1).normal(size=(ROWS, CLASSES[-1]))
    z[0] = -1000.0
    z[0, :5] = head
    exact = ref.value_ref("entropy_from_logits", {"logits": z.astype(dtype)}).value[0]
    self.assertGreater(exact, np.finfo(dtype).tiny)  # a normal number: SPEC §2's rtol applies
    self._check("entropy_from_logits", [z], dtype)
    self._check("entropy_from_logits", [z], dtype, where=np.ones(z.shape, bool))

  @parameterized.named_parameters(_grids.dtype_params())
  def test_normalizer_mass_of_subnormal_terms(self, dtype):
    # Found with DefaultCodegenTest's tail rows: a dominant class, one class e^{-85} below
    # it (float32) and 31 more at e^{-90}, each subnormal (flushed on the CPU) but together
    # 17% of L = 1.5e-37. The fast paths' log1p mass dropped them: the integer-label and
    # dense cross-entropies and the entropy came out low (float64: e^{-700}, e^{-712}).
    # [ROWS, 33] batches, as the property tests draw (their programs are reused).
    top, second = (90.0, 5.0) if dtype == np.float32 else (712.0, 12.0)
    rng = np.random.default_rng(0)
    c = CLASSES[-1]
    z = rng.normal(size=(ROWS, c))
    z[0] = 0.0
    z[0, :2] = top, second
    t = _grids.softmax64(rng.normal(size=(ROWS, c)))
    t[0] = np.eye(c)[0]
    labels = np.arange(ROWS) % c
    exact = ref.value_ref("softmax_cross_entropy", {"logits": z.astype(dtype), "targets": t})
    self.assertGreater(exact.value[0], np.finfo(dtype).tiny)  # a normal number
    for where in (None, np.ones(z.shape, bool)):  # the fast path and the general one
      self._check(
        "softmax_cross_entropy_with_integer_labels", [z], dtype, where=where, extra=(labels,)
      )
      self._check("softmax_cross_entropy", [z, t], dtype, where=where)
    # Only the fast path of the entropy: on the general one a JVP with a random tangent
    # contracts 38 products q_j·r_j·t_j that are each subnormal (README, "Subnormal").
    self._check("entropy_from_logits", [z], dtype)
    # A batch of such rows only (a confident batch): the fast paths' log1p pass runs for
    # every row, and each row whose plain mass may have lost flushed terms must go to the
    # exact statistics. Oracle: row 0's exact value.
    tiled = np.tile(z[:1], (8 * ROWS, 1)).astype(dtype)
    top = np.zeros(len(tiled), np.int32)
    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    int_ce = jax.jit(xj.softmax_cross_entropy_with_integer_labels)(tiled, top)
    np.testing.assert_allclose(int_ce, exact.value[0], rtol=rtol, err_msg="integer labels")
    one_hot = np.eye(c, dtype=dtype)[top]
    dense_ce = jax.jit(xj.softmax_cross_entropy)(tiled, one_hot)
    np.testing.assert_allclose(dense_ce, exact.value[0], rtol=rtol, err_msg="dense targets")
    entropy = ref.value_ref("entropy_from_logits", {"logits": z[:1].astype(dtype)})
    got = jax.jit(xj.entropy_from_logits)(tiled)
    np.testing.assert_allclose(got, entropy.value[0], rtol=rtol, err_msg="entropy")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_log_softmax_jvp_of_subnormal_probabilities(self, dtype):
    # d log p_0 = Σ_{j≠0} p_j (dz_0 - dz_j) at a class winning by 85 and 90 nats (float32;
    # 705 and 710 in float64): the terms of p_j = e^{-90} are each subnormal, flushed on the
    # CPU, yet 0.7% of the normal tangent 2.4e-37 (it came out 7.4e-3 off). Oracle: mpmath.
    _f32_or_skip(self, dtype)
    top = 80.0 if dtype == np.float32 else 700.0
    z = np.array([top, -5.0, -10.0, -10.0, -10.0], dtype)
    v = np.array([1.0, -1.0, 0.5, 2.0, -0.3], dtype)
    zm, vm = [mpmath.mpf(float(x)) for x in z], [mpmath.mpf(float(x)) for x in v]
    with mpmath.workdps(50):
      log_norm = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in zm))
      p = [mpmath.exp(x - log_norm) for x in zm]
      mean = mpmath.fsum(a * b for a, b in zip(p, vm, strict=True))
      rest = mpmath.fsum(p[j] * (vm[0] - vm[j]) for j in range(1, 5))
      want = [float(rest)] + [float(vm[i] - mean) for i in range(1, 5)]
    self.assertGreater(want[0], np.finfo(dtype).tiny)  # a normal number
    for where in (None, np.ones(z.shape, bool)):
      f = jax.jit(
        lambda z, v, where=where: jax.jvp(
          functools.partial(xj.log_softmax, where=where), (z,), (v,)
        )
      )
      np.testing.assert_allclose(f(z, v)[1], want, rtol=4 * ref.RTOL[np.dtype(dtype)])

  @parameterized.named_parameters(_grids.dtype_params())
  def test_vmapped_jvp_keeps_subnormal_terms(self, dtype):
    # jax.vmap of a per-example JVP (per-example HVPs, influence functions) contracted the
    # partials plainly: at z = [80, -5, -10, -10, -10] (float32; 700 in float64) each
    # q_j = e^{-90} is flushed, and the cross-entropies' tangent -2.4e-37 came out 0.7%
    # off (the unbatched JVP was right). A batch now runs the fast paths' one-pass formula
    # on all its rows. Oracle: mpmath; tangents batched along axis 0 and along axis 1.
    _f32_or_skip(self, dtype)
    top = 80.0 if dtype == np.float32 else 700.0
    z = np.array([[top, -5.0, -10.0, -10.0, -10.0], [0.5, -0.25, 0.125, 1.0, -2.0]], dtype)
    v = np.array([[1.0, -1.0, 0.5, 2.0, -0.3], [0.3, 2.0, -1.0, 0.25, 1.5]], dtype)
    one_hot = np.eye(5, dtype=dtype)[[0, 0]]
    calls = {
      "integer labels": lambda z, v: jax.jvp(
        lambda z: xj.softmax_cross_entropy_with_integer_labels(z, 0), (z,), (v,)
      )[1],
      "dense": lambda z, v: jax.jvp(lambda z: xj.softmax_cross_entropy(z, one_hot[0]), (z,), (v,))[
        1
      ],
      "entropy": lambda z, v: jax.jvp(xj.entropy_from_logits, (z,), (v,))[1],
    }
    with mpmath.workdps(400):  # ∂H/∂z_0 = -q_0 (log q_0 + H): 300+ digits cancel in float64
      want = {"integer labels": [], "entropy": []}
      for row, tangent in zip(z, v, strict=True):
        zm = [mpmath.mpf(float(x)) for x in row]
        vm = [mpmath.mpf(float(x)) for x in tangent]
        log_norm = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in zm))
        log_q = [x - log_norm for x in zm]
        q = [mpmath.exp(x) for x in log_q]
        h = -mpmath.fsum(a * b for a, b in zip(q, log_q, strict=True))
        # d(-log q_0) = Σ_j q_j v_j - v_0 = Σ_{j≠0} q_j (v_j - v_0)
        ce = mpmath.fsum(q[j] * (vm[j] - vm[0]) for j in range(1, 5))
        ent = -mpmath.fsum(q[j] * (log_q[j] + h) * vm[j] for j in range(5))
        want["integer labels"].append(float(ce))
        want["entropy"].append(float(ent))
    want["dense"] = want["integer labels"]
    self.assertLess(-want["integer labels"][0], 1e-30)  # the tail row's tangent is tiny...
    self.assertGreater(-want["integer labels"][0], np.finfo(dtype).tiny)  # ...and normal

    @jax.jit
    def batched(z, v):
      return {
        name: (jax.vmap(f)(z, v), jax.vmap(f, in_axes=(0, 1))(z, v.T)) for name, f in calls.items()
      }

    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    for name, (got, got_t) in batched(z, v).items():
      np.testing.assert_allclose(got, want[name], rtol=rtol, err_msg=name)
      np.testing.assert_allclose(got_t, want[name], rtol=rtol, err_msg=f"{name}, in_axes=(0, 1)")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_vmap_of_a_per_example_call_is_the_batched_call(self, dtype):
    # A per-example loss under jax.vmap ran the fast paths one example at a time: their
    # lax.cond became a select of both branches and fix_rows' while_loop ran per example
    # (5x the batched time), and the statistics took other branches than the batched call
    # (the integer-label loss and the entropy differed in the last bits). The fused passes
    # now batch as one call on all rows: value and JVP equal the batched call bit for bit,
    # on a batch with confident rows, a +inf logit and a row with one finite class.
    _f32_or_skip(self, dtype)
    rng = np.random.default_rng(0)
    rows = 64
    z = 3 * rng.normal(size=(rows, CLASSES[-1]))
    z[::4, 0] += 40.0
    z[5, 3] = np.inf
    z[6, :] = -np.inf
    z[6, 2] = 0.0
    z = z.astype(dtype)
    labels = np.arange(rows, dtype=np.int32) % CLASSES[-1]
    t = _grids.softmax64(rng.normal(size=z.shape)).astype(dtype)
    v = rng.normal(size=z.shape).astype(dtype)
    calls = {
      "integer labels": lambda z, y, t: xj.softmax_cross_entropy_with_integer_labels(z, y),
      "dense": lambda z, y, t: xj.softmax_cross_entropy(z, t),
      "entropy": lambda z, y, t: xj.entropy_from_logits(z),
    }

    @jax.jit
    def both(z, y, t, v):
      out = {}
      for name, f in calls.items():
        jvp = lambda z, v, y, t, f=f: jax.jvp(lambda z: f(z, y, t), (z,), (v,))[1]
        out[name] = (f(z, y, t), jax.vmap(f)(z, y, t), jvp(z, v, y, t), jax.vmap(jvp)(z, v, y, t))
      return out

    for name, (value, vmapped, tangent, vmapped_tangent) in both(z, labels, t, v).items():
      np.testing.assert_array_equal(vmapped, value, err_msg=f"{name}: value")
      np.testing.assert_array_equal(vmapped_tangent, tangent, err_msg=f"{name}: jvp")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_fast_jvp_where_the_gradient_is_zero(self, dtype):
    # The dense cross-entropy at equal logits with uniform targets: ∂H/∂z = q - t = 0, so
    # the JVP along any tangent is 0. The fast path's one-pass JVP formed q_j ×e^{16} as
    # e^{d_j - L + 16}, and adding 16 rounded away the low digits of d_j - L (up to 1e-6
    # relative in float32): -2.8e-7 along e_0 at C = 2. Unbatched and under vmap.
    _f32_or_skip(self, dtype)
    for num_classes in (2, 4):
      z = np.zeros((3, num_classes), dtype)
      t = np.full((3, num_classes), 1 / num_classes, dtype)
      tangents = np.eye(num_classes, dtype=dtype)

      def jvp(v, z=z, t=t):
        return jax.jvp(
          lambda z: xj.softmax_cross_entropy(z, t), (z,), (jnp.broadcast_to(v, z.shape),)
        )[1]

      got = jax.jit(jax.vmap(jvp))(tangents)
      atol = np.finfo(dtype).eps / 2  # the rounding of one partial of size 1/C
      np.testing.assert_allclose(got, 0, atol=atol, err_msg=f"C = {num_classes}, vmap")
      for v in tangents:
        np.testing.assert_allclose(jvp(v), 0, atol=atol, err_msg=f"C = {num_classes}, {v}")

  def test_garbage_tangents_of_excluded_entries(self):
    # SPEC §2: an excluded entry contributes exactly 0 to the JVP whatever it holds, its
    # tangent included (a NaN tangent met a zero partial: 0·NaN = NaN on the paths that
    # masked inside the custom_jvp). Oracle: the JVP with a 0 tangent there, which must be
    # bit-identical.
    dtype = _grids.DTYPES[0]
    rng = np.random.default_rng(3)
    where = np.array([[True, True, False, True], [False, True, True, True]])
    z = rng.normal(size=where.shape).astype(dtype)
    t = _grids.softmax64(rng.normal(size=where.shape)).astype(dtype)
    labels = np.array([0, 3])
    calls = {
      "softmax_cross_entropy_with_integer_labels": lambda x: (
        xj.softmax_cross_entropy_with_integer_labels(x, labels, where=where, label_smoothing=0.1)
      ),
      "softmax_cross_entropy": lambda x: xj.softmax_cross_entropy(x, t, where=where),
      "softmax_cross_entropy (targets)": lambda x: xj.softmax_cross_entropy(z, x, where=where),
      "entropy_from_logits": lambda x: xj.entropy_from_logits(x, where=where),
      "kl_divergence_from_logits": lambda x: xj.kl_divergence_from_logits(x, z[::-1], where=where),
      "kl_divergence_from_logits (q)": lambda x: xj.kl_divergence_from_logits(z, x, where=where),
      "poly_loss_cross_entropy": lambda x: xj.poly_loss_cross_entropy(x, t, where=where),
      "log_softmax": lambda x: xj.log_softmax(x, where=where),
    }
    tangent = rng.normal(size=where.shape).astype(dtype)
    for name, f in calls.items():
      x = t if "targets" in name else z
      garbage = jnp.where(where, jnp.asarray(x), jnp.nan)  # NaN primal there as well
      # One program per call, for both tangents.
      jvp = jax.jit(lambda x, dx, f=f: jax.jvp(f, (x,), (dx,)))
      got = jvp(garbage, jnp.where(where, tangent, jnp.nan))
      want = jvp(garbage, jnp.where(where, tangent, 0))
      chex.assert_trees_all_equal(got, want, custom_message=name)
      self.assertTrue(np.all(np.isfinite(got[1])), name)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_hessian_of_a_dominant_class(self, dtype):
    # ∂²/∂z_k² at a class winning by 20 nats is q_k (1 - q_k)·(...) ≈ 4e-9, once 0 or -0:
    # the derivative of log q_k was dz_k - Σ q dz, which cancels (now the shift c carries
    # dz_k and the sum runs over the other classes only). Every softmax measure whose
    # second derivative goes through log q: the integer-label loss, the dense one (hard,
    # soft and smoothed targets), the entropy and the poly loss, each on its fast path and
    # with `where`. Oracles: mpmath's Hessians (jets) of the dense loss and the entropy, and
    # the poly loss's closed form (1 + ε q_y) A - ε q_y (e_y - q)(e_y - q)ᵀ, A = diag q - qqᵀ,
    # in mpmath.
    margins = (20.0, 30.0, 60.0) if dtype == np.float32 else (40.0, 100.0, 600.0)
    rows = np.zeros((len(margins), 4), dtype)
    rows[:, 0], rows[:, 2], rows[:, 3] = -1.5, margins, 0.7
    hard, soft = (
      np.eye(4, dtype=dtype)[[2, 2, 2]],
      np.tile(np.array([0.05, 0.1, 0.8, 0.05], dtype), (3, 1)),
    )

    def jet_hessians(name, **arrays):
      jets, _ = ref.jets(name, {"logits": rows, **arrays})
      return np.array([np.array(j.hess[("logits", "logits")], np.float64) for j in jets])

    def poly_hessian(z, eps=2.0):
      log_norm = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in z))
      q = [mpmath.exp(mpmath.mpf(float(v)) - log_norm) for v in z]
      e = [mpmath.mpf(k == 2) - q[k] for k in range(4)]
      e[2] = mpmath.fsum(q[k] for k in range(4) if k != 2)  # 1 - q_y, exactly
      a = [[q[j] * (j == k) - q[j] * q[k] for k in range(4)] for j in range(4)]
      a[2][2] = q[2] * e[2]
      return [
        [(1 + eps * q[2]) * a[j][k] - eps * q[2] * e[j] * e[k] for k in range(4)] for j in range(4)
      ]

    exact = {
      "hard": jet_hessians("softmax_cross_entropy", targets=hard),
      "soft": jet_hessians("softmax_cross_entropy", targets=soft),
      "smoothed": jet_hessians("softmax_cross_entropy", targets=soft, label_smoothing=0.1),
      "entropy": jet_hessians("entropy_from_logits"),
      "poly": np.array([np.array(poly_hessian(z), np.float64) for z in rows]),
    }
    everywhere = np.ones(4, bool)
    calls = {
      ("hard", "integer"): lambda z: xj.softmax_cross_entropy_with_integer_labels(z, 2),
      ("hard", "integer, where"): lambda z: xj.softmax_cross_entropy_with_integer_labels(
        z, 2, where=everywhere
      ),
      ("hard", "integer, smoothing"): lambda z: xj.softmax_cross_entropy_with_integer_labels(
        z, 2, label_smoothing=0.1
      ),  # a smoothed one-hot target's Hessian is the one-hot's: Σ t' = 1
      ("hard", "dense"): lambda z: xj.softmax_cross_entropy(z, hard[0]),
      ("soft", "dense"): lambda z: xj.softmax_cross_entropy(z, soft[0]),
      ("soft", "dense, where"): lambda z: xj.softmax_cross_entropy(z, soft[0], where=everywhere),
      ("smoothed", "dense"): lambda z: xj.softmax_cross_entropy(z, soft[0], label_smoothing=0.1),
      ("entropy", "fast"): xj.entropy_from_logits,
      ("entropy", "where"): lambda z: xj.entropy_from_logits(z, where=everywhere),
      ("poly", "fast"): lambda z: xj.poly_loss_cross_entropy(z, hard[0]),
      ("poly", "where"): lambda z: xj.poly_loss_cross_entropy(z, hard[0], where=everywhere),
    }

    # Forward over reverse (jax.hessian) and reverse over reverse (jacrev of grad, as
    # double backprop and MAML take it): the transpose of d(z_k - c) sent the class k its
    # own cotangent and minus the sum of all of them, g_k - Σ_j g_j, which rounded the tail
    # Σ_{j≠k} g_j away (0 at a class winning by 20 nats) until the shift's tangent was
    # made an exact 0 there.
    transforms = {"hessian": jax.hessian, "jacrev(grad)": lambda f: jax.jacrev(jax.grad(f))}

    @jax.jit  # one program: every call's Hessians of every row
    def hessians(z_RxC):
      return [[jax.vmap(t(f))(z_RxC) for t in transforms.values()] for f in calls.values()]

    tol = dict(rtol=4 * ref.RTOL[np.dtype(dtype)], atol=8 * np.finfo(dtype).tiny)  # README
    for got, (oracle, call) in zip(hessians(rows), calls, strict=True):
      for got_t, transform in zip(got, transforms, strict=True):
        msg = f"{oracle}: {call}, {transform}"
        np.testing.assert_allclose(got_t, exact[oracle], **tol, err_msg=msg)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_sigmoid_cross_entropy_hessian_in_both_tails(self, dtype):
    # ∂²/∂z² H(y, σ(z)) = σ(z)σ(-z) > 0 whatever the label: autodiff of the tail-exact
    # gradient's tanh(|z|/2) rounded 1 - tanh² to 0 and left -σ(z)σ(-z) wherever the label
    # disagreed with the sign of z (z = 20, y = 0: -2.1e-9). ∂²/∂z∂y = -(1 - ε). Oracle:
    # σ(z)σ(-z) in mpmath, for hard, soft and smoothed labels.
    big = (20.0, 30.0, 60.0, 87.0) if dtype == np.float32 else (40.0, 100.0, 600.0, 700.0)
    z = np.array([*big, *(-b for b in big), 0.5, -3.0], dtype)
    exact = np.array([float(1 / (2 + 2 * mpmath.cosh(mpmath.mpf(float(v))))) for v in z])

    @jax.jit  # one program: every label and smoothing
    def second_derivatives(z):
      out = []
      for y, eps in ((0.0, 0.0), (1.0, 0.0), (0.3, 0.0), (0.0, 0.2)):
        f = lambda z, y, eps=eps: xj.sigmoid_binary_cross_entropy(z, y, label_smoothing=eps)
        y = jnp.full_like(z, y)
        hess = jax.vmap(jax.hessian(f, argnums=(0, 1)))(z, y)
        out.append((hess[0][0], hess[0][1]))
      return out

    tol = dict(rtol=4 * ref.RTOL[np.dtype(dtype)], atol=8 * np.finfo(dtype).tiny)
    labels = ("y = 0", "y = 1", "y = 0.3", "y = 0, ε = 0.2")
    for (zz, zy), label, eps in zip(second_derivatives(z), labels, (0, 0, 0, 0.2), strict=True):
      np.testing.assert_allclose(zz, exact, **tol, err_msg=label)
      np.testing.assert_allclose(zy, np.full(z.shape, -(1 - eps)), rtol=tol["rtol"], err_msg=label)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_second_derivatives_at_small_probabilities(self, dtype):
    # ∂²/∂q² of p·log q is -p/q²: formed by JAX's rule for p/q as -p·q⁻², q⁻² overflowed at
    # q = 1e-20 (float32; 1e-160 in float64) and the Hessians came out ±inf, the entropy's
    # with the wrong sign. Closed forms at p = q: H''(p) = -1/p (entropy, [0, 0] entry),
    # -1/p - 1/(1-p) (binary entropy), 1/q + 1/(1-q) (binary CE in q), 1/q (CE in q[0]).
    @jax.jit  # one program for every probability
    def second_derivatives(p):
      pair = jnp.stack([p, 1 - p])
      return {
        "entropy": jax.hessian(xj.entropy)(pair)[0, 0],
        "binary_entropy": jax.hessian(xj.binary_entropy)(p),
        "binary_cross_entropy": jax.hessian(xj.binary_cross_entropy, argnums=1)(p, p),
        "cross_entropy": jax.hessian(xj.cross_entropy, argnums=1)(pair, pair)[0, 0],
      }

    for small in (1e-20, 1e-30) if dtype == np.float32 else (1e-160, 1e-200):
      p = dtype(small)
      one = 1 / np.float64(p)
      want = {
        "entropy": -one,
        "binary_entropy": -one - 1 / (1 - np.float64(p)),
        "binary_cross_entropy": one + 1 / (1 - np.float64(p)),
        "cross_entropy": one,
      }
      for name, value in second_derivatives(p).items():
        np.testing.assert_allclose(value, want[name], rtol=ref.RTOL[np.dtype(dtype)], err_msg=name)


def _mp_sigmoid(x):
  return 1 / (1 + mpmath.exp(-x))


def _mp_focal(z, y, gamma, alpha):
  """α_t·(1 - p_t)^γ·H(y, σ(z)), with 0·log 0 = 0 at hard labels."""
  p, q = _mp_sigmoid(z), _mp_sigmoid(-z)
  ce = -(y * mpmath.log(p) if y else 0) - ((1 - y) * mpmath.log(q) if y != 1 else 0)
  return ce * (y * q + (1 - y) * p) ** gamma * (alpha * y + (1 - alpha) * (1 - y))


def _mp_hessian(f, x):
  """The Hessian of f at the point x (a tuple of floats), by mpmath's numerical derivatives."""
  x = [mpmath.mpf(float(v)) for v in x]
  n = len(x)
  rows = []
  for i in range(n):
    order = [[int(k == i) + int(k == j) for k in range(n)] for j in range(n)]
    rows.append([float(mpmath.diff(f, x, tuple(o))) for o in order])
  return np.array(rows)


class SecondDerivativeTest(chex.TestCase):
  """Hessians against mpmath, and the symmetry of mixed second derivatives.

  Found by a review with its own mpmath reference (each failed before its fix): the second
  derivatives of log σ (0 from z = -15 in float32), σ and the normalised tanh near 0, the
  focal loss at z = 0 (63% off) and at hard labels (NaN), the mixed ∂²/∂p∂q at p = 0 of
  the probability measures (0, where ∂²/∂q∂p was right), and an HVP of the integer-label
  cross-entropy at q_y = 1e-20 (NaN).
  """

  @parameterized.named_parameters(_grids.dtype_params())
  def test_sigmoid_family(self, dtype):
    # (log σ)'' = -σ(z)σ(-z), σ'' = σ(z)σ(-z)(σ(-z) - σ(z)), d²/dz² σ(2z) = 4σ''(2z).
    _f32_or_skip(self, dtype)
    tail = (-20.0, -40.0) if dtype == np.float32 else (-40.0, -300.0)
    z = np.array([*tail, -12.0, -1e-4, 1e-8, 1e-6, 0.3, 3.0, 20.0], dtype)

    def sigmoid2(x):
      return _mp_sigmoid(x) * _mp_sigmoid(-x) * (_mp_sigmoid(-x) - _mp_sigmoid(x))

    exact = {
      "log_sigmoid": [
        -_mp_sigmoid(mpmath.mpf(float(v))) * _mp_sigmoid(-mpmath.mpf(float(v))) for v in z
      ],
      "sigmoid": [sigmoid2(mpmath.mpf(float(v))) for v in z],
      "tanh_probability": [4 * sigmoid2(2 * mpmath.mpf(float(v))) for v in z],
    }

    @jax.jit
    def second_derivatives(z):
      return {name: jax.vmap(jax.hessian(getattr(xj, name)))(z) for name in exact}

    for name, got in second_derivatives(z).items():
      want = np.array(exact[name], np.float64)
      np.testing.assert_allclose(got, want, rtol=4 * ref.RTOL[np.dtype(dtype)], err_msg=name)

  @parameterized.named_parameters(_grids.dtype_params())
  def test_focal_loss_hessians(self, dtype):
    # At z = 0 in the logits (soft labels too), and in all four arguments (z, y, γ, α) at
    # hard labels, where the labels' derivatives of log(1 - p_t) were NaN. z = 17, y = 0 is
    # a confidently wrong prediction: 1 - p_t = σ(17) rounds next to 1 in float32, and the
    # γ-derivative took log of the rounded value.
    _f32_or_skip(self, dtype)
    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    zero_points = [(0.0, y, g, a) for y in (0.0, 0.3) for g in (0.5, 2.0) for a in (0.25, 1.0)]
    full_points = [(z, y, 2.0, 0.25) for z in (0.0, -2.0, 3.0, 17.0) for y in (0.0, 1.0)]

    def loss(z, y, g, a):
      return xj.sigmoid_focal_loss(z, y, gamma=g, alpha=a)

    @jax.jit
    def second_derivatives(zero_points, full_points):
      zz = jax.vmap(jax.hessian(loss))(*zero_points.T)
      full = jax.vmap(jax.hessian(loss, argnums=(0, 1, 2, 3)))(*full_points.T)
      return zz, jnp.stack([jnp.stack(row, -1) for row in full], -2)

    zz, full = second_derivatives(np.array(zero_points, dtype), np.array(full_points, dtype))
    for got, x in zip(zz, zero_points, strict=True):
      want = _mp_hessian(lambda z, x=x: _mp_focal(z, *x[1:]), x[:1])[0, 0]
      np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"∂²/∂z² at {x}")
    for got, x in zip(full, full_points, strict=True):
      want = _mp_hessian(_mp_focal, x)
      np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-30, err_msg=f"Hessian at {x}")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_focal_label_gradient_next_to_zero(self, dtype):
    # ∂FL/∂y holds γ m^(γ-1) (σ(-z) - σ(z)) ce: the difference of two rounded sigmoids was 0
    # for |z| below an ulp of ½ and 58% off at z = 1e-8 (found by an independent probe);
    # it is -tanh(z/2).
    _f32_or_skip(self, dtype)
    # No α (with α the term is dwarfed by ∂α_t/∂y·FL); _mp_focal's α = ½ halves the loss.
    points = [(z, y, g) for z in (1e-8, -1e-6, 1e-3) for y in (1.0, 0.3) for g in (0.5, 2.0)]
    loss = lambda z, y, g: xj.sigmoid_focal_loss(z, y, gamma=g)
    grad_y = jax.jit(jax.vmap(jax.grad(loss, argnums=1)))(*np.array(points, dtype).T)
    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    for got, x in zip(grad_y, points, strict=True):
      x = tuple(float(np.asarray(v, dtype)) for v in x)
      fl = lambda y, x=x: 2 * _mp_focal(x[0], y, x[2], 0.5)
      want = float(mpmath.diff(fl, mpmath.mpf(x[1])))
      np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"∂/∂y at {x}")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_mixed_second_derivatives_at_zero_probability(self, dtype):
    # ∂²/∂p_j∂q_j of Σ p log(p/q) (and of H(p, q)) is -1/q_j, also where p_j = 0: the guard
    # of 0·log 0 dropped it in one order of differentiation. Binary CE at p = 0:
    # -1/q - 1/(1-q). With pos_weight w: ∂²/∂z∂y = -σ(z) - w·σ(-z), ∂²/∂w∂y = log(1 + e^{-z}).
    _f32_or_skip(self, dtype)
    p, q = np.array([0.5, 0.5, 0.0], dtype), np.array([0.3, 0.3, 0.4], dtype)

    @jax.jit
    def mixed():
      out = {}
      for name in ("cross_entropy", "kl_divergence", "generalized_kl_divergence", "js_divergence"):
        f = getattr(xj, name)
        out[name] = (
          jax.jacfwd(jax.grad(f, argnums=1), argnums=0)(p, q),
          jax.jacfwd(jax.grad(f, argnums=0), argnums=1)(p, q),
        )
      out["binary_cross_entropy"] = jax.hessian(xj.binary_cross_entropy, argnums=(0, 1))(
        dtype(0.0), dtype(0.1)
      )
      bce = lambda z, y, w: xj.sigmoid_binary_cross_entropy(z, y, pos_weight=w)
      out["pos_weight"] = jax.hessian(bce, argnums=(0, 1, 2))(dtype(-2.0), dtype(0.0), dtype(3.0))
      return out

    got = mixed()
    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    for name in ("cross_entropy", "kl_divergence", "generalized_kl_divergence"):
      qp, pq = got[name]
      np.testing.assert_allclose(qp, np.diag(-1 / q.astype(np.float64)), rtol=rtol, err_msg=name)
      np.testing.assert_allclose(pq, qp.T, rtol=rtol, err_msg=name)
    # JS: ∂JS/∂q_j = ½·log(q_j / m_j), m = (p + q)/2, so ∂²/∂p_j∂q_j = -1 / (2 (p_j + q_j)).
    qp, pq = got["js_divergence"]
    want = np.diag(-1 / (2 * (p.astype(np.float64) + q)))
    np.testing.assert_allclose(qp, want, rtol=rtol, err_msg="js_divergence")
    np.testing.assert_allclose(pq, want, rtol=rtol, err_msg="js_divergence")
    h = got["binary_cross_entropy"]
    for entry in (h[0][1], h[1][0]):
      np.testing.assert_allclose(entry, -1 / 0.1 - 1 / 0.9, rtol=rtol, err_msg="binary CE")
    h = got["pos_weight"]
    s = float(_mp_sigmoid(mpmath.mpf(-2)))
    for entry in (h[0][1], h[1][0]):
      np.testing.assert_allclose(entry, -s - 3 * (1 - s), rtol=rtol, err_msg="∂²/∂z∂y")
    for entry in (h[1][2], h[2][1]):
      np.testing.assert_allclose(
        entry, float(mpmath.log1p(mpmath.e**2)), rtol=rtol, err_msg="∂²/∂w∂y"
      )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_softmax_family_hessian_at_a_misclassified_label(self, dtype):
    # Two classes, z = [M, s] at s = 0: the Hessian in s of the integer-label CE is
    # q_1 q_0 = σ(M)σ(-M) whatever the label, of KL(p‖softmax([s, 0])) at s = -M with
    # p = softmax([M, 0]) the same, and of the poly-1 loss in closed form. The partial at a
    # label that is not the top class is expm1(log q_y); JAX's rule for expm1 forms its
    # derivative as expm1 + 1, 0 once q_y < 6e-8 (the Hessians were 0 or 6% off).
    _f32_or_skip(self, dtype)
    margins = (16.0, 20.0, 30.0) if dtype == np.float32 else (30.0, 40.0, 300.0)

    @jax.jit
    def second_derivatives(m):
      def at(s, f):
        return jax.hessian(f)(jnp.zeros((), dtype) + s)

      out = {}
      for label in (0, 1):
        f = lambda s, label=label: xj.softmax_cross_entropy_with_integer_labels(
          jnp.stack([m, s]), label
        )
        out[f"int label {label}"] = at(0.0, f)
      p_logits = jnp.stack([m, jnp.zeros((), dtype)])
      kl = lambda s: xj.kl_divergence_from_logits(p_logits, jnp.stack([s, jnp.zeros((), dtype)]))
      out["kl"] = at(-m, kl)
      for t0, eps in ((0.0, 2.0), (1.0, 2.0), (0.3, 1.0)):
        t = jnp.asarray([t0, 1 - t0], dtype)
        f = lambda s, t=t, eps=eps: xj.poly_loss_cross_entropy(jnp.stack([m, s]), t, epsilon=eps)
        out[f"poly t0={t0} eps={eps}"] = at(0.0, f)
      return out

    rtol = 4 * ref.RTOL[np.dtype(dtype)]
    for m in margins:
      mm = mpmath.mpf(m)
      curvature = float(_mp_sigmoid(mm) * _mp_sigmoid(-mm))
      want = {"int label 0": curvature, "int label 1": curvature, "kl": curvature}
      # poly-1 = CE + ε(1 - p_t), p_t = t_0 q_0 + t_1 q_1: its second derivative in s is
      # q_0 q_1 (1 - ε (t_1 - t_0)(q_0 - q_1)), with q_0 = σ(M), q_1 = σ(-M).
      q0, q1 = _mp_sigmoid(mm), _mp_sigmoid(-mm)
      for t0, eps in ((0.0, 2.0), (1.0, 2.0), (0.3, 1.0)):
        t1 = 1 - mpmath.mpf(t0)
        want[f"poly t0={t0} eps={eps}"] = float(q0 * q1 * (1 - eps * (t1 - t0) * (q0 - q1)))
      for name, got in second_derivatives(dtype(m)).items():
        np.testing.assert_allclose(got, want[name], rtol=rtol, err_msg=f"{name} at M = {m}")

  @parameterized.named_parameters(_grids.dtype_params())
  def test_poly_mixed_derivative_in_logits_and_epsilon(self, dtype):
    # ∂²L/∂z_k∂ε of the poly-1 loss is q_k (p_t - t_k). With soft targets and a class k
    # winning by a large margin, r_k - (1 - p_t) (r_k = Σ_{j≠k} t_j) cancelled in the
    # partial ∂L/∂z_k: ∂/∂ε of it was 0 (exact -2.7e-10 at z = [20, 0], t = [0.57, 0.43]).
    # Both orders, forward over reverse and reverse over reverse, against mpmath.
    _f32_or_skip(self, dtype)
    margins = (17.0, 20.0, 40.0) if dtype == np.float32 else (40.0, 100.0, 300.0)
    rows = [[m, 0.0, -1.0] for m in margins] + [[-1.0, m, 0.5] for m in margins]
    z_RxC = np.asarray(rows, dtype)
    t = np.asarray([0.57, 0.3, 0.13], dtype)

    def loss(z, eps):
      return xj.poly_loss_cross_entropy(z, t, epsilon=eps)

    @jax.jit
    def mixed(z_RxC):
      eps = jnp.ones((z_RxC.shape[0],), dtype)
      fwd = jax.vmap(jax.hessian(loss, argnums=(0, 1)))(z_RxC, eps)
      rev = jax.vmap(jax.jacrev(jax.grad(loss, argnums=(0, 1)), argnums=(0, 1)))(z_RxC, eps)
      return {
        "hessian ∂ε∂z": fwd[0][1],
        "hessian ∂z∂ε": fwd[1][0],
        "jacrev(grad) ∂ε∂z": rev[0][1],
        "jacrev(grad) ∂z∂ε": rev[1][0],
      }

    want = []
    with mpmath.workdps(400):  # p_t - t_k ≈ e^{-300} next to t_k: 130+ digits cancel
      for z in z_RxC:
        zm = [mpmath.mpf(float(v)) for v in z]
        log_norm = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in zm))
        q = [mpmath.exp(v - log_norm) for v in zm]
        tm = [mpmath.mpf(float(v)) for v in t]
        p_t = mpmath.fsum(a * b for a, b in zip(tm, q, strict=True))
        want.append([float(qk * (p_t - tk)) for qk, tk in zip(q, tm, strict=True)])
    for name, got in mixed(z_RxC).items():
      # Only the dominant classes (k = 0 on the first rows, k = 1 on the others): at the
      # other classes p_t - t_k cancels in the exact value too (ill-conditioned in t).
      for r, k in enumerate([0] * len(margins) + [1] * len(margins)):
        np.testing.assert_allclose(
          got[r, k], want[r][k], rtol=4 * ref.RTOL[np.dtype(dtype)], err_msg=f"{name}, row {r}"
        )

  @parameterized.named_parameters(_grids.dtype_params())
  def test_integer_label_hvp_at_a_tiny_probability(self, dtype):
    # -log q_y at q_y = 1e-20 (float32; 1e-200 in float64): the HVP along a class other
    # than the label is exactly 0 (it was NaN: q_y² underflowed), along the label 1/q_y².
    _f32_or_skip(self, dtype)
    tiny = dtype(1e-20 if dtype == np.float32 else 1e-200)
    q = np.array([tiny, 1, 0], dtype)

    @jax.jit
    def hvps(q):
      grad = jax.grad(lambda q: xj.cross_entropy_with_integer_labels(0, q))
      along = lambda v: jax.jvp(grad, (q,), (jnp.asarray(v, q.dtype),))[1]
      return along([0.0, 1.0, 0.0]), along([1.0, 0.0, 0.0])

    off, on = hvps(q)
    np.testing.assert_array_equal(off, 0.0)
    want = mpmath.mpf(float(tiny)) ** -2  # 1e40 (1e400): beyond the float range, +inf
    want = np.inf if want > np.finfo(dtype).max else float(want)
    np.testing.assert_allclose(on, [want, 0, 0], rtol=ref.RTOL[np.dtype(dtype)])


if __name__ == "__main__":
  absltest.main()
