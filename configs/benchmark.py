"""Config of the SPEC §6 benchmark, ``experiments/benchmark.py``.

From the repository root::

    python -m experiments.benchmark --config=configs/benchmark.py --workdir=runs/bench
    python -m experiments.benchmark --config=configs/benchmark.py:smoke --workdir=/tmp/bench
    python -m experiments.benchmark --config=configs/benchmark.py:gpu --workdir=runs/bench-gpu
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m experiments.benchmark \
        --config=configs/benchmark.py --workdir=runs/bench-hugetlb
    python -m experiments.benchmark --config=configs/benchmark.py --config.repeats=9 \
        --config.sections='("softmax", "entropy")' --workdir=runs/bench-softmax
"""

import ml_collections

from experiments.config_checks import (
  boolean,
  bounded,
  choice,
  integer,
  learning_rate,
  real,
  tuple_of,
)

# The benchmark's groups of cases, in the order they run.
SECTIONS = (
  "sigmoid",
  "focal",  # sigmoid_focal_loss vs optax, on the sigmoid inputs
  "softmax",
  "poly",  # poly_loss_cross_entropy vs optax, on the dense softmax inputs
  "entropy",
  "train_step",
  "sweep",
  "optimum",
  "softmax_optimum",  # fit_softmax_regression vs scikit-learn, L2-penalised
  "import",
  "fused",
)

