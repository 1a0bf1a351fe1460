r"""E8: cross-entropy at vocabulary scale: next-token softmax regression on real text (SPEC §7).

From the repository root::

    python -m experiments.vocab_scale --config=configs/vocab_scale.py --workdir=runs/e8
    python -m experiments.vocab_scale --config=configs/vocab_scale.py:full --workdir=runs/e8-full

The text is the one every Python installation ships: the standard library's own source
files (``sysconfig.get_paths()["stdlib"]``, ``*.py``; directories named ``test``, ``tests``,
``idle_test``, ``site-packages``, ``dist-packages`` or ``__pycache__`` are skipped). Files are
ordered by the SHA-256 of ``"select:" + path``, the first ``corpus.max_files`` are used, and a
file is held out when the SHA-256 of ``"heldout:" + path``, read as a fraction of 2⁶⁴, is below
``corpus.heldout_fraction``: the split is by file, deterministic, and the same for every
``max_files``. The Python version, file counts, bytes and a SHA-256 of the corpus (each path
and its bytes, in order) are recorded.

Tokens (:data:`TOKEN_PATTERN`): identifiers and keywords, number literals, the multi-character
Python operators, and every other non-blank character on its own; whitespace is dropped, and
comments and strings are tokenised like code. The vocabulary is the V − 1 most frequent
training tokens (ties by the token's text) plus ``<unk>`` (id 0) for every other token.

The model is a bigram softmax regression: the next token's logits are
``E[previous token] @ W + b`` (E: [V, D], W: [D, V], b: [V]; W = 0, b = 0 at the start, so step
0 predicts the uniform distribution, log V), trained with Adam on minibatches of (previous,
next) pairs from within the training files, the loss the mean of
:func:`xent_jax.linear_softmax_cross_entropy`'s per-token values (the [N, V] logits are never
formed). Each evaluation computes the held-out cross-entropy twice on the same parameters:
with the fused loss and with the materialised ``optax.softmax_cross_entropy_with_integer_labels(
h @ W + b, y)``, on the distinct held-out pairs weighted by their counts (exactly the mean over
all held-out pairs, at a fraction of the cost), in chunks of ``eval_chunk`` pairs.

Reference lines, in nats (and bits = nats / ln 2), all on the same held-out targets y:

* *uniform*: log V (the model at step 0);
* *unigram entropy of the held-out tokens*: H(p̂) = −Σ_y p̂(y) log p̂(y), p̂ the held-out
  targets' own frequencies. By Gibbs' inequality no context-free (unigram) model, however
  fitted, has a held-out cross-entropy below it;
* *unigram add-k*: the held-out cross-entropy of the training unigram model
  q(y) = (c(y) + k) / (N + kV), ≥ H(p̂);
* *count bigram add-k*: q(y | x) = (c(x, y) + k) / (c(x) + kV), counts over the training
  pairs, evaluated on the held-out pairs.

Perplexity is e^(cross-entropy in nats). At the end of training the gradients of the mean
loss w.r.t. E, W and b on one minibatch are compared, fused against materialised.

Finally, the mean loss and its gradient w.r.t. E, W and b (``jax.value_and_grad``: a train
step's work but the optimiser's elementwise update) are compiled with each loss for each V
in ``sweep.vocab_sizes`` at ``sweep.time_batch_size`` random tokens, and at the largest V
also for ``sweep.memory_batch_size`` tokens, compiled only (the naive version's [N, V]
arrays are never allocated). XLA's temporaries (``memory_analysis().temp_size_in_bytes``) go
to ``results.json``; the median times at ``sweep.time_batch_size`` go to ``step_time.json``
(timings differ from run to run; ``results.json`` stays byte-identical for the same config).
The fused loss keeps a few ``[chunk_size, V]`` blocks, so its temporaries stop growing with
N while the naive version's (the logits and their gradient, 2·N·V floats) grow linearly:
the saving is a ratio of N to the chunk, visible only once N exceeds the chunk
(``model.chunk_size``; 0: the library's default).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import re
import sys
import sysconfig
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _common
from experiments.benchmark import time_interleaved
from xent_jax import linear_softmax_cross_entropy, training

UNK = "<unk>"  # id 0: every token outside the vocabulary
EXCLUDED_DIRS = frozenset(
  {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
# One token per match, tried in this order; whitespace matches nothing and is dropped.
TOKEN_PATTERN = re.compile(
  r"""
    [^\W\d]\w*                                  # identifier or keyword (Unicode letters too)
  | 0[xXoObB][0-9a-fA-F_]+                      # hexadecimal, octal, binary literal
  | (?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)            # decimal or float literal ...
    (?:[eE][+-]?\d[\d_]*)?[jJ]?                 # ... with exponent, imaginary suffix
  | \*\*=?|//=?|>>=?|<<=?|->|:=|\.\.\.|[-+*/%&|^@<>=!]=   # multi-character operators
  | \S                                          # any other character on its own
  """,
  re.VERBOSE,
)


def validate(config) -> None:
  """The bounds declared in ``configs/vocab_scale.py`` and the constraints between keys."""
  vocab = _common.integer(low=2, high=1 << 20)
  _common.check_declared(config)
  for i, v in enumerate(config.sweep.vocab_sizes):
    vocab(f"sweep.vocab_sizes[{i}]", v)
  if config.train.num_steps % config.train.num_evals:
    raise _common.ConfigError(
      f"config.train.num_steps = {config.train.num_steps} must be a multiple of "
      f"config.train.num_evals = {config.train.num_evals}"
    )


# ------------------------------------------------------------------------------- corpus


def tokenize(text: str) -> list[str]:
  """The tokens of ``text`` (see :data:`TOKEN_PATTERN`).

  >>> tokenize("x1 = f.g(0x1F, 3.5e-2) ** 2  # ok")
  ['x1', '=', 'f', '.', 'g', '(', '0x1F', ',', '3.5e-2', ')', '**', '2', '#', 'ok']
  """
  return TOKEN_PATTERN.findall(text)


def stdlib_files(root: Path) -> list[str]:
  """Paths (relative to ``root``, '/'-separated, sorted) of the non-test ``*.py`` files."""
  paths = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in EXCLUDED_DIRS)
    rel = Path(directory).relative_to(root)
    paths += [(rel / n).as_posix() for n in names if n.endswith(".py")]
  return sorted(paths)


def _path_fraction(salt: str, path: str) -> float:
  """A fixed pseudo-random number in [0, 1) for ``path``: its salted SHA-256."""
  digest = hashlib.sha256(f"{salt}:{path}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


class Corpus(NamedTuple):
  """Token ids per file of both splits, the vocabulary, and where the text came from."""

  train_ids: list[np.ndarray]
  heldout_ids: list[np.ndarray]
  vocab: list[str]
  info: dict


def load_corpus(*, max_files: int, heldout_fraction: float, vocab_size: int) -> Corpus:
  """Reads, splits, tokenises and encodes the standard library (see the module docstring)."""
  root = Path(sysconfig.get_paths()["stdlib"])
  paths = sorted(stdlib_files(root), key=functools.partial(_path_fraction, "select"))
  paths = sorted(paths[: max_files or None])
  sha = hashlib.sha256()
  tokens = {"train": [], "heldout": []}
  num_bytes = 0
  for path in paths:
    data = (root / path).read_bytes()
    sha.update(path.encode() + b"\0" + data + b"\0")
    num_bytes += len(data)
    split = "heldout" if _path_fraction("heldout", path) < heldout_fraction else "train"
    tokens[split].append(tokenize(data.decode("utf-8", errors="replace")))
  num_files = {split: len(files) for split, files in tokens.items()}
  if min(num_files.values()) == 0:
    raise _common.ConfigError(
      f"config.corpus.heldout_fraction = {heldout_fraction} splits the {len(paths)} files "
      f"into {num_files['train']} training and {num_files['heldout']} held-out files; "
      "both must be non-empty (raise corpus.max_files or change the fraction)"
    )
  counts = collections.Counter(t for file in tokens["train"] for t in file)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 1]
  vocab = [UNK] + [token for token, _ in ranked]
  index = {token: i for i, token in enumerate(vocab)}
  ids = {
    split: [np.array([index.get(t, 0) for t in file], np.int32) for file in files]
    for split, files in tokens.items()
  }
  info = {
    "python": f"{sys.implementation.name} {sys.version.split()[0]}",
    "stdlib": str(root),
    "num_files": len(paths),
    "num_train_files": num_files["train"],
    "num_heldout_files": num_files["heldout"],
    "num_bytes": num_bytes,
    "sha256": sha.hexdigest(),
    "num_train_tokens": sum(map(len, tokens["train"])),
    "num_heldout_tokens": sum(map(len, tokens["heldout"])),
    "num_distinct_train_tokens": len(counts),
    "token_pattern": TOKEN_PATTERN.pattern,
  }
  return Corpus(ids["train"], ids["heldout"], vocab, info)


def bigram_pairs(ids_per_file: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(previous, next) token ids of every adjacent pair within each file."""
  prev = np.concatenate([ids[:-1] for ids in ids_per_file])
  nxt = np.concatenate([ids[1:] for ids in ids_per_file])
  return prev, nxt


