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

import importlib
import json
import os
import pathlib
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


def one_minus_exp(log_p):
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


class Softmax(NamedTuple):
  log_p: list  # mpf, -inf for excluded / impossible classes
  p: list  # mpf
  present: list  # bool: class takes part in the distribution (valid and not -inf)
  valid: list  # bool: `where` is True
  empty: bool  # no class has positive probability


def softmax_row(z: list, valid: list[bool]) -> Softmax:
  key = (tuple(z), tuple(valid))
  if key in _SOFTMAX_MEMO:
    return _SOFTMAX_MEMO[key]
  present = [v and zi != NINF for zi, v in zip(z, valid, strict=True)]
  finite = [zi for zi, ok in zip(z, present, strict=True) if ok]
  if not finite:
    out = Softmax([NINF] * len(z), [ZERO] * len(z), present, list(valid), True)
  else:
    # log Σ e^{z - m} = log1p(Σ over all but one maximum): 50 digits cannot hold 1 + e^-700.
    m = max(finite)
    rest = list(finite)
    rest.remove(m)
    log_norm = mpmath.log1p(mpmath.fsum(mpmath.exp(zi - m) for zi in rest))
    log_p = [(zi - m) - log_norm if ok else NINF for zi, ok in zip(z, present, strict=True)]
    p = [mpmath.exp(lp) if ok else ZERO for lp, ok in zip(log_p, present, strict=True)]
    out = Softmax(log_p, p, present, list(valid), False)
  _SOFTMAX_MEMO[key] = out
  return out


def _softmax_rows(logits: np.ndarray, where=None):
  rows, shape = _rows(logits)
  masks = _row_masks(where, shape)
  return [softmax_row(z, m) for z, m in zip(rows, masks, strict=True)], shape


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


def cross_entropy_with_integer_labels(
  labels: np.ndarray, q: np.ndarray, where=None, base=None
) -> Ref:
  """-log q_y (q_y = 0 on a class excluded by `where`); ∂/∂q_y = -1/q_y, the label exact.

  An out-of-range label gives NaN, an example with no included class 0.
  """
  qrow, shape = _rows(q)
  masks = _row_masks(where, shape)
  values, conds = [], []
  for y, qr, uq, m in zip(np.asarray(labels).tolist(), qrow, _row_ulps(q), masks, strict=True):
    if not any(m):
      values.append(ZERO)
      conds.append(ZERO)
    elif not 0 <= y < shape[1]:
      values.append(mpmath.nan)
      conds.append(ZERO)
    else:
      q_y = qr[y] if m[y] else ZERO
      values.append(-mpmath.log(q_y) if q_y else INF)
      conds.append(uq[y] / q_y if q_y else ZERO)
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
      one_minus_q = one_minus_exp(sm.log_p[j]) if sm.present[j] else ONE
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
      values.append(one_minus_exp(lpj) - one_minus_exp(lqj) if near_one else qj - pj)
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


# ----------------------------------------------------------------------------------------------
# Derivatives (tests/library/gradient_test.py): exact gradients and Hessians of every measure.
#
# Each ``_jet_<name>`` evaluates one row (one example) of a measure and returns a :class:`Jet`:
# its value, its gradient with respect to every differentiable argument, and the Hessian
# blocks between them, all written out analytically. :func:`vjp` and :func:`jvp` turn a jet
# into the reference of a reverse- or forward-mode derivative, with the inherent condition of
# *that derivative*: Σ_l |∂g/∂x_l| ulp(x_l) over every input, the cotangent or tangent
# included (it is an input of ``jax.vjp`` / ``jax.jvp`` too).
#
# Conventions of the derivatives (SPEC §1-§2): a term x·log y contributes nothing to the
# value or to either partial derivative where x = 0 = y (0·log 0 = 0 "in the value and in the
# gradient"); at x = 0 < y its x-derivative is the ordinary log y. Classes excluded by
# ``where`` have zero derivatives whatever they hold. A derivative that is infinite where the
# value is (e.g. ∂H(p, q)/∂q_j at q_j = 0 < p_j) is ±inf; a finite one stays finite even
# where the value is infinite (∂H(t, softmax z)/∂z_j = -t_j at z_j = -inf).


