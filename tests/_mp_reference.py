"""Independent 50-digit reference (mpmath) for every information measure of xent_jax.

Each reference function takes numpy float32/float64 arrays, converts every element *exactly*
to an ``mpf`` (``mpf(float(x))`` is exact for both dtypes), evaluates the textbook formula at
50 significant digits and returns a :class:`Ref`:

* ``value``: the exact value rounded to float64 (``±inf`` where the exact value is infinite,
  NaN for an out-of-range integer label);
* ``abs_cond``: the *inherent* first-order change of the exact value when every input is moved
  by one unit in the last place of its dtype, Σ_i |∂f/∂x_i| · ulp(x_i), with the derivatives
  written out analytically and evaluated in mpmath. The relative condition is
  κ = abs_cond / |value|.

SPEC §2 allows an error of max(rtol, 4κ) relative (rtol = 1e-6 in float32, 1e-13 in float64)
wherever the exact value is a normal number of the dtype; :func:`assert_accurate` applies that
rule, and checks zero or subnormal exact values absolutely instead.

Conventions (SPEC §1): reductions run over the last axis of 2-D ``[N, C]`` arrays; ``where``
(same shape) excludes classes; a ``-inf`` logit is a class of probability 0; 0·log 0 = 0; an
empty distribution has entropy and cross-entropy 0; exact inputs (an exact 0 probability, a
``-inf`` logit, an integer label) contribute nothing to ``abs_cond``.

Nothing here imports xent_jax: it is the oracle the library is measured against.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import NamedTuple

import mpmath
import numpy as np
from mpmath import mp

mp.dps = 50

RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}
NINF = mpmath.ninf
INF = mpmath.inf
ZERO = mpmath.mpf(0)
ONE = mpmath.mpf(1)


class Ref(NamedTuple):
  """A reference value (float64) and its inherent absolute condition Σ|∂f/∂x|·ulp(x)."""

  value: np.ndarray
  abs_cond: np.ndarray


# ----------------------------------------------------------------------------------------------
# Exact conversion and units in the last place.


_CONVERSION_MEMO: dict = {}


def _memoised(kind: str, x: np.ndarray, convert: Callable[[np.ndarray], list]) -> list:
  """Converting 32000-class rows costs seconds: reuse the conversion of an identical array."""
  x = np.asarray(x)
  if x.size < 4096:
    return convert(x)
  key = (kind, x.dtype.str, x.shape, x.tobytes())
  if key not in _CONVERSION_MEMO:
    _CONVERSION_MEMO[key] = convert(x)
  return _CONVERSION_MEMO[key]


def _mpfs(x: np.ndarray) -> list:
  """Every element of ``x`` as an exact mpf (flattened)."""
  return _memoised("mpf", x, lambda x: [mpmath.mpf(float(v)) for v in x.ravel()])


def _ulps(x: np.ndarray) -> list:
  """ulp(x) in the dtype of ``x`` as mpf; 0 for ±inf and NaN (an exact, unmovable input)."""

  def convert(x):
    with np.errstate(invalid="ignore"):
      u = np.where(np.isfinite(x), np.spacing(np.abs(x)), 0).astype(x.dtype)
    return [mpmath.mpf(float(v)) for v in u.ravel()]

  return _memoised("ulp", x, convert)


def _to_f64(values: list, shape) -> np.ndarray:
  return np.array([float(v) for v in values], dtype=np.float64).reshape(shape)


def _rows(x: np.ndarray) -> tuple[list[list], tuple[int, int]]:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"reference reductions take [N, C] arrays, got shape {x.shape}")
  flat = _mpfs(x)
  n, c = x.shape
  return [flat[i * c : (i + 1) * c] for i in range(n)], (n, c)


def _row_ulps(x: np.ndarray) -> list[list]:
  flat = _ulps(x)
  c = x.shape[1]
  return [flat[i * c : (i + 1) * c] for i in range(x.shape[0])]


def _row_masks(where, shape) -> list[list[bool]]:
  if where is None:
    return [[True] * shape[1] for _ in range(shape[0])]
  return np.broadcast_to(np.asarray(where, dtype=bool), shape).tolist()


def _scale(base) -> mpmath.mpf:
  return ONE if base is None else 1 / mpmath.log(mpmath.mpf(base))


def _finish(values: list, conds: list, shape, base=None) -> Ref:
  s = _scale(base)
  return Ref(_to_f64([v * s for v in values], shape), _to_f64([abs(c * s) for c in conds], shape))


def _xlogy(x, y):
  """x log y with 0 · log(anything) = 0."""
  if x == 0:
    return ZERO
  if y == 0:
    return NINF if x > 0 else INF
  return x * mpmath.log(y)


def _one_minus_exp(log_p):
  """1 - e^log_p without cancellation (log_p ≤ 0)."""
  return -mpmath.expm1(log_p)


def _sigmoid(z):
  if z == INF:
    return ONE
  if z == NINF:
    return ZERO
  return 1 / (1 + mpmath.exp(-z))


def _softplus(z):
  """log(1 + e^z), exact in both tails."""
  if z == INF:
    return INF
  if z == NINF:
    return ZERO
  return mpmath.log1p(mpmath.exp(z))


# ----------------------------------------------------------------------------------------------
# Softmax core (memoised per row: the 32000-class rows are shared by several measures).

_SOFTMAX_MEMO: dict = {}


class _Softmax(NamedTuple):
  log_p: list  # mpf, -inf for excluded / impossible classes
  p: list  # mpf
  present: list  # bool: class takes part in the distribution (valid and not -inf)
  valid: list  # bool: `where` is True
  empty: bool  # no class has positive probability


def _softmax_row(z: list, valid: list[bool]) -> _Softmax:
  key = (tuple(z), tuple(valid))
  if key in _SOFTMAX_MEMO:
    return _SOFTMAX_MEMO[key]
  present = [v and zi != NINF for zi, v in zip(z, valid, strict=True)]
  finite = [zi for zi, ok in zip(z, present, strict=True) if ok]
  if not finite:
    out = _Softmax([NINF] * len(z), [ZERO] * len(z), present, list(valid), True)
  else:
    # log Σ e^{z - m} = log1p(Σ over all but one maximum): 50 digits cannot hold 1 + e^-700.
    m = max(finite)
    rest = list(finite)
    rest.remove(m)
    log_norm = mpmath.log1p(mpmath.fsum(mpmath.exp(zi - m) for zi in rest))
    log_p = [(zi - m) - log_norm if ok else NINF for zi, ok in zip(z, present, strict=True)]
    p = [mpmath.exp(lp) if ok else ZERO for lp, ok in zip(log_p, present, strict=True)]
    out = _Softmax(log_p, p, present, list(valid), False)
  _SOFTMAX_MEMO[key] = out
  return out


def _softmax_rows(logits: np.ndarray, where=None):
  rows, shape = _rows(logits)
  masks = _row_masks(where, shape)
  return [_softmax_row(z, m) for z, m in zip(rows, masks, strict=True)], shape


# ----------------------------------------------------------------------------------------------
# softmax.py


def log_softmax(logits: np.ndarray, where=None) -> Ref:
  """log softmax(z)_i = z_i - LSE(z); ∂/∂z_j = δ_ij - p_j."""
  sms, shape = _softmax_rows(logits, where)
  values, conds = [], []
  for sm, u in zip(sms, _row_ulps(logits), strict=True):
    a = mpmath.fsum(pj * uj for pj, uj in zip(sm.p, u, strict=True))
    for lp, pi, ui, ok in zip(sm.log_p, sm.p, u, sm.present, strict=True):
      values.append(lp)
      conds.append(a + (1 - 2 * pi) * ui if ok else ZERO)
  return _finish(values, conds, shape)


def softmax(logits: np.ndarray, where=None) -> Ref:
  """softmax(z)_i; ∂p_i/∂z_j = p_i (δ_ij - p_j)."""
  sms, shape = _softmax_rows(logits, where)
  values, conds = [], []
  for sm, u in zip(sms, _row_ulps(logits), strict=True):
    a = mpmath.fsum(pj * uj for pj, uj in zip(sm.p, u, strict=True))
    for pi, ui in zip(sm.p, u, strict=True):
      values.append(pi)
      conds.append(pi * (a + (1 - 2 * pi) * ui))
  return _finish(values, conds, shape)


def _elementwise(fn: Callable, *arrays: np.ndarray, base=None) -> Ref:
  """Applies fn(*mpf values, *ulps) -> (value, abs_cond) elementwise."""
  arrays = np.broadcast_arrays(*[np.asarray(a) for a in arrays])
  values, conds = [], []
  cols = [_mpfs(a) for a in arrays] + [_ulps(a) for a in arrays]
  for args in zip(*cols, strict=True):
    v, c = fn(*args)
    values.append(v)
    conds.append(c)
  return _finish(values, conds, arrays[0].shape, base)


def sigmoid(x: np.ndarray) -> Ref:
  """σ(x); σ' = σ(1 - σ)."""

  def f(x, u):
    s = _sigmoid(x)
    return s, s * _sigmoid(-x) * u

  return _elementwise(f, x)