# ------------------------------------------------------------------- count-based references


def count_references(train_pairs, heldout_pairs, vocab_size: int, k: float) -> dict:
  """Held-out cross-entropies (nats, float64) of the count models; see the module docstring."""
  (prev_tr, next_tr), (prev_te, next_te) = train_pairs, heldout_pairs
  v = vocab_size
  c_unigram = np.bincount(next_tr, minlength=v)
  q_unigram = (c_unigram + k) / (c_unigram.sum() + k * v)
  p_hat = np.bincount(next_te, minlength=v) / len(next_te)
  p_hat = p_hat[p_hat > 0]
  keys_tr, c_pair = np.unique(prev_tr.astype(np.int64) * v + next_tr, return_counts=True)
  keys_te = prev_te.astype(np.int64) * v + next_te
  at = np.minimum(np.searchsorted(keys_tr, keys_te), len(keys_tr) - 1)
  c_xy = np.where(keys_tr[at] == keys_te, c_pair[at], 0)
  c_x = np.bincount(prev_tr, minlength=v)[prev_te]
  return {
    "uniform": np.log(v),
    "unigram_entropy_heldout": -np.sum(p_hat * np.log(p_hat)),
    "unigram_addk": -np.mean(np.log(q_unigram[next_te])),
    "bigram_addk": -np.mean(np.log((c_xy + k) / (c_x + k * v))),
  }