class Jet(NamedTuple):
  """One row of a measure: value, gradient and Hessian w.r.t. its differentiable arguments.

  ``grad[a][k]`` = ∂f/∂a_k; ``hess[(a, b)][k][l]`` = ∂²f/∂a_k∂b_l (missing blocks are zero;
  entries where the gradient is infinite are not used). ``scale[a][k]``, where given, is the
  size of the terms ``grad[a][k]`` is a sum of: the divergences' gradients are checked with
  the absolute rule |err| ≤ rtol·scale, like their values.
  """

  value: mpmath.mpf
  grad: dict
  hess: dict
  scale: dict | None = None


class DerivativeRef(NamedTuple):
  """Reference of a derivative; ``scale`` is None for the relative rule."""

  ref: Ref
  scale: np.ndarray | None


# Every measure's jet builder and its differentiable arguments, by measure name.
_JETS: dict[str, tuple[Callable, tuple[str, ...]]] = {}


def jet(name: str, args: tuple[str, ...]):
  """Registers ``build(row, kept, **options) -> Jet`` as the exact reference of ``name``.

  ``args`` are the measure's differentiable arguments in call order (the first is the one
  the gradient tests differentiate). ``row[a]`` is one example of argument ``a`` as a list of
  exact mpf (entries excluded by ``where`` read as 0), ``kept[k]`` whether ``where`` keeps
  class k. The jets of the library's first measures are below; a new measure's jet lives in
  its own test file (``tests/library/<module>_test.py``), next to its tests.
  """

  def register(build: Callable) -> Callable:
    known = _JETS.get(name)
    if known and known[0].__code__.co_filename != build.__code__.co_filename:
      raise ValueError(f"jet {name!r} is defined twice: in {known[0].__code__.co_filename} too")
    _JETS[name] = (build, tuple(args))
    return build

  return register


def _jet_of(name: str) -> tuple[Callable, tuple[str, ...]]:
  if name not in _JETS:  # defined in a test module not imported yet
    for path in sorted(pathlib.Path(__file__).parent.glob("*_test.py")):
      importlib.import_module(f"{__package__}.{path.stem}")
  if name not in _JETS:
    raise KeyError(
      f"{name}: no mpmath jet; define one in its test file with "
      f"@_mp_reference.jet({name!r}, (<its differentiable arguments>))"
    )
  return _JETS[name]


def has_jet(name: str) -> bool:
  """Whether ``name`` has an mpmath jet (in this file or in a test file)."""
  try:
    _jet_of(name)
  except KeyError:
    return False
  return True


def jet_args(name: str) -> tuple[str, ...]:
  """The differentiable arguments of ``name``'s jet, in call order."""
  return _jet_of(name)[1]


def _is_finite(x) -> bool:
  return not (mpmath.isinf(x) or mpmath.isnan(x))


def zeros(c: int) -> list:
  return [ZERO] * c


def matrix(c: int) -> list[list]:
  return [[ZERO] * c for _ in range(c)]


def _centered(sm: Softmax, j: int, k: int):
  """δ_jk - q_k without cancellation (1 - q_j = -expm1(log q_j) for a dominant class)."""
  if j != k:
    return -sm.p[k]
  return one_minus_exp(sm.log_p[j]) if sm.present[j] else ONE


class XlogyTerms:
  """Accumulates f = Σ c·x·log y and its derivatives, x and y affine in the inputs.

  Inputs are named (argument, index); ``dx``/``dy`` map inputs to ∂x/∂input, ∂y/∂input.
  """

  def __init__(self, args: dict[str, int]):
    self.value = ZERO
    self.grad = {a: zeros(c) for a, c in args.items()}
    self.hess = {(a, b): matrix(args[a]) for a in args for b in args}

  def add(self, c, x, y, dx: dict, dy: dict, log_y=None):
    if x == 0 and y == 0:
      return  # 0·log 0 = 0, in the value and in both partial derivatives
    log_y = mpmath.log(y) if log_y is None else log_y
    if y == 0:  # x > 0: the value is c·(-inf); the y-derivative c·x/y is infinite too
      self.value += c * x * NINF
      for (a, k), d in dx.items():
        self.grad[a][k] += c * d * NINF
      for (a, k), d in dy.items():
        self.grad[a][k] += c * d * x * INF
      return
    self.value += c * x * log_y
    for (a, k), d in dx.items():
      self.grad[a][k] += c * d * log_y
    for (a, k), d in dy.items():
      self.grad[a][k] += c * d * x / y
    # ∂²(x log y) = (∂x ⊗ ∂y + ∂y ⊗ ∂x) / y - x/y² ∂y ⊗ ∂y.
    for (a, k), d in dx.items():
      for (b, i), e in dy.items():
        self.hess[(a, b)][k][i] += c * d * e / y
        self.hess[(b, a)][i][k] += c * d * e / y
    for (a, k), d in dy.items():
      for (b, i), e in dy.items():
        self.hess[(a, b)][k][i] -= c * x * d * e / (y * y)

  def jet(self, scale=None) -> Jet:
    return Jet(self.value, self.grad, self.hess, scale)