POSITIVE = integer(low=1)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The default config (a few minutes), or a ``variant``: "smoke" (tiny sizes, seconds) or
  "gpu" (SPEC §9's sizes for one accelerator, at most five minutes)."""
  config = ml_collections.ConfigDict()
  # which groups of cases to run (a subset of SECTIONS)
  config.sections = bounded(SECTIONS, tuple_of(choice(*SECTIONS)))
  config.seed = bounded(0, integer(low=0))  # seed of every synthetic input (numpy and jax.random)
  # untimed calls of each contender after compiling, before timing
  config.warmup = bounded(1, integer(low=0))
  # timed calls per contender, interleaved round-robin; median reported
  config.repeats = bounded(5, POSITIVE)
  # Elementwise sigmoid BCE and focal loss, `.mean()`: number of float32 logits (64M = 2**26).
  config.sigmoid_size = bounded(2**26, POSITIVE)
  # B×C shapes of the softmax cross-entropies (integer and dense targets), the poly-1 loss
  # and the entropy.
  config.softmax_shapes = bounded(
    ((65536, 1000), (4096, 32000)), tuple_of(tuple_of(POSITIVE, length=2, what="a pair (B, C)"))
  )
  # logits ~ N(0, scale²): a mix of confident and uncertain rows
  config.logit_scale = bounded(4.0, real(low=0, low_open=True))
  # Logistic regression: X [N, d] float32 from the true model w* ~ N(0, s²/d), b*, as in
  # xent_jax.data.make_logistic_data.
  config.num_features = bounded(100, POSITIVE)  # d
  config.weight_scale = bounded(1.0, real(low=0))  # s
  config.bias = bounded(0.5, real())  # b*
  # N of the timed SGD train step
  config.train_step_sizes = bounded((200_000, 1_000_000), tuple_of(POSITIVE))
  config.learning_rate = bounded(0.1, learning_rate())  # SGD learning rate of the timed train step
  # A learning-rate sweep, compile included: xent_jax.training.train_full_batch (η traced:
  # one compilation) against the plain optax loop a user writes (a jitted step per value).
  config.sweep_size = bounded(20_000, POSITIVE)  # N
  config.sweep_values = bounded(8, POSITIVE)  # learning rates, geometric from 0.05 to 2
  config.sweep_steps = bounded(200, POSITIVE)  # full-batch momentum-SGD steps per value
  config.sweep_repeats = bounded(3, POSITIVE)  # whole sweeps of each contender, interleaved; median
  # Time to the optimum: xent_jax.fit.fit_logistic_regression (JAX caches cleared before
  # each run: compile included) against scikit-learn LogisticRegression(lbfgs, C=inf).
  # N of the time-to-optimum races
  config.optimum_sizes = bounded((200_000, 1_000_000), tuple_of(POSITIVE))
  config.optimum_repeats = bounded(3, POSITIVE)  # full runs of each contender, interleaved; median
  # relative gap to the float64 optimum that counts as reached
  config.optimum_rtol = bounded(1e-6, real(low=0, low_open=True))
  # The same race for softmax regression: xent_jax.fit.fit_softmax_regression against
  # multinomial LogisticRegression(lbfgs, C = 1/(λN)), data from a softmax model (W* ~ N(0, s²/d)).
  config.softmax_optimum_sizes = bounded((200_000, 1_000_000), tuple_of(POSITIVE))  # N
  config.softmax_optimum_classes = bounded(10, integer(low=2))  # K
  config.softmax_optimum_l2 = bounded(1e-4, real(low=0, low_open=True))  # λ
  # fresh interpreters per import statement; median reported
  config.import_repeats = bounded(7, POSITIVE)
  # write each compiled function's optimised HLO to WORKDIR/hlo/
  config.save_hlo = bounded(True, boolean())
  # Fused linear + softmax cross-entropy (SPEC §7): (N tokens, D hidden, V vocabulary),
  # float32, value_and_grad w.r.t. hidden and weight; the bound on ours/naive XLA
  # temporaries for each shape; logits ~ N(0, scale²); the naive optax version runs only
  # where its temporaries are below this many MiB (else it is compiled, not run).
  config.fused_shapes = bounded(
    ((8192, 512, 32768), (32768, 256, 65536)),
    tuple_of(tuple_of(POSITIVE, length=3, what="a triple (N, D, V)")),
  )
  # the bound on ours/naive XLA temporaries, one per shape
  config.fused_memory_bounds = bounded((1 / 16, 1 / 128), tuple_of(real(low=0, low_open=True)))
  config.fused_logit_scale = bounded(4.0, real(low=0, low_open=True))  # logits ~ N(0, scale²)
  # the naive version runs only where its temporaries are below this many MiB
  config.fused_naive_max_mib = bounded(4096.0, real(low=0))
  # of hidden and weight: "float32" or "bfloat16"
  config.fused_dtype = bounded("float32", choice("float32", "bfloat16"))

  if variant == "smoke":  # every section at tiny sizes; no warm-up, one solver
    config.warmup = 0
    config.repeats = 2
    config.sigmoid_size = 2**14
    config.softmax_shapes = ((64, 100),)
    config.train_step_sizes = (2000,)
    config.num_features = 10
    config.sweep_size = 2000
    config.sweep_values = 3
    config.sweep_steps = 5
    config.sweep_repeats = 1
    config.optimum_sizes = (2000,)
    config.optimum_repeats = 1
    config.softmax_optimum_sizes = (2000,)
    config.softmax_optimum_classes = 4
    config.import_repeats = 1
    config.save_hlo = False
    config.fused_shapes = ((512, 32, 2048),)
    config.fused_memory_bounds = (1.0,)
  elif variant == "gpu":  # SPEC §9: one accelerator, at most five minutes (`make gpu-check`)
    config.sections = ("sigmoid", "softmax", "entropy", "train_step", "fused")
    config.warmup = 1
    config.repeats = 3
    config.sigmoid_size = 2**28
    config.softmax_shapes = ((8192, 128256),)
    config.train_step_sizes = (1_000_000,)
    # SPEC §7's accelerator table: bfloat16 hidden and weight, shapes A and B; the naive
    # version runs where its temporaries (16000 and 32064 MiB) fit on an 80 GB card.
    config.fused_shapes = ((8192, 2304, 256000), (32768, 4096, 128256))
    config.fused_memory_bounds = (1 / 16, 1 / 16)
    config.fused_dtype = "bfloat16"
    config.fused_naive_max_mib = 40000.0
  elif variant is not None:
    raise ValueError(f"unknown config variant {variant!r} (known: 'smoke', 'gpu')")
  return config