# ------------------------------------------------------------------------ model and losses


def _float_dtype():
  """The default float: float32, or float64 under ``JAX_ENABLE_X64``."""
  return jnp.zeros(()).dtype


def _fused_loss(hidden_NxD, w_DxV, b_V, labels_N, chunk_size: int):
  """Per-token CE of softmax(h W + b), by the library's fused loss (no [N, V] array)."""
  return linear_softmax_cross_entropy(
    hidden_NxD, w_DxV, labels_N, bias=b_V, chunk_size=chunk_size or None
  )


def _naive_loss(hidden_NxD, w_DxV, b_V, labels_N, chunk_size: int):
  """The same per-token CE from the materialised [N, V] logits (optax)."""
  del chunk_size
  logits_NxV = jnp.dot(hidden_NxD, w_DxV, precision=jax.lax.Precision.HIGHEST) + b_V[None, :]
  return optax.softmax_cross_entropy_with_integer_labels(logits_NxV, labels_N)


PER_TOKEN_LOSSES = {"fused": _fused_loss, "naive": _naive_loss}


def init_params(key, vocab_size: int, embed_dim: int, init_scale: float) -> dict:
  """E ~ N(0, init_scale²) [V, D]; W = 0 [D, V]; b = 0 [V]: uniform predictions at step 0."""
  dtype = _float_dtype()
  return {
    "embedding": init_scale * jax.random.normal(key, (vocab_size, embed_dim), dtype),
    "w": jnp.zeros((embed_dim, vocab_size), dtype),
    "b": jnp.zeros((vocab_size,), dtype),
  }


def bigram_loss(params, prev_N, next_N, *, per_token_loss, chunk_size: int = 0):
  """Mean next-token cross-entropy (nats) of the bigram model on the pairs (prev, next)."""
  hidden_NxD = params["embedding"][prev_N]
  return jnp.mean(per_token_loss(hidden_NxD, params["w"], params["b"], next_N, chunk_size))


@functools.partial(
  jax.jit,
  static_argnames=("loss_fn", "optimizer", "num_steps", "batch_size"),
  donate_argnames="state",
)
def train_segment(state, pairs, key, *, loss_fn, optimizer, num_steps: int, batch_size: int):
  """``num_steps`` Adam steps as one ``lax.scan``; step t draws its pairs with fold_in(key, t)."""
  prev_M, next_M = pairs

  def step(state, _):
    idx_B = jax.random.randint(
      jax.random.fold_in(key, state.step), (batch_size,), 0, prev_M.shape[0]
    )
    minibatch = (prev_M[idx_B], next_M[idx_B])
    return training.train_step(state, minibatch, loss_fn=loss_fn, optimizer=optimizer)

  return jax.lax.scan(step, state, length=num_steps)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def heldout_losses(params, prev_CxK, next_CxK, count_CxK, *, chunk_size: int = 0) -> dict:
  """Count-weighted held-out mean CE, fused and naive, and their largest per-pair gap."""

  def one_chunk(chunk):
    prev_K, next_K, count_K = chunk
    hidden_KxD = params["embedding"][prev_K]
    out = {}
    for name, loss in PER_TOKEN_LOSSES.items():
      out[name] = loss(hidden_KxD, params["w"], params["b"], next_K, chunk_size)
    gap = jnp.where(count_K > 0, jnp.abs(out["fused"] - out["naive"]), 0)
    return {name: jnp.sum(count_K * v) for name, v in out.items()} | {"max_gap": jnp.max(gap)}

  sums = jax.lax.map(one_chunk, (prev_CxK, next_CxK, count_CxK))
  total = jnp.sum(count_CxK)
  return {
    "fused": jnp.sum(sums["fused"]) / total,
    "naive": jnp.sum(sums["naive"]) / total,
    "max_gap": jnp.max(sums["max_gap"]),
  }