@jet("entropy", ("probs",))
def _jet_entropy(row, kept):
  p = row["probs"]
  acc = XlogyTerms({"probs": len(p)})
  for k, pk in enumerate(p):
    if kept[k]:
      acc.add(-1, pk, pk, {("probs", k): ONE}, {("probs", k): ONE})
  return acc.jet()


@jet("cross_entropy", ("p", "q"))
def _jet_cross_entropy(row, kept):
  p, q = row["p"], row["q"]
  acc = XlogyTerms({"p": len(p), "q": len(q)})
  for k in range(len(p)):
    if kept[k]:
      acc.add(-1, p[k], q[k], {("p", k): ONE}, {("q", k): ONE})
  return acc.jet()


def _log_terms_scale(p, q, kept, terms) -> dict:
  """Per-entry scale 1 + Σ|log| of the logs a divergence's derivative adds up."""
  out = {}
  for a in ("p", "q"):
    out[a] = [
      ONE + mpmath.fsum(abs(mpmath.log(v)) for v in terms(a, k) if v > 0) if kept[k] else ONE
      for k in range(len(p))
    ]
  return out


@jet("kl_divergence", ("p", "q"))
def _jet_kl_divergence(row, kept):
  p, q = row["p"], row["q"]
  acc = XlogyTerms({"p": len(p), "q": len(q)})
  for k in range(len(p)):
    if kept[k]:
      acc.add(1, p[k], p[k], {("p", k): ONE}, {("p", k): ONE})
      acc.add(-1, p[k], q[k], {("p", k): ONE}, {("q", k): ONE})
  # ∂/∂p_k = log p_k + 1 - log q_k; ∂/∂q_k = -p_k / q_k is a single term (relative rule).
  scale = _log_terms_scale(p, q, kept, lambda a, k: (p[k], q[k]))
  scale["q"] = [abs(g) for g in acc.grad["q"]]
  return acc.jet(scale)


@jet("js_divergence", ("p", "q"))
def _jet_js_divergence(row, kept):
  p, q = row["p"], row["q"]
  half = ONE / 2
  acc = XlogyTerms({"p": len(p), "q": len(q)})
  for k in range(len(p)):
    if kept[k]:
      m, dm = (p[k] + q[k]) / 2, {("p", k): half, ("q", k): half}
      acc.add(half, p[k], p[k], {("p", k): ONE}, {("p", k): ONE})
      acc.add(-half, p[k], m, {("p", k): ONE}, dm)
      acc.add(half, q[k], q[k], {("q", k): ONE}, {("q", k): ONE})
      acc.add(-half, q[k], m, {("q", k): ONE}, dm)
  # ∂/∂p_k = ½ log(p_k / m_k): the logs of p_k and m_k.
  scale = _log_terms_scale(p, q, kept, lambda a, k: (row[a][k], (p[k] + q[k]) / 2))
  return acc.jet(scale)


@jet("binary_entropy", ("p",))
def _jet_binary_entropy(row, kept):
  (p,) = row["p"]
  acc = XlogyTerms({"p": 1})
  acc.add(-1, p, p, {("p", 0): ONE}, {("p", 0): ONE})
  acc.add(-1, 1 - p, 1 - p, {("p", 0): -ONE}, {("p", 0): -ONE}, log_y=mpmath.log1p(-p))
  return acc.jet()


@jet("binary_cross_entropy", ("p", "q"))
def _jet_binary_cross_entropy(row, kept, label_smoothing=0.0):
  """-p' log q - (1 - p') log(1 - q), p' = (1 - α) p + α/2 (binary label smoothing)."""
  (p,), (q,) = row["p"], row["q"]
  alpha = mpmath.mpf(float(label_smoothing))
  smoothed, keep = (1 - alpha) * p + alpha / 2, 1 - alpha
  acc = XlogyTerms({"p": 1, "q": 1})
  acc.add(-1, smoothed, q, {("p", 0): keep}, {("q", 0): ONE})
  log1m_q = NINF if q == 1 else mpmath.log1p(-q)
  acc.add(-1, 1 - smoothed, 1 - q, {("p", 0): -keep}, {("q", 0): -ONE}, log_y=log1m_q)
  return acc.jet()