def log_sigmoid(x: np.ndarray) -> Ref:
  """log σ(x) = -softplus(-x); derivative 1 - σ(x)."""

  def f(x, u):
    return -_softplus(-x), _sigmoid(-x) * u

  return _elementwise(f, x)


def tanh_probability(x: np.ndarray) -> Ref:
  """(1 + tanh x)/2 = σ(2x); derivative 2σ(2x)(1 - σ(2x))."""

  def f(x, u):
    s, t = _sigmoid(2 * x), _sigmoid(-2 * x)
    return s, 2 * s * t * u

  return _elementwise(f, x)


def tanh_probability_grad(x: np.ndarray) -> Ref:
  """d/dx σ(2x) = 2σ(1-σ); second derivative 4σ(1-σ)(1-2σ)."""

  def f(x, u):
    s, t = _sigmoid(2 * x), _sigmoid(-2 * x)
    return 2 * s * t, abs(4 * s * t * (t - s)) * u

  return _elementwise(f, x)


# ----------------------------------------------------------------------------------------------
# entropy.py


def entropy(probs: np.ndarray, where=None, base=None) -> Ref:
  """H(p) = -Σ p log p (as given, not renormalised); ∂H/∂p_i = -(log p_i + 1)."""
  rows, shape = _rows(probs)
  masks = _row_masks(where, shape)
  values, conds = [], []
  for p, u, m in zip(rows, _row_ulps(probs), masks, strict=True):
    terms = [pi for pi, ok in zip(p, m, strict=True) if ok and pi != 0]
    us = [ui for pi, ui, ok in zip(p, u, m, strict=True) if ok and pi != 0]
    values.append(-mpmath.fsum(_xlogy(pi, pi) for pi in terms))
    conds.append(
      mpmath.fsum(abs(mpmath.log(pi) + 1) * ui for pi, ui in zip(terms, us, strict=True))
    )
  return _finish(values, conds, (shape[0],), base)


