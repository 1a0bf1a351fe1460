"""Config of E8, ``experiments/vocab_scale.py`` (SPEC §7: cross-entropy at vocabulary scale).

From the repository root::

    python -m experiments.vocab_scale --config=configs/vocab_scale.py --workdir=runs/e8
    python -m experiments.vocab_scale --config=configs/vocab_scale.py:smoke --workdir=/tmp/e8
    python -m experiments.vocab_scale --config=configs/vocab_scale.py:full --workdir=runs/e8-full

Variants:

* default: 200 of the standard library's files, V = 4096, 200 Adam steps of 512 pairs,
  memory and time swept over V = 1024, 4096, 16384 at N = 512 tokens, temporaries also at
  V = 16384, N = 8192 (compiled only); ~18 CPU-seconds (one process, compiles included).
* ``smoke``: 40 files, V = 1024, 60 steps, sweep V = 16384 only (the test; ~10 CPU-seconds).
* ``full``: every file (734 on CPython 3.11), V = 32768 (SPEC §7), D = 64, 1000 steps of 512
  pairs, sweep V = 4096 … 65536 at N = 4096 (the naive version holds 2 GiB of temporaries at
  V = 65536), and V = 65536 compiled at N = 32768 (16 GiB for the naive version, never
  allocated); measured 268 CPU-seconds, 7 to 16 minutes of wall time on the shared 2-core
  machine, 4 GB peak RSS; most of it training and the held-out evaluations (47k distinct
  pairs × V).
"""

import ml_collections

from experiments.config_checks import bounded, integer, learning_rate, real, reals


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config, or a ``variant`` of it ("smoke" or "full", see the docstring)."""
  config = ml_collections.ConfigDict()
  # PRNG seed of the initial embedding and of the minibatch draws
  config.seed = bounded(0, integer(low=0))

  # The corpus: the running Python's own standard library, *.py, tests excluded.
  config.corpus = ml_collections.ConfigDict()
  # files used (0: all), in a fixed hash order of their paths
  config.corpus.max_files = bounded(200, integer(low=0))
  # files whose path hash falls below it are held out
  config.corpus.heldout_fraction = bounded(0.1, real(low=0, high=1, low_open=True, high_open=True))
  # V: the V - 1 most frequent training tokens + <unk>
  config.vocab_size = bounded(4096, integer(low=2, high=1 << 20))

  # Bigram softmax regression: logits = E[previous token] @ W + b.
  config.model = ml_collections.ConfigDict()
  # D, the rows of W (and columns of E)
  config.model.embed_dim = bounded(32, integer(low=1, high=1 << 16))
  # E ~ N(0, init_scale²); W = 0 and b = 0 (uniform start)
  config.model.init_scale = bounded(1.0, real(low=0, low_open=True))
  # the fused loss's chunk_size (0: the library's default)
  config.model.chunk_size = bounded(0, integer(low=0))

  # Adam on minibatches of (previous, next) token pairs drawn uniformly with replacement.
  config.train = ml_collections.ConfigDict()
  config.train.learning_rate = bounded(3e-2, learning_rate())  # Adam step size
  config.train.batch_size = bounded(512, integer(low=1, high=1 << 20))  # token pairs per step
  config.train.num_steps = bounded(200, integer(low=1, high=10_000_000))  # optimiser steps
  # held-out evaluations after steps k·num_steps/num_evals (+ step 0)
  config.train.num_evals = bounded(4, integer(low=1))
  # held-out pairs per evaluation chunk (bounds the naive logits)
  config.eval_chunk = bounded(2048, integer(low=1, high=1 << 20))

  # Count-based references, fitted on the training tokens.
  # add-k smoothing of the unigram and bigram count models
  config.smoothing_k = bounded(0.01, real(low=0, low_open=True))

  # Fused vs materialised: held-out mean CE must agree to agreement_ulps · eps(dtype).
  config.agreement_ulps = bounded(64, real(low=1))

  # Temporaries and time of the mean loss and its gradient (E, W, b), fused vs naive, over V.
  config.sweep = ml_collections.ConfigDict()
  # V values (model shapes only; random data)
  config.sweep.vocab_sizes = bounded(
    (1024, 4096, 16384), reals(increasing=True, low=2, high=1 << 20)
  )
  # N tokens of the steps compiled, measured and timed
  config.sweep.time_batch_size = bounded(512, integer(low=1, high=1 << 20))
  # N of the largest V's steps compiled only (memory)
  config.sweep.memory_batch_size = bounded(8192, integer(low=1, high=1 << 24))
  # timed calls of each step (median), interleaved, after a warm-up
  config.sweep.repeats = bounded(2, integer(low=1, high=1000))
  # Claim: at the largest V and N = memory_batch_size the naive step's temporaries (two
  # [N, V] arrays: logits and their gradient) are at least this many times the fused one's.
  config.memory_ratio_min = bounded(4.0, real(low=0, low_open=True))

  if variant == "smoke":
    config.corpus.max_files = 40
    config.vocab_size = 1024
    config.train.num_steps = 60
    config.train.num_evals = 3
    config.sweep.vocab_sizes = (16384,)
    config.sweep.time_batch_size = 256
    config.sweep.repeats = 1
  elif variant == "full":
    config.corpus.max_files = 0
    config.vocab_size = 32768
    config.model.embed_dim = 64
    config.train.num_steps = 1000
    config.train.num_evals = 5
    config.eval_chunk = 1024
    config.sweep.vocab_sizes = (4096, 16384, 32768, 65536)
    config.sweep.time_batch_size = 4096
    config.sweep.memory_batch_size = 32768
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke', 'full')")
  return config