def _scalar_jet(arg: str, value, grad, second) -> Jet:
  return Jet(value, {arg: [grad]}, {(arg, arg): [[second]]})


@jet("sigmoid", ("x",))
def _jet_sigmoid(row, kept):
  (x,) = row["x"]
  s, t = _sigmoid(x), _sigmoid(-x)
  return _scalar_jet("x", s, s * t, s * t * (t - s))


@jet("log_sigmoid", ("x",))
def _jet_log_sigmoid(row, kept):
  (x,) = row["x"]
  s, t = _sigmoid(x), _sigmoid(-x)
  return _scalar_jet("x", -_softplus(-x), t, -s * t)


@jet("tanh_probability", ("x",))
def _jet_tanh_probability(row, kept):
  (x,) = row["x"]
  s, t = _sigmoid(2 * x), _sigmoid(-2 * x)
  return _scalar_jet("x", s, 2 * s * t, 4 * s * t * (t - s))


@jet("binary_entropy_from_logits", ("logits",))
def _jet_binary_entropy_from_logits(row, kept):
  (z,) = row["logits"]
  if not _is_finite(z):
    return _scalar_jet("logits", ZERO, ZERO, ZERO)
  s, t = _sigmoid(z), _sigmoid(-z)
  value = s * _softplus(-z) + t * _softplus(z)
  return _scalar_jet("logits", value, -z * s * t, -(s * t + z * s * t * (t - s)))


@jet("sigmoid_binary_cross_entropy", ("logits", "labels"))
def _jet_sigmoid_binary_cross_entropy(row, kept, label_smoothing=0.0):
  (z,), (y,) = row["logits"], row["labels"]
  alpha = mpmath.mpf(float(label_smoothing))
  y = (1 - alpha) * y + alpha / 2
  s, t = _sigmoid(z), _sigmoid(-z)
  value = (y * _softplus(-z) if y else ZERO) + ((1 - y) * _softplus(z) if y != 1 else ZERO)
  # ∂/∂z = σ(z) - y' = (1 - y')σ(z) - y'σ(-z); ∂/∂y = (1-α)(softplus(-z) - softplus(z)).
  grad_y = ZERO if alpha == 1 else -(1 - alpha) * z
  with mpmath.workdps(1000):  # (1-y')σ(z) - y'σ(-z) cancels for y' = ½ next to z = 0
    grad_z = (1 - y) * _sigmoid(z) - y * _sigmoid(-z)
  grad = {"logits": [+grad_z], "labels": [grad_y]}
  hess = {("logits", "logits"): [[s * t]]}
  hess[("logits", "labels")] = hess[("labels", "logits")] = [[-(1 - alpha)]]
  return Jet(value, grad, hess)


@jet("softmax_cross_entropy", ("logits", "targets"))
def _jet_softmax_cross_entropy(row, kept, label_smoothing=0.0):
  """H(t', softmax z): ∂/∂z_j = S q_j - t'_j, ∂/∂t_j = -(1-α) log q_j.

  ∂²/∂z_j∂z_k = S q_j (δ_jk - q_k); ∂²/∂z_j∂t_k = (1-α)(q_j - δ_jk) over the kept classes.
  """
  z, t = row["logits"], row["targets"]
  c = len(z)
  alpha = mpmath.mpf(float(label_smoothing))
  sm = softmax_row(z, kept)
  ts = _smoothed(t, kept, label_smoothing)[0]
  s = mpmath.fsum(ts)
  value = ZERO
  for tj, lq in zip(ts, sm.log_p, strict=True):
    if tj:
      value += -tj * lq
  grad_z, grad_t = zeros(c), zeros(c)
  hzz, hzt = matrix(c), matrix(c)
  for j in range(c):
    if not kept[j]:
      continue
    # S q_j - t'_j = q_j Σ_{k≠j} t'_k - t'_j (1 - q_j): no cancellation for a dominant
    # class (50 digits cannot hold S - t'_j = (1 + 1e-83) - 1 either).
    others = mpmath.fsum(tk for k, tk in enumerate(ts) if k != j)
    grad_z[j] = sm.p[j] * others - ts[j] * _centered(sm, j, j)
    if sm.present[j]:
      grad_t[j] = -(1 - alpha) * sm.log_p[j]
    elif ts[j] != 0 and alpha != 1:
      grad_t[j] = INF
    for k in range(c):
      if kept[k]:
        hzt[j][k] = (1 - alpha) * (sm.p[j] - (ONE if j == k else ZERO))
        if sm.present[j] and sm.present[k]:
          hzz[j][k] = s * sm.p[j] * _centered(sm, j, k)
  hess = {("logits", "logits"): hzz, ("logits", "targets"): hzt}
  hess[("targets", "logits")] = [list(r) for r in zip(*hzt, strict=True)]
  return Jet(value, {"logits": grad_z, "targets": grad_t}, hess)