def entropy_from_logits(logits: np.ndarray, where=None, base=None) -> Ref:
  """H(softmax z) = -Σ q log q; ∂H/∂z_j = -q_j (log q_j + H)."""
  sms, shape = _softmax_rows(logits, where)
  values, conds = [], []
  for sm, u in zip(sms, _row_ulps(logits), strict=True):
    h = -mpmath.fsum(q * lq for q, lq, ok in zip(sm.p, sm.log_p, sm.present, strict=True) if ok)
    values.append(h)
    conds.append(
      mpmath.fsum(
        q * abs(lq + h) * ui
        for q, lq, ui, ok in zip(sm.p, sm.log_p, u, sm.present, strict=True)
        if ok
      )
    )
  return _finish(values, conds, (shape[0],), base)


def entropy_from_logits_grad(logits: np.ndarray, where=None) -> Ref:
  """g_j = ∂H/∂z_j = -q_j (log q_j + H), with the exact (O(C²)) condition of g."""
  sms, shape = _softmax_rows(logits, where)
  values, conds = [], []
  for sm, u in zip(sms, _row_ulps(logits), strict=True):
    idx = [k for k, ok in enumerate(sm.present) if ok]
    h = -mpmath.fsum(sm.p[k] * sm.log_p[k] for k in idx)
    for j in range(shape[1]):
      if not sm.present[j]:
        values.append(ZERO)
        conds.append(ZERO)
        continue
      qj, lj = sm.p[j], sm.log_p[j]
      values.append(-qj * (lj + h))
      # ∂g_j/∂z_k = -q_j q_k (... ) for k != j:  q_j q_k |l_k + l_j + 2H + 1|;
      # for k = j: q_j |(1 - q_j)(l_j + H + 1) - q_j (l_j + H)|.
      c = mpmath.fsum(sm.p[k] * abs(sm.log_p[k] + lj + 2 * h + 1) * u[k] for k in idx if k != j)
      c += abs((1 - qj) * (lj + h + 1) - qj * (lj + h)) * u[j]
      conds.append(qj * c)
  return _finish(values, conds, shape)