def _distinct_pairs(prev, nxt, vocab_size: int, chunk: int):
  """The distinct (prev, next) pairs and their counts, padded (count 0) to [C, chunk]."""
  keys, counts = np.unique(prev.astype(np.int64) * vocab_size + nxt, return_counts=True)
  pad = -len(keys) % chunk
  arrays = (keys // vocab_size, keys % vocab_size, counts)
  dtypes = (np.int32, np.int32, _float_dtype())
  return tuple(
    jnp.asarray(np.pad(a, (0, pad)).astype(t).reshape(-1, chunk))
    for a, t in zip(arrays, dtypes, strict=True)
  )


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _gradient_gap(params, prev_N, next_N, *, chunk_size: int = 0) -> dict:
  """max |∇_fused − ∇_naive| / max |∇_naive| per parameter, on one minibatch."""
  grads = {
    name: jax.grad(functools.partial(bigram_loss, per_token_loss=loss, chunk_size=chunk_size))(
      params, prev_N, next_N
    )
    for name, loss in PER_TOKEN_LOSSES.items()
  }
  return jax.tree.map(
    lambda f, n: jnp.max(jnp.abs(f - n)) / jnp.max(jnp.abs(n)), grads["fused"], grads["naive"]
  )


# ---------------------------------------------------------------------- memory and time


def _compiled_step(config, per_token_loss, params, batch):
  """The mean loss and its gradient w.r.t. E, W and b (``jax.value_and_grad``), compiled."""
  loss_fn = functools.partial(
    bigram_loss, per_token_loss=per_token_loss, chunk_size=config.model.chunk_size
  )
  return jax.jit(jax.value_and_grad(loss_fn)).lower(params, *batch).compile()


def memory_and_time(config) -> tuple[dict, dict]:
  """Temporaries (bytes, deterministic) and times (s) of the loss and gradient over V.

  At every V both are compiled, run and timed with ``sweep.time_batch_size`` random tokens;
  at the largest V they are also compiled (only) for ``sweep.memory_batch_size`` tokens:
  XLA's buffer assignment needs no data, so the naive step's [N, V] arrays are never
  allocated. (The optimiser's update is the same elementwise work for both, left out.)
  """
  n, n_large = config.sweep.time_batch_size, config.sweep.memory_batch_size
  itemsize = _float_dtype().itemsize
  memory = {"vocab_size": [], "batch_size": n, "fused": [], "naive": [], "logits_bytes": []}
  times = {"vocab_size": [], "batch_size": n, "fused": [], "naive": []}
  for v in config.sweep.vocab_sizes:
    key_e, key_x, key_y = jax.random.split(jax.random.key(config.seed), 3)
    params = init_params(key_e, v, config.model.embed_dim, config.model.init_scale)
    batch = tuple(jax.random.randint(k, (n,), 0, v) for k in (key_x, key_y))
    runners = {}
    for name, loss in PER_TOKEN_LOSSES.items():
      compiled = _compiled_step(config, loss, params, batch)
      memory[name].append(compiled.memory_analysis().temp_size_in_bytes)
      runners[name] = functools.partial(
        lambda c, p, b: jax.block_until_ready(c(p, *b)), compiled, params, batch
      )
    timed = time_interleaved(runners, warmup=1, repeats=config.sweep.repeats)
    for record in (memory, times):
      record["vocab_size"].append(v)
    memory["logits_bytes"].append(n * v * itemsize)
    for name in PER_TOKEN_LOSSES:
      times[name].append(timed[name]["median_s"])
  large_batch = (jax.ShapeDtypeStruct((n_large,), jnp.int32),) * 2
  memory["largest_v_at_memory_batch_size"] = {
    "vocab_size": v,
    "batch_size": n_large,
    "logits_bytes": n_large * v * itemsize,
    **{
      name: _compiled_step(config, loss, params, large_batch).memory_analysis().temp_size_in_bytes
      for name, loss in PER_TOKEN_LOSSES.items()
    },
  }
  return memory, times


def _log_sweep(workdir, memory: dict, times: dict) -> None:
  """One log line per V of the sweep, and one for the large-N compile."""
  for i, vs in enumerate(memory["vocab_size"]):
    workdir.log(
      "V = %d, N = %d: temporaries fused %.1f MiB, naive %.1f MiB; loss+grad fused %.1f ms, naive "
      "%.1f ms",
      vs,
      memory["batch_size"],
      memory["fused"][i] / 2**20,
      memory["naive"][i] / 2**20,
      1e3 * times["fused"][i],
      1e3 * times["naive"][i],
    )
  large = memory["largest_v_at_memory_batch_size"]
  workdir.log(
    "V = %d, N = %d (compiled only): temporaries fused %.1f MiB, naive %.1f MiB",
    large["vocab_size"],
    large["batch_size"],
    large["fused"] / 2**20,
    large["naive"] / 2**20,
  )


# --------------------------------------------------------------------------------- run


def run(config, workdir: _common.Workdir) -> dict:
  """Computes E8's numbers, claims and figures (see the module docstring)."""
  start = time.perf_counter()
  corpus = load_corpus(
    max_files=config.corpus.max_files,
    heldout_fraction=config.corpus.heldout_fraction,
    vocab_size=config.vocab_size,
  )
  v = len(corpus.vocab)
  train_pairs, heldout_pairs = bigram_pairs(corpus.train_ids), bigram_pairs(corpus.heldout_ids)
  workdir.log(
    "corpus: %d files (%d held out), %d bytes, %d + %d tokens, V = %d, sha256 %s… (%.1f s)",
    corpus.info["num_files"],
    corpus.info["num_heldout_files"],
    corpus.info["num_bytes"],
    corpus.info["num_train_tokens"],
    corpus.info["num_heldout_tokens"],
    v,
    corpus.info["sha256"][:12],
    time.perf_counter() - start,
  )
  references = count_references(train_pairs, heldout_pairs, v, config.smoothing_k)
  evaluation, train_loss = _train_and_evaluate(config, workdir, train_pairs, heldout_pairs, v)
  memory, times = memory_and_time(config)
  _common.write_json(workdir.path / "step_time.json", times)
  _log_sweep(workdir, memory, times)
  heldout_next = heldout_pairs[1]
  results = _common.to_jsonable(
    {
      "dtype": str(_float_dtype()),
      "embed_dim": config.model.embed_dim,
      "chunk_size": config.model.chunk_size,
      "agreement_tolerance": config.agreement_ulps * float(jnp.finfo(_float_dtype()).eps),
      "corpus": corpus.info,
      "vocab": {
        "size": v,
        "unk_id": 0,
        "most_frequent": corpus.vocab[1:21],
        "heldout_unk_rate": np.mean(heldout_next == 0),
      },
      "num_train_pairs": len(train_pairs[0]),
      "num_heldout_pairs": len(heldout_next),
      "references_nats": references,
      "references_bits": {k: x / np.log(2) for k, x in references.items()},
      "references_perplexity": {k: np.exp(x) for k, x in references.items()},
      "train_loss_nats": train_loss,
      "evaluation": evaluation,
      "memory": memory,
    }
  )
  results["claims"] = _claims(results, config)
  results["summary"] = _summary(results)
  for key, value in results["summary"].items():
    workdir.log("%s: %s", key, value)
  _figure_heldout(workdir, results)
  _figure_memory(workdir, results, times)
  return results


def _summary(r: dict) -> dict:
  """The headline numbers for the log and REPORT.md."""
  ev, memory = r["evaluation"], r["memory"]
  large = memory["largest_v_at_memory_batch_size"]
  return {
    "held-out CE, trained bigram (bits/token)": ev["fused_bits"][-1],
    "held-out perplexity, trained bigram": ev["perplexity"][-1],
    "references (bits): unigram entropy of held-out / unigram add-k / count bigram add-k": [
      r["references_bits"][k] for k in ("unigram_entropy_heldout", "unigram_addk", "bigram_addk")
    ],
    "fused vs naive: max relative gap of the held-out CE": max(ev["relative_gap"]),
    f"temporaries naive / fused at N = {memory['batch_size']}, per V": dict(
      zip(
        [str(x) for x in memory["vocab_size"]],
        [a / b for a, b in zip(memory["naive"], memory["fused"], strict=True)],
        strict=True,
      )
    ),
    f"temporaries naive / fused at V = {large['vocab_size']}, N = {large['batch_size']}": (
      large["naive"] / large["fused"]
    ),
  }


def _train_and_evaluate(config, workdir, train_pairs, heldout_pairs, v: int):
  """Trains with the fused loss; evaluates fused and naive held-out CE at each checkpoint."""
  tc = config.train
  key_init, key_data = jax.random.split(jax.random.key(config.seed))
  optimizer = optax.adam(tc.learning_rate)
  loss_fn = functools.partial(
    bigram_loss, per_token_loss=_fused_loss, chunk_size=config.model.chunk_size
  )
  state = training.init_train_state(
    init_params(key_init, v, config.model.embed_dim, config.model.init_scale), optimizer
  )
  pairs = tuple(jnp.asarray(a) for a in train_pairs)
  eval_set = _distinct_pairs(*heldout_pairs, v, config.eval_chunk)
  segment = tc.num_steps // tc.num_evals
  steps, fused, naive, gap, losses = [], [], [], [], []
  start = time.perf_counter()
  for k in range(tc.num_evals + 1):
    out = heldout_losses(state.params, *eval_set, chunk_size=config.model.chunk_size)
    steps.append(k * segment)
    fused.append(float(out["fused"]))
    naive.append(float(out["naive"]))
    gap.append(float(out["max_gap"]))
    recent_bits = np.mean(losses[-segment:]) / np.log(2) if losses else np.nan
    train_bits = f"; mean training loss of the last {segment} steps {recent_bits:.4f}"
    workdir.log(
      "step %d/%d: held-out CE %.4f bits (fused), %.4f (naive)%s; %.1f s",
      k * segment,
      tc.num_steps,
      fused[-1] / np.log(2),
      naive[-1] / np.log(2),
      train_bits if losses else "",
      time.perf_counter() - start,
    )
    if k == tc.num_evals:
      break
    state, metrics = train_segment(
      state,
      pairs,
      key_data,
      loss_fn=loss_fn,
      optimizer=optimizer,
      num_steps=segment,
      batch_size=tc.batch_size,
    )
    losses += np.asarray(metrics["loss"], np.float64).tolist()
  # The gradients are compared on the minibatch that step num_steps would draw.
  idx = jax.random.randint(
    jax.random.fold_in(key_data, tc.num_steps), (tc.batch_size,), 0, len(train_pairs[0])
  )
  grad_gap = _gradient_gap(
    state.params, pairs[0][idx], pairs[1][idx], chunk_size=config.model.chunk_size
  )
  fused_np, naive_np = np.array(fused), np.array(naive)
  evaluation = {
    "step": steps,
    "fused_nats": fused,
    "naive_nats": naive,
    "fused_bits": fused_np / np.log(2),
    "naive_bits": naive_np / np.log(2),
    "perplexity": np.exp(fused_np),
    "relative_gap": np.abs(fused_np - naive_np) / naive_np,
    "max_per_pair_gap_nats": gap,
    "final_gradient_relative_gap": grad_gap,
  }
  return evaluation, losses


def _claims(r: dict, config) -> list[dict]:
  """The verdicts, each decided by the measured values in ``r``."""
  return [
    claim(r, config)
    for claim in (
      _claim_bigram_below_unigram_entropy,
      _claim_fused_equals_materialised,
      _claim_fused_memory,
    )
  ]


def _claim_bigram_below_unigram_entropy(r: dict, config) -> dict:
  """The verdict on seed §3.2, 5, claim ``5-bigram-below-unigram-entropy``."""
  ref, ev = r["references_bits"], r["evaluation"]
  final = ev["fused_bits"][-1]
  return _common.claim(
    "5-bigram-below-unigram-entropy",
    "3.2, 5",
    "cross-entropy compares models' predictions: on held-out Python source the trained "
    "bigram model's cross-entropy is below the unigram entropy of the held-out tokens, a "
    "lower bound for every model that ignores the context",
    {
      "trained bigram (bits/token)": final,
      "unigram entropy of the held-out tokens (bits)": ref["unigram_entropy_heldout"],
      "training unigram, add-k (bits/token)": ref["unigram_addk"],
      "count bigram, add-k (bits/token)": ref["bigram_addk"],
      "uniform, log2 V (bits)": ref["uniform"],
    },
    holds=final < ref["unigram_entropy_heldout"],
    correction=f"after {config.train.num_steps} steps the held-out cross-entropy "
    f"({final:.3f} bits) is not below the held-out unigram entropy "
    f"({ref['unigram_entropy_heldout']:.3f} bits): train longer",
  )


def _claim_fused_equals_materialised(r: dict, config) -> dict:
  """The verdict on seed §3.1, claim ``3.1-fused-equals-materialised``."""
  ev = r["evaluation"]
  tol = r["agreement_tolerance"]
  value_gap = max(ev["relative_gap"])
  grad_gap = max(ev["final_gradient_relative_gap"].values())
  return _common.claim(
    "3.1-fused-equals-materialised",
    "3.1",
    "H(p, q) computed by the fused linear cross-entropy, which never forms the [N, V] "
    "logits, equals the materialised optax computation (value, and gradient at the end)",
    {
      "max relative gap of the held-out CE over the evaluations": value_gap,
      "max relative gap of the gradient (per parameter, vs its max)": grad_gap,
      "tolerance": tol,
    },
    holds=value_gap <= tol and grad_gap <= tol,
    correction=f"the fused and materialised losses differ by {max(value_gap, grad_gap):.2g} "
    f"(relative), more than {tol:.2g}",
  )


def _claim_fused_memory(r: dict, config) -> dict:
  """The verdict on seed §4.1, claim ``4.1-fused-memory``."""
  mem = r["memory"]["largest_v_at_memory_batch_size"]
  ratio = mem["naive"] / mem["fused"]
  return _common.claim(
    "4.1-fused-memory",
    "4.1",
    "as a training loss at vocabulary scale the fused cross-entropy needs a fraction of "
    "the materialised one's temporaries",
    {
      "V": mem["vocab_size"],
      "N (tokens per step)": mem["batch_size"],
      "naive temporaries (MiB)": mem["naive"] / 2**20,
      "fused temporaries (MiB)": mem["fused"] / 2**20,
      "ratio naive / fused": ratio,
      "required ratio": config.memory_ratio_min,
    },
    holds=ratio >= config.memory_ratio_min,
    correction=f"at V = {mem['vocab_size']}, N = {mem['batch_size']} the fused "
    f"step's temporaries are only {ratio:.2f}× smaller than the naive step's "
    f"(< {config.memory_ratio_min})",
  )


# ------------------------------------------------------------------------------ figures


def _figure_heldout(workdir, r: dict) -> None:
  """Held-out CE (bits/token) vs step, fused and naive, with the reference lines."""
  fig, (ax, ax_gap) = _common.new_figure(
    1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]}
  )
  ev, ref = r["evaluation"], r["references_bits"]
  train_bits = np.asarray(r["train_loss_nats"]) / np.log(2)
  ax.plot(
    np.arange(len(train_bits)),
    train_bits,
    color="C7",
    lw=0.7,
    alpha=0.7,
    label="training minibatch loss (fused)",
  )
  ax.plot(ev["step"], ev["fused_bits"], color="C0", marker="o", label="held-out CE, fused loss")
  ax.plot(
    ev["step"],
    ev["naive_bits"],
    ls="none",
    marker="x",
    ms=9,
    color="C3",
    label="held-out CE, materialised optax (same parameters)",
  )
  lines = (
    ("uniform", "uniform: log₂ V", ":"),
    ("unigram_addk", "training unigram, add-k", "--"),
    ("unigram_entropy_heldout", "unigram entropy of the held-out tokens", "-."),
    ("bigram_addk", "count bigram, add-k", (0, (5, 1, 1, 1, 1, 1))),
  )
  for (key, label, ls), color in zip(lines, ("gray", "C1", "C2", "C4"), strict=True):
    ppl = r["references_perplexity"][key]
    ax.axhline(
      ref[key],
      color=color,
      ls=ls,
      lw=1,
      label=f"{label}: {ref[key]:.2f} bits, perplexity {ppl:.0f}",
    )
  ax.annotate(
    f"{ev['fused_bits'][-1]:.2f} bits, perplexity {ev['perplexity'][-1]:.0f}",
    (ev["step"][-1], ev["fused_bits"][-1]),
    textcoords="offset points",
    xytext=(-6, 10),
    ha="right",
    fontsize=8,
    color="C0",
  )
  ax.set(
    xlabel="training step",
    ylabel="cross-entropy (bits per token)",
    title=f"bigram softmax regression on the Python stdlib, V = {r['vocab']['size']}",
    ylim=(0.9 * min(min(ref.values()), min(ev["fused_bits"])), ref["uniform"] + 0.5),
  )
  ax.legend(fontsize=7, loc="upper right")
  gap = np.asarray(ev["relative_gap"], float)
  step = np.asarray(ev["step"])
  eps = float(np.finfo(r["dtype"]).eps)
  floor = eps / 16  # where exact agreement (a gap of 0) is drawn: log axes have no 0
  ax_gap.plot(step[gap > 0], gap[gap > 0], ls="none", marker="o", color="C0", label="measured")
  if (gap == 0).any():
    ax_gap.plot(
      step[gap == 0],
      np.full((gap == 0).sum(), floor),
      ls="none",
      marker="v",
      color="C0",
      mfc="none",
      label="exactly 0 (drawn at the bottom)",
    )
  ax_gap.axhline(
    r["agreement_tolerance"],
    color="C3",
    ls="--",
    lw=1,
    label=f"tolerance: {r['agreement_tolerance']:.2g}",
  )
  ax_gap.axhline(eps, color="gray", ls=":", lw=1, label=f"eps({r['dtype']}) = {eps:.2g}")
  ax_gap.set_ylim(floor / 4, max(r["agreement_tolerance"], gap.max()) * 10)
  ax_gap.set(
    yscale="log",
    xlabel="training step",
    ylabel="|fused − naive| / naive",
    title="held-out CE: fused vs materialised",
  )
  ax_gap.legend(fontsize=7)
  for a in (ax, ax_gap):
    a.grid(alpha=0.3)
  workdir.save_figure(
    fig,
    "vocab_scale_heldout.png",
    "Held-out cross-entropy of the bigram model (bits per token) against the unigram and "
    "count-bigram references; fused and naive losses on the same steps.",
  )