@jet("entropy_from_logits", ("logits",))
def _jet_entropy_from_logits(row, kept):
  """H(softmax z): ∂H/∂z_j = -q_j (l_j + H); ∂²H/∂z_j∂z_k = -q_j[(δ_jk - q_k)(l_j + H + 1)
  - q_k (l_k + H)] (l = log q)."""
  z = row["logits"]
  c = len(z)
  sm = softmax_row(z, kept)
  idx = [k for k in range(c) if sm.present[k]]
  h = -mpmath.fsum(sm.p[k] * sm.log_p[k] for k in idx)
  # l_j + H = Σ_{k≠j} q_k (z_j - z_k) (Σ q = 1, l_j - l_k = z_j - z_k): tiny for a dominant
  # class or nearly tied logits, without cancellation.
  lh = {j: mpmath.fsum(sm.p[k] * (z[j] - z[k]) for k in idx if k != j) for j in idx}
  grad, hess = zeros(c), matrix(c)
  for j in idx:
    qj = sm.p[j]
    grad[j] = -qj * lh[j]
    for k in idx:
      hess[j][k] = -qj * (_centered(sm, j, k) * (lh[j] + 1) - sm.p[k] * lh[k])
  return Jet(h, {"logits": grad}, {("logits", "logits"): hess})


@jet("kl_divergence_from_logits", ("p_logits", "q_logits"))
def _jet_kl_divergence_from_logits(row, kept):
  """KL(softmax zp ‖ softmax zq): ∂/∂zq_j = q_j - p_j; ∂/∂zp_j = p_j (d_j - KL), d = lp - lq.

  Hessian: zq-zq q_j (δ_jk - q_k); zp-zq -p_j (δ_jk - p_k);
  zp-zp p_j [(δ_jk - p_k)(d_j - KL + 1) - p_k (d_k - KL)].
  """
  zp, zq = row["p_logits"], row["q_logits"]
  c = len(zp)
  sp, sq = softmax_row(zp, kept), softmax_row(zq, kept)
  support = [k for k in range(c) if sp.present[k]]
  lost = [k for k in support if not sq.present[k]]  # p_k > 0 = q_k: KL = +inf
  grad_q = zeros(c)
  for j in range(c):
    if sp.p[j] > 0.5 and sq.p[j] > 0.5:  # (1 - p_j) - (1 - q_j): 1 - e^-700 needs it
      grad_q[j] = one_minus_exp(sp.log_p[j]) - one_minus_exp(sq.log_p[j])
    else:
      grad_q[j] = sq.p[j] - sp.p[j]
  hqq, hpq, hpp = matrix(c), matrix(c), matrix(c)
  for j in range(c):
    for k in range(c):
      if sq.present[j] and sq.present[k]:
        hqq[j][k] = sq.p[j] * _centered(sq, j, k)
      if sp.present[j] and sp.present[k]:
        hpq[j][k] = -sp.p[j] * _centered(sp, j, k)
  grad_p = zeros(c)
  if lost:
    # The limit of p_j (d_j - KL) as the lost q-logits go to -inf together: -inf off the
    # lost classes, +inf on them while they hold less than all of p's mass.
    mass_lost = mpmath.fsum(sp.p[k] for k in lost)
    if mass_lost == 1:
      raise ValueError("the derivative has no limit when p lives on q's impossible classes")
    for j in support:
      grad_p[j] = INF if j in lost else NINF
    return Jet(INF, {"p_logits": grad_p, "q_logits": grad_q}, {})
  d = {k: sp.log_p[k] - sq.log_p[k] for k in support}
  kl = mpmath.fsum(sp.p[k] * d[k] for k in support)
  # d_j - KL = Σ_{k≠j} p_k (d_j - d_k) (Σ p = 1): no cancellation for a dominant class.
  # (d_j - d_k = zp_j - zp_k - (zq_j - zq_k): exact for nearly equal logits too.)
  dk = {
    j: mpmath.fsum(sp.p[k] * ((zp[j] - zp[k]) - (zq[j] - zq[k])) for k in support if k != j)
    for j in support
  }
  for j in support:
    grad_p[j] = sp.p[j] * dk[j]
    for k in support:
      hpp[j][k] = sp.p[j] * (_centered(sp, j, k) * (dk[j] + 1) - sp.p[k] * dk[k])
  hess = {("q_logits", "q_logits"): hqq, ("p_logits", "q_logits"): hpq}
  hess[("q_logits", "p_logits")] = hpq  # symmetric: p_j p_k off the diagonal
  hess[("p_logits", "p_logits")] = hpp
  # ∂/∂zp_j adds up p_j·(log p_j, log q_j, KL, H(p, q) and H(p)) terms.
  logs = mpmath.fsum(sp.p[k] * (abs(sp.log_p[k]) + abs(sq.log_p[k])) for k in support)
  scale_p = [
    sp.p[j] * (1 + abs(sp.log_p[j]) + abs(sq.log_p[j]) + logs) if sp.present[j] else ONE
    for j in range(c)
  ]
  scale = {"p_logits": scale_p, "q_logits": [abs(g) for g in grad_q]}
  return Jet(kl, {"p_logits": grad_p, "q_logits": grad_q}, hess, scale)