def binary_entropy_from_logits_grad(logits: np.ndarray) -> Ref:
  """g = -z σ(z) σ(-z); g' = -σσ' ... = -s t - z s t (t - s)."""

  def f(z, u):
    if z in (INF, NINF):
      return ZERO, ZERO
    s, t = _sigmoid(z), _sigmoid(-z)
    return -z * s * t, abs(s * t + z * s * t * (t - s)) * u

  return _elementwise(f, logits)


def binary_entropy(p: np.ndarray, base=None) -> Ref:
  """h(p) = -p log p - (1-p) log(1-p); h'(p) = log((1-p)/p)."""

  def f(p, u):
    v = -_xlogy(p, p) - (0 if p == 1 else (1 - p) * mpmath.log1p(-p))
    c = ZERO if p in (0, 1) else abs(mpmath.log((1 - p) / p)) * u
    return v, c

  return _elementwise(f, p, base=base)


def binary_entropy_from_logits(logits: np.ndarray, base=None) -> Ref:
  """h(σ(z)) = σ(z) softplus(-z) + σ(-z) softplus(z); derivative -z σ(z) σ(-z)."""

  def f(z, u):
    if z in (INF, NINF):
      return ZERO, ZERO
    s, t = _sigmoid(z), _sigmoid(-z)
    return s * _softplus(-z) + t * _softplus(z), abs(z) * s * t * u

  return _elementwise(f, logits, base=base)


# ----------------------------------------------------------------------------------------------
# cross_entropy.py


def cross_entropy(p: np.ndarray, q: np.ndarray, where=None, base=None) -> Ref:
  """H(p, q) = -Σ p log q; ∂/∂p_i = -log q_i, ∂/∂q_i = -p_i / q_i."""
  prow, shape = _rows(p)
  qrow, _ = _rows(q)
  masks = _row_masks(where, shape)
  values, conds = [], []
  for pr, qr, up, uq, m in zip(prow, qrow, _row_ulps(p), _row_ulps(q), masks, strict=True):
    ks = [k for k in range(shape[1]) if m[k]]
    values.append(-mpmath.fsum(_xlogy(pr[k], qr[k]) for k in ks))
    conds.append(
      mpmath.fsum(
        (abs(mpmath.log(qr[k])) * up[k] + pr[k] / qr[k] * uq[k]) if qr[k] != 0 else ZERO for k in ks
      )
    )
  return _finish(values, conds, (shape[0],), base)


def _smoothed(t: list, valid: list, label_smoothing) -> tuple[list, mpmath.mpf]:
  alpha = mpmath.mpf(float(label_smoothing))
  n = sum(valid)
  if n == 0:
    return [ZERO] * len(t), 1 - alpha
  return [(1 - alpha) * ti + alpha / n if ok else ZERO for ti, ok in zip(t, valid, strict=True)], (
    1 - alpha
  )


def softmax_cross_entropy(
  logits: np.ndarray,
  targets: np.ndarray,
  where=None,
  label_smoothing=0.0,
  base=None,
  exact_targets=False,
) -> Ref:
  """H(t', softmax z) with t' = (1-α) t + α / (number of classes kept by `where`).

  ∂/∂z_j = S q_j - t'_j (S = Σ t'), ∂/∂t_j = -(1-α) log q_j. ``exact_targets`` drops the
  targets' ulps from the condition (integer labels are exact).
  """
  sms, shape = _softmax_rows(logits, where)
  trows, _ = _rows(targets)
  values, conds = [], []
  for sm, tr, uz, ut in zip(sms, trows, _row_ulps(logits), _row_ulps(targets), strict=True):
    t, scale = _smoothed(tr, sm.valid, label_smoothing)
    values.append(mpmath.fsum(-ti * lq for ti, lq in zip(t, sm.log_p, strict=True) if ti))
    s = mpmath.fsum(t)
    c = mpmath.fsum(abs(s * q - ti) * u for q, ti, u in zip(sm.p, t, uz, strict=True))
    if not exact_targets:
      c += mpmath.fsum(
        scale * abs(lq) * u for lq, u, ok in zip(sm.log_p, ut, sm.present, strict=True) if ok
      )
    conds.append(c)
  return _finish(values, conds, (shape[0],), base)


