"""Tests of E8 ``experiments/vocab_scale.py`` against independent recomputations.

The smoke config runs once. The count-based references are recomputed from the token ids
with plain ``collections.Counter`` loops (no ``np.unique``/``searchsorted``); the held-out
loss of both the fused and the materialised path is checked against a numpy float64
log-softmax over every held-out pair (not the deduplicated, count-weighted ones the
experiment uses); the tokeniser against a hand-tokenised line; the corpus hash across reads.
"""

import collections
import json
import math
from pathlib import Path

import jax
import numpy as np
from absl.testing import absltest

from experiments import _common, vocab_scale
from tests.experiments import _smoke

jax.config.update("jax_numpy_rank_promotion", "raise")

RTOL = 1e-10 if jax.config.jax_enable_x64 else 1e-5  # float64 reference vs the default dtype


def _corpus(config):
  return vocab_scale.load_corpus(
    max_files=config.corpus.max_files,
    heldout_fraction=config.corpus.heldout_fraction,
    vocab_size=config.vocab_size,
  )


def _pairs(ids_per_file):
  return [(int(a), int(b)) for ids in ids_per_file for a, b in zip(ids[:-1], ids[1:], strict=True)]


class VocabScaleExperimentTest(_smoke.SmokeRun):
  experiment = "vocab_scale"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.corpus = _corpus(cls.config)

  def test_tokenizer(self):
    self.assertEqual(
      vocab_scale.tokenize("def f(x1, *a) -> int:\n    return x1 ** 2 != 0x1F + 3.5e-2j  # δx ok"),
      ["def", "f", "(", "x1", ",", "*", "a", ")", "->", "int", ":", "return", "x1", "**", "2"]
      + ["!=", "0x1F", "+", "3.5e-2j", "#", "δx", "ok"],
    )

  def test_corpus_is_the_stdlib_without_tests_and_its_hash_is_stable(self):
    info = self.results["corpus"]
    self.assertEqual(info["num_files"], self.config.corpus.max_files)
    self.assertEqual(info["num_train_files"] + info["num_heldout_files"], info["num_files"])
    self.assertGreater(info["num_heldout_files"], 0)
    self.assertEqual(info["sha256"], self.corpus.info["sha256"])  # a second, independent read
    self.assertEqual(info, self.corpus.info)
    files = vocab_scale.stdlib_files(Path(info["stdlib"]))
    self.assertIn("json/decoder.py", files)
    self.assertFalse([f for f in files if {"test", "tests", "site-packages"} & set(f.split("/"))])
    self.assertEqual(self.results["vocab"]["size"], self.config.vocab_size)
    self.assertEqual(len(self.corpus.vocab), self.config.vocab_size)
    self.assertEqual(self.corpus.vocab[0], vocab_scale.UNK)

  def test_references_match_counter_loops(self):
    v, k = len(self.corpus.vocab), self.config.smoothing_k
    train, heldout = _pairs(self.corpus.train_ids), _pairs(self.corpus.heldout_ids)
    self.assertEqual(self.results["num_heldout_pairs"], len(heldout))
    c_next = collections.Counter(b for _, b in train)
    c_prev = collections.Counter(a for a, _ in train)
    c_pair = collections.Counter(train)
    p_hat = collections.Counter(b for _, b in heldout)
    n = len(heldout)
    expected = {
      "uniform": math.log(v),
      "unigram_entropy_heldout": -sum(c / n * math.log(c / n) for c in p_hat.values()),
      "unigram_addk": -sum(math.log((c_next[b] + k) / (len(train) + k * v)) for _, b in heldout)
      / n,
      "bigram_addk": -sum(math.log((c_pair[a, b] + k) / (c_prev[a] + k * v)) for a, b in heldout)
      / n,
    }
    for key, value in expected.items():
      self.assertAlmostEqual(self.results["references_nats"][key], value, places=10, msg=key)
      self.assertAlmostEqual(self.results["references_bits"][key], value / math.log(2), places=10)
    # Gibbs: no unigram model beats the held-out tokens' own entropy.
    self.assertLess(expected["unigram_entropy_heldout"], expected["unigram_addk"])

  def test_heldout_losses_match_numpy_on_every_pair(self):
    # The run's shapes (V, D, chunk), so that the compiled evaluation is reused.
    v, d = len(self.corpus.vocab), self.config.model.embed_dim
    rng = np.random.default_rng(1)
    dtype = jax.numpy.zeros(()).dtype
    params = {
      "embedding": rng.normal(size=(v, d)),
      "w": 0.5 * rng.normal(size=(d, v)),
      "b": rng.normal(size=v),
    }
    params = {k: jax.numpy.asarray(x, dtype) for k, x in params.items()}
    prev, nxt = vocab_scale.bigram_pairs(self.corpus.heldout_ids)
    eval_set = vocab_scale._distinct_pairs(prev, nxt, v, self.config.eval_chunk)
    out = vocab_scale.heldout_losses(params, *eval_set, chunk_size=self.config.model.chunk_size)
    p = {k: np.asarray(x, np.float64) for k, x in params.items()}
    logits = p["embedding"][prev] @ p["w"] + p["b"]
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    expected = np.mean(lse - logits[np.arange(len(nxt)), nxt])
    for name in ("fused", "naive"):
      np.testing.assert_allclose(out[name], expected, rtol=RTOL, err_msg=name)

  def test_fused_equals_naive_along_the_run(self):
    ev = self.results["evaluation"]
    tol = self.results["agreement_tolerance"]
    fused, naive = np.array(ev["fused_nats"]), np.array(ev["naive_nats"])
    np.testing.assert_allclose(fused, naive, rtol=tol)
    np.testing.assert_allclose(ev["relative_gap"], np.abs(fused - naive) / naive)
    self.assertLessEqual(max(ev["final_gradient_relative_gap"].values()), tol)
    # W = 0, b = 0 at step 0: every prediction is uniform, the loss log V.
    np.testing.assert_allclose(fused[0], math.log(self.results["vocab"]["size"]), rtol=RTOL)
    np.testing.assert_allclose(ev["fused_bits"], fused / math.log(2))
    np.testing.assert_allclose(ev["perplexity"], np.exp(fused))
    for key, nats in self.results["references_nats"].items():
      np.testing.assert_allclose(self.results["references_perplexity"][key], np.exp(nats))
    self.assertLess(fused[-1], fused[0])

  def test_claims_follow_from_the_numbers(self):
    r = self.results
    verdicts = {c["id"]: c["holds"] for c in r["claims"]}
    ev, mem = r["evaluation"], r["memory"]["largest_v_at_memory_batch_size"]
    self.assertEqual(
      verdicts["5-bigram-below-unigram-entropy"],
      ev["fused_bits"][-1] < r["references_bits"]["unigram_entropy_heldout"],
    )
    self.assertTrue(verdicts["5-bigram-below-unigram-entropy"])
    self.assertTrue(verdicts["3.1-fused-equals-materialised"])
    self.assertEqual(
      verdicts["4.1-fused-memory"],
      mem["naive"] / mem["fused"] >= self.config.memory_ratio_min,
    )
    self.assertEqual(r["memory"]["vocab_size"], list(self.config.sweep.vocab_sizes))
    self.assertEqual(mem["batch_size"], self.config.sweep.memory_batch_size)
    # The naive step holds at least the [N, V] logits; timings stay out of results.json.
    self.assertEqual(mem["vocab_size"], self.config.sweep.vocab_sizes[-1])
    self.assertGreaterEqual(mem["naive"], mem["logits_bytes"])
    self.assertGreaterEqual(r["memory"]["naive"][-1], r["memory"]["logits_bytes"][-1])
    times = json.loads((self.workdir / "step_time.json").read_text("utf-8"))
    self.assertEqual(times["vocab_size"], r["memory"]["vocab_size"])
    self.assertNotIn("step_time", json.dumps(r))
    for name in r["figures"]:
      self.assertTrue((self.workdir / name).is_file())

  def test_config_errors(self):
    for key, value, pattern in (
      ("train.learning_rate", -1.0, "learning_rate"),
      ("train.num_evals", 7, "multiple"),
      ("sweep.vocab_sizes", (4096, 1024), "increasing"),
      ("sweep.memory_batch_size", 0, "memory_batch_size"),
      ("corpus.heldout_fraction", 1.0, "heldout_fraction"),
    ):
      config = _common.load_config("vocab_scale", "smoke")
      config.unlock()
      group, leaf = key.split(".")
      config[group][leaf] = value
      with self.assertRaisesRegex(_common.ConfigError, pattern, msg=key):
        vocab_scale.validate(config)


if __name__ == "__main__":
  absltest.main()