def numeric_derivatives(f, point: list, indices: list[int]):
  """(∂f/∂x_i, ∂²f/∂x_i∂x_j) at ``point`` for i, j in ``indices``, by mpmath.diff (exact
  to far more digits than float64 holds at 50 significant digits)."""
  n = len(point)

  def order(*ks):
    out = [0] * n
    for k in ks:
      out[k] += 1
    return tuple(out)

  grad = {i: mpmath.diff(f, point, order(i)) for i in indices}
  hess = {(i, j): mpmath.diff(f, point, order(i, j)) for i in indices for j in indices if i <= j}
  hess.update({(j, i): h for (i, j), h in list(hess.items())})
  return grad, hess


@jet("cross_entropy_with_integer_labels", ("q", "p"))
def _jet_cross_entropy_with_integer_labels(row, kept):
  """-log q_y: the cross-entropy of the one-hot target ``p`` (an exact input)."""
  return _jet_cross_entropy(row, kept)


# The differentiable arguments of each measure, in call order.
# Arguments that are probabilities: an exact 0 there is an exact input (it moves by nothing).
_PROBABILITY_ARGS = {"probs", "p", "q", "targets", "labels"}


def _input_ulps(arrays: dict, where) -> dict:
  """ulp of every input entry as mpf rows; 0 for exact inputs (excluded, ±inf, 0 probability)."""
  out = {}
  for a, x in arrays.items():
    x = np.asarray(x)
    rows = _row_ulps(x)
    masks = _row_masks(where, x.shape)
    flat = x.tolist()
    out[a] = [
      [
        u if m and not (a in _PROBABILITY_ARGS and v == 0) else ZERO
        for u, m, v in zip(ur, mr, vr, strict=True)
      ]
      for ur, mr, vr in zip(rows, masks, flat, strict=True)
    ]
  return out


def jets(name: str, arrays: dict, where=None, **options) -> tuple[list[Jet], dict]:
  """The jets of every row of ``name`` at ``arrays`` ({argument: [N, C] array}) and the ulps.

  Elementwise measures take [N] arrays (each element a row of one). Entries excluded by
  ``where`` are never read, so they may hold anything.
  """
  build, arg_names = _jet_of(name)
  arrays = {a: np.asarray(arrays[a]) for a in arg_names}
  key = (
    name,
    tuple(sorted(options.items())),
    None if where is None else np.asarray(where).tobytes(),
  )
  key += tuple((x.dtype.str, x.shape, x.tobytes()) for x in arrays.values())
  if key not in _JET_MEMO:
    if len(_JET_MEMO) > 64:  # a value, a gradient and a jvp share one evaluation
      _JET_MEMO.clear()
    _JET_MEMO[key] = _evaluate_jets(build, arg_names, arrays, where, options)
  return _JET_MEMO[key]