def softmax_cross_entropy_grad(
  logits: np.ndarray, targets: np.ndarray, where=None, exact_targets=False
) -> Ref:
  """g_j = S q_j - t_j over the kept classes (0 for excluded ones), with its condition.

  ∂g_j/∂z_k = S q_j (δ_jk - q_k); ∂g_j/∂t_k = q_j - δ_jk.
  """
  sms, shape = _softmax_rows(logits, where)
  trows, _ = _rows(targets)
  values, conds = [], []
  for sm, tr, uz, ut in zip(sms, trows, _row_ulps(logits), _row_ulps(targets), strict=True):
    t = [ti if ok else ZERO for ti, ok in zip(tr, sm.valid, strict=True)]
    ut = [ui if ok else ZERO for ui, ok in zip(ut, sm.valid, strict=True)]
    s = mpmath.fsum(t)
    a = mpmath.fsum(q * u for q, u in zip(sm.p, uz, strict=True))
    tsum = mpmath.fsum(ut)
    for j in range(shape[1]):
      if not sm.valid[j]:
        values.append(ZERO)
        conds.append(ZERO)
        continue
      qj = sm.p[j]
      one_minus_q = _one_minus_exp(sm.log_p[j]) if sm.present[j] else ONE
      values.append(qj * (s - t[j]) - t[j] * one_minus_q)  # = S q_j - t_j, no cancellation
      c = s * qj * (a - qj * uz[j] + (1 - qj) * uz[j])
      if not exact_targets:
        c += qj * (tsum - ut[j]) + (1 - qj) * ut[j]
      conds.append(c)
  return _finish(values, conds, shape)


def one_hot(labels: np.ndarray, num_classes: int, dtype) -> np.ndarray:
  """Dense one-hot targets (all-zero rows for out-of-range labels)."""
  labels = np.asarray(labels)
  return (labels[..., None] == np.arange(num_classes)).astype(dtype)


def softmax_cross_entropy_with_integer_labels(
  logits: np.ndarray, labels: np.ndarray, where=None, label_smoothing=0.0, base=None
) -> Ref:
  """Integer labels as exact one-hot targets; out of range -> NaN unless the row is empty."""
  logits = np.asarray(logits)
  num_classes = logits.shape[1]
  ref = softmax_cross_entropy(
    logits,
    one_hot(labels, num_classes, logits.dtype),
    where,
    label_smoothing,
    base,
    exact_targets=True,
  )
  masks = np.asarray(_row_masks(where, logits.shape))
  out_of_range = (np.asarray(labels) < 0) | (np.asarray(labels) >= num_classes)
  empty = ~masks.any(axis=1)
  value = np.where(out_of_range & ~empty, np.nan, np.where(empty, 0.0, ref.value))
  return Ref(value, np.where(empty, 0.0, ref.abs_cond))


def binary_cross_entropy(p: np.ndarray, q: np.ndarray, base=None) -> Ref:
  """-p log q - (1-p) log(1-q); ∂/∂p = log((1-q)/q), ∂/∂q = (q - p) / (q (1 - q))."""

  def f(p, q, up, uq):
    if p != 1 and q == 1:
      v = INF
    else:
      v = -_xlogy(p, q) - (0 if p == 1 else (1 - p) * mpmath.log1p(-q))
    if q in (0, 1):
      return v, ZERO
    return v, abs(mpmath.log((1 - q) / q)) * up + abs(q - p) / (q * (1 - q)) * uq

  return _elementwise(f, p, q, base=base)


def sigmoid_binary_cross_entropy(
  logits: np.ndarray, labels: np.ndarray, label_smoothing=0.0, base=None
) -> Ref:
  """y' softplus(-z) + (1-y') softplus(z), y' = (1-α) y + α/2.

  ∂/∂z = σ(z) - y', ∂/∂y = -(1-α) z.
  """
  alpha = mpmath.mpf(float(label_smoothing))

  def f(z, y, uz, uy):
    y = (1 - alpha) * y + alpha / 2
    v = (y * _softplus(-z) if y else ZERO) + ((1 - y) * _softplus(z) if y != 1 else ZERO)
    if z in (INF, NINF):
      return v, ZERO
    return v, abs(_sigmoid(z) - y) * uz + (1 - alpha) * abs(z) * uy

  return _elementwise(f, logits, labels, base=base)