def _figure_memory(workdir, r: dict, times: dict) -> None:
  """Temporaries (MiB) and time (ms) of the loss and its gradient vs V, fused vs naive."""
  fig, (ax_m, ax_t) = _common.new_figure(1, 2, figsize=(12, 4.8))
  mem, large = r["memory"], r["memory"]["largest_v_at_memory_batch_size"]
  v, n = mem["vocab_size"], mem["batch_size"]
  colors = {"fused": "C0", "naive": "C3"}
  for name, color in colors.items():
    ax_m.plot(v, np.asarray(mem[name]) / 2**20, marker="o", color=color, label=f"{name}, N = {n}")
    ax_m.plot(
      large["vocab_size"],
      large[name] / 2**20,
      ls="none",
      marker="*",
      ms=12,
      color=color,
      label=f"{name}, N = {large['batch_size']} (compiled only)",
    )
    ax_t.plot(v, 1e3 * np.asarray(times[name]), marker="o", color=color, label=name)
  ax_m.plot(
    v,
    np.asarray(mem["logits_bytes"]) / 2**20,
    ls=":",
    color="gray",
    label=f"one [N, V] array, N = {n}",
  )
  ax_m.annotate(
    f"naive ÷ fused = {large['naive'] / large['fused']:.1f}",
    (large["vocab_size"], large["fused"] / 2**20),
    textcoords="offset points",
    xytext=(-8, 8),
    ha="right",
    fontsize=8,
    color="C0",
  )
  ax_m.text(
    0.98,
    0.03,
    "the fused loss works in [chunk, V] blocks: while N is within one chunk it\n"
    "holds about what the naive step does; beyond, only the naive step grows with N",
    transform=ax_m.transAxes,
    ha="right",
    va="bottom",
    fontsize=7,
    color="0.3",
  )
  lows = min(min(mem["fused"]), min(mem["naive"]), large["fused"])
  ax_m.set_ylim(lows / 2**20 / 2, max(large["naive"], max(mem["naive"])) / 2**20 * 2)
  ax_m.set(
    xscale="log",
    yscale="log",
    xlabel="vocabulary size V",
    ylabel="XLA temporaries (MiB)",
    title="mean loss and its gradient (E, W, b): temporaries",
  )
  ax_t.set(
    xscale="log",
    yscale="log",
    xlabel="vocabulary size V",
    ylabel="loss + gradient time (ms, median)",
    title=f"the same at N = {times['batch_size']}: time (this run's step_time.json)",
  )
  for a in (ax_m, ax_t):
    a.set_xticks(v, [str(x) for x in v])
    a.minorticks_off()
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=7)
  fig.suptitle(
    f"bigram model, D = {r['embed_dim']}, {r['dtype']}, fused chunk_size: "
    f"{r['chunk_size'] or 'the library default'}",
    fontsize=9,
  )
  workdir.save_figure(
    fig,
    "vocab_scale_memory.png",
    "Temporaries (MiB, log scale) and loss + gradient time against the vocabulary size V, "
    "fused against naive.",
  )


if __name__ == "__main__":
  _common.main(run, validate)