_JET_MEMO: dict = {}


def _evaluate_jets(build, arg_names, arrays, where, options):
  elementwise = next(iter(arrays.values())).ndim == 1
  if elementwise:
    arrays = {a: x[:, None] for a, x in arrays.items()}
  shape = next(iter(arrays.values())).shape
  masks = _row_masks(where, shape)
  rows = {a: _rows(np.where(masks, x, 0).astype(x.dtype))[0] for a, x in arrays.items()}
  out = []
  for r in range(shape[0]):
    row = {a: rows[a][r] for a in arg_names}
    out.append(build(row, masks[r], **options))
  return out, _input_ulps(arrays, where)


def _hess_dot(jet: Jet, a: str, k: int, ulps: dict, r: int):
  """Σ_b Σ_l |∂²f/∂a_k∂b_l| ulp(b_l): the inherent change of ∂f/∂a_k."""
  total = ZERO
  for (a2, b), block in jet.hess.items():
    if a2 == a:
      total += mpmath.fsum(abs(h) * u for h, u in zip(block[k], ulps[b][r], strict=True) if u)
  return total


def _scale_of(jet: Jet, a: str, k: int):
  return None if jet.scale is None else jet.scale[a][k]


def vjp(name: str, arrays: dict, wrt: str, cotangent=None, where=None, **options):
  """Reference of ``jax.vjp(name)(cotangent)`` w.r.t. ``wrt``: w_r ∂f_r/∂x_k, as [N, C].

  ``cotangent`` ([N], default ones) is part of the input: its ulps add |∂f/∂x_k| ulp(w_r).
  Elementwise measures give [N].
  """
  js, ulps = jets(name, arrays, where, **options)
  n, c = len(js), len(js[0].grad[wrt])
  w = np.ones(n) if cotangent is None else np.asarray(cotangent)
  w_mp = _mpfs(w)
  w_ulps = [ZERO] * n if cotangent is None else _ulps(w)
  values, conds, scales = [], [], []
  for r, jet in enumerate(js):
    for k in range(c):
      g = jet.grad[wrt][k]
      values.append(w_mp[r] * g if g else ZERO)  # 0·inf cannot happen: w_r ≠ 0
      cond = ZERO
      if _is_finite(g):
        cond = abs(w_mp[r]) * _hess_dot(jet, wrt, k, ulps, r) + abs(g) * w_ulps[r]
      conds.append(cond)
      s = _scale_of(jet, wrt, k)
      scales.append(float(abs(w_mp[r]) * s) if s is not None else np.nan)
  shape = (n,) if c == 1 and np.asarray(arrays[wrt]).ndim == 1 else (n, c)
  scale = None if js[0].scale is None else np.array(scales).reshape(shape)
  return DerivativeRef(_finish(values, conds, shape), scale)


def jvp(name: str, arrays: dict, tangents: dict, where=None, **options):
  """Reference of ``jax.jvp(name)`` with ``tangents`` ({argument: array like it}): [N].

  d_r = Σ_a Σ_k ∂f_r/∂a_k t_{a,k}; condition Σ_b Σ_l |Σ_a Σ_k t_{a,k} ∂²f/∂a_k∂b_l| ulp(b_l)
  + Σ |∂f/∂a_k| ulp(t_{a,k}), plus the rounding of the contraction itself, K·u·Σ|∂f/∂a_k
  t_{a,k}| over its K terms (what a backward-stable sum may add: unit tangents have K = 1).
  A tangent must be 0 wherever the gradient is infinite.
  """
  js, ulps = jets(name, arrays, where, **options)
  t_rows, t_ulps = {}, {}
  unit_roundoff = ZERO
  for a, t in tangents.items():
    t = np.asarray(t)
    unit_roundoff = mpmath.mpf(float(np.finfo(t.dtype).eps)) / 2
    t = t[:, None] if t.ndim == 1 else t
    t_rows[a], t_ulps[a] = _rows(t)[0], _row_ulps(t)
  values, conds, scales = [], [], []
  for r, jet in enumerate(js):
    terms, cond, scale = [], ZERO, ZERO
    for a, t in t_rows.items():
      for k, tk in enumerate(t[r]):
        g = jet.grad[a][k]
        if tk == 0:
          continue
        if not _is_finite(g):
          raise ValueError(f"{name}: tangent on an infinite derivative ∂/∂{a}[{r}, {k}]")
        terms.append(g * tk)
        cond += abs(g) * t_ulps[a][r][k]
        s = _scale_of(jet, a, k)
        scale += abs(tk) * (s if s is not None else ZERO)
    values.append(mpmath.fsum(terms))
    cond += len(terms) * unit_roundoff * mpmath.fsum(abs(x) for x in terms)
    for (a, b), block in jet.hess.items():
      if a not in t_rows:
        continue
      for i, u in enumerate(ulps[b][r]):
        if u:
          cond += abs(mpmath.fsum(block[k][i] * tk for k, tk in enumerate(t_rows[a][r]))) * u
    conds.append(cond)
    scales.append(float(scale))
  n = len(js)
  scale = None if js[0].scale is None else np.array(scales)
  return DerivativeRef(_finish(values, conds, (n,)), scale)