def sigmoid_binary_cross_entropy_grad(logits: np.ndarray, labels: np.ndarray) -> Ref:
  """σ(z) - y, with condition σ(1-σ) ulp(z) + ulp(y)."""

  def f(z, y, uz, uy):
    s = _sigmoid(z)
    diff = -_sigmoid(-z) if y == 1 else s - y  # σ(z) - 1 without cancellation
    return diff, s * _sigmoid(-z) * uz + uy

  return _elementwise(f, logits, labels)


# ----------------------------------------------------------------------------------------------
# divergence.py


def kl_divergence(p: np.ndarray, q: np.ndarray, where=None, base=None) -> Ref:
  """Σ p (log p - log q); ∂/∂p_i = log(p_i/q_i) + 1, ∂/∂q_i = -p_i/q_i."""
  prow, shape = _rows(p)
  qrow, _ = _rows(q)
  masks = _row_masks(where, shape)
  values, conds = [], []
  for pr, qr, up, uq, m in zip(prow, qrow, _row_ulps(p), _row_ulps(q), masks, strict=True):
    ks = [k for k in range(shape[1]) if m[k] and pr[k] != 0]
    if any(qr[k] == 0 for k in ks):
      values.append(INF)
      conds.append(ZERO)
      continue
    values.append(mpmath.fsum(pr[k] * mpmath.log(pr[k] / qr[k]) for k in ks))
    conds.append(
      mpmath.fsum(abs(mpmath.log(pr[k] / qr[k]) + 1) * up[k] + pr[k] / qr[k] * uq[k] for k in ks)
    )
  return _finish(values, conds, (shape[0],), base)


def kl_divergence_from_logits(
  p_logits: np.ndarray, q_logits: np.ndarray, where=None, base=None
) -> Ref:
  """KL(softmax zp ‖ softmax zq); ∂/∂zp_j = p_j (d_j - KL), ∂/∂zq_j = q_j - p_j."""
  sps, shape = _softmax_rows(p_logits, where)
  sqs, _ = _softmax_rows(q_logits, where)
  values, conds = [], []
  for sp, sq, up, uq in zip(sps, sqs, _row_ulps(p_logits), _row_ulps(q_logits), strict=True):
    ks = [k for k in range(shape[1]) if sp.present[k]]
    if any(not sq.present[k] for k in ks):
      values.append(INF)
      conds.append(ZERO)
      continue
    d = {k: sp.log_p[k] - sq.log_p[k] for k in ks}
    kl = mpmath.fsum(sp.p[k] * d[k] for k in ks)
    values.append(kl)
    conds.append(
      mpmath.fsum(sp.p[k] * abs(d[k] - kl) * up[k] for k in ks)
      + mpmath.fsum(abs(sq.p[k] - sp.p[k]) * uq[k] for k in range(shape[1]) if sq.present[k])
    )
  return _finish(values, conds, (shape[0],), base)


def kl_divergence_from_logits_grad_q(p_logits: np.ndarray, q_logits: np.ndarray) -> Ref:
  """∂KL/∂zq_j = q_j - p_j, with the condition from both zp and zq (∂q_j/∂z_k = q_j(δ - q_k))."""
  sps, shape = _softmax_rows(p_logits)
  sqs, _ = _softmax_rows(q_logits)
  values, conds = [], []
  for sp, sq, up, uq in zip(sps, sqs, _row_ulps(p_logits), _row_ulps(q_logits), strict=True):
    ap = mpmath.fsum(p * u for p, u in zip(sp.p, up, strict=True))
    aq = mpmath.fsum(q * u for q, u in zip(sq.p, uq, strict=True))
    for pj, qj, lpj, lqj, upj, uqj in zip(sp.p, sq.p, sp.log_p, sq.log_p, up, uq, strict=True):
      near_one = pj > 0.5 and qj > 0.5  # (1 - p) - (1 - q): 50 digits cannot hold 1 - e^-700
      values.append(_one_minus_exp(lpj) - _one_minus_exp(lqj) if near_one else qj - pj)
      conds.append(qj * (aq + (1 - 2 * qj) * uqj) + pj * (ap + (1 - 2 * pj) * upj))
  return _finish(values, conds, shape)