def log_softmax_vjp(logits: np.ndarray, cotangent: np.ndarray, where=None) -> DerivativeRef:
  """Reference of the VJP of log_softmax: v_k - q_k Σ_i v_i = ∂/∂z of H(-v, softmax z).

  ``cotangent`` must be 0 on -inf logits (their output is the constant -inf). Like
  :func:`jvp`, the condition adds the rounding of the contraction with the cotangent,
  C·u·q_k Σ|v_i|.
  """
  v = np.asarray(cotangent)
  out = vjp("softmax_cross_entropy", {"logits": logits, "targets": -v}, "logits", where=where)
  sms, shape = _softmax_rows(logits, where)
  u = float(np.finfo(v.dtype).eps) / 2
  masks = np.asarray(_row_masks(where, shape))
  total = np.sum(np.abs(np.where(masks, v, 0)), axis=1, keepdims=True, dtype=np.float64)
  q = np.array([[float(x) for x in sm.p] for sm in sms])
  extra = shape[1] * u * q * total
  return DerivativeRef(Ref(out.ref.value, out.ref.abs_cond + extra), out.scale)


def log_softmax_jvp(logits: np.ndarray, tangent: np.ndarray, where=None) -> Ref:
  """Reference of the JVP of log_softmax: d_i = t_i - Σ_k q_k t_k = Σ_k q_k (t_i - t_k).

  [N, C]; 0 on classes that are excluded or impossible (their output is the constant -inf).
  Condition Σ_l q_l |t_l - Σ q t| ulp(z_l) + Σ_k |δ_ik - q_k| ulp(t_k), plus the rounding
  of the contraction with the tangent, C·u·(|t_i| + Σ_k q_k |t_k|) (see :func:`jvp`).
  """
  sms, shape = _softmax_rows(logits, where)
  t_rows, t_ulps, z_ulps = _rows(tangent)[0], _row_ulps(tangent), _row_ulps(logits)
  u = mpmath.mpf(float(np.finfo(np.asarray(tangent).dtype).eps)) / 2
  values, conds = [], []
  for sm, t, ut, uz in zip(sms, t_rows, t_ulps, z_ulps, strict=True):
    idx = [k for k in range(shape[1]) if sm.present[k]]
    mean_t = mpmath.fsum(sm.p[k] * t[k] for k in idx)
    dz = mpmath.fsum(sm.p[k] * abs(t[k] - mean_t) * uz[k] for k in idx)
    contraction = shape[1] * u * mpmath.fsum(sm.p[k] * abs(t[k]) for k in idx)
    for i in range(shape[1]):
      if not sm.present[i]:
        values.append(ZERO)
        conds.append(ZERO)
        continue
      values.append(mpmath.fsum(sm.p[k] * (t[i] - t[k]) for k in idx if k != i))
      rounding = contraction + shape[1] * u * abs(t[i])
      conds.append(dz + rounding + mpmath.fsum(abs(_centered(sm, i, k)) * ut[k] for k in idx))
  return _finish(values, conds, shape)


def value_ref(name: str, arrays: dict, where=None, **options) -> Ref:
  """The exact values of ``name`` with their condition Σ |∂f/∂x| ulp(x), from the jets."""
  js, ulps = jets(name, arrays, where, **options)
  conds = []
  for r, jet in enumerate(js):
    conds.append(
      mpmath.fsum(
        abs(g) * u
        for a, grad in jet.grad.items()
        for g, u in zip(grad, ulps[a][r], strict=True)
        if u and _is_finite(g)
      )
    )
  return _finish([j.value for j in js], conds, (len(js),))