def js_divergence(p: np.ndarray, q: np.ndarray, where=None, base=None) -> Ref:
  """½ KL(p‖m) + ½ KL(q‖m), m = (p+q)/2; ∂/∂p_i = ½ log(p_i/m_i)."""
  prow, shape = _rows(p)
  qrow, _ = _rows(q)
  masks = _row_masks(where, shape)
  values, conds = [], []
  for pr, qr, up, uq, m in zip(prow, qrow, _row_ulps(p), _row_ulps(q), masks, strict=True):
    v, c = [], []
    for k in range(shape[1]):
      if not m[k]:
        continue
      mk = (pr[k] + qr[k]) / 2
      for x, u in ((pr[k], up[k]), (qr[k], uq[k])):
        if x != 0:
          lr = mpmath.log(x / mk)
          v.append(x * lr / 2)
          c.append(abs(lr) / 2 * u)
    values.append(mpmath.fsum(v))
    conds.append(mpmath.fsum(c))
  return _finish(values, conds, (shape[0],), base)


# ----------------------------------------------------------------------------------------------
# The SPEC §2 acceptance rule.


class Stats(NamedTuple):
  """Worst relative error where well-conditioned; worst error / abs_cond where ill-conditioned.

  Both over exact values that are normal numbers of the dtype (the rest is checked absolutely).
  """

  max_rel_err: float
  max_err_over_cond: float


def _report(name: str, dtype, stats: Stats) -> None:
  """Appends the measured errors to $XENT_ACCURACY_LOG (JSON lines) when it is set."""
  path = os.environ.get("XENT_ACCURACY_LOG")
  if path:
    with open(path, "a") as f:
      f.write(json.dumps({"fn": name, "dtype": str(np.dtype(dtype)), **stats._asdict()}) + "\n")


def assert_accurate(
  got, ref: Ref, dtype, *, name: str, scale: np.ndarray | None = None, rtol=None
) -> Stats:
  """Asserts the SPEC §2 rule elementwise and returns the measured error statistics.

  Exact value normal in ``dtype``: |got - ref| ≤ max(rtol·|ref|, 4·abs_cond). Exact value
  zero or subnormal: |got - ref| ≤ max(tiny, 4·abs_cond). Infinite or NaN exact values must
  be reproduced exactly. With ``scale`` (KL/JS: 1 + H(p, q)) the error is absolute:
  |got - ref| ≤ max(rtol·scale, 4·abs_cond).
  """
  dtype = np.dtype(dtype)
  rtol = RTOL[dtype] if rtol is None else rtol
  tiny = np.finfo(dtype).tiny
  got = np.asarray(got, dtype=np.float64)
  value, cond = np.broadcast_arrays(ref.value, ref.abs_cond)
  if got.shape != value.shape:
    raise AssertionError(f"{name}: shape {got.shape} != reference shape {value.shape}")
  special = ~np.isfinite(value)
  bad_special = special & ~((got == value) | (np.isnan(got) & np.isnan(value)))
  finite = ~special
  with np.errstate(invalid="ignore"):
    err = np.where(finite, np.abs(got - value), 0.0)
    err = np.where(finite & ~np.isfinite(got), np.inf, err)
  if scale is not None:
    allowed = np.maximum(rtol * np.asarray(scale, np.float64), 4 * cond)
  else:
    normal = np.abs(value) >= tiny
    allowed = np.where(
      normal, np.maximum(rtol * np.abs(value), 4 * cond), np.maximum(tiny, 4 * cond)
    )
  bad = bad_special | (finite & ~(err <= allowed))
  denom = np.abs(value) if scale is None else np.asarray(scale, np.float64)
  normal = finite & (denom >= tiny)
  ill = 4 * cond > rtol * denom  # the inherent change exceeds rtol: err/cond is what counts
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(normal & ~ill, err / np.where(denom > 0, denom, 1), 0.0)
    ratio = np.where(normal & ill, err / np.where(cond > 0, cond, 1), 0.0)
  stats = Stats(float(np.max(rel, initial=0.0)), float(np.max(ratio, initial=0.0)))
  _report(name, dtype, stats)
  if bad.any():
    idx = np.argwhere(bad)
    lines = [
      f"  at {tuple(int(i) for i in k)}: got {got[tuple(k)]!r}, exact {value[tuple(k)]!r}, "
      f"err {err[tuple(k)]:.3g}, allowed {allowed[tuple(k)]:.3g}"
      for k in idx[:8]
    ]
    raise AssertionError(
      f"{name} ({dtype}): {len(idx)} of {bad.size} entries miss the SPEC §2 tolerance "
      f"(rtol={rtol:g}, or 4x the inherent change):\n" + "\n".join(lines)
    )
  return stats
