"""Tests for xent_jax.data: splits, standardisation (vs scikit-learn) and synthetic draws."""

import subprocess
import sys

import chex
import jax
import numpy as np
from absl.testing import absltest, parameterized

from xent_jax import data

jax.config.update("jax_numpy_rank_promotion", "raise")

FLOAT = np.dtype("float64" if jax.config.jax_enable_x64 else "float32")
ATOL = 1e-12 if jax.config.jax_enable_x64 else 1e-5


class RealDataTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ("breast_cancer", data.load_breast_cancer, "load_breast_cancer", 2, (455, 30), 114),
    ("digits", data.load_digits, "load_digits", 10, (1437, 64), 360),
  )
  def test_split_and_standardisation_match_scikit_learn(self, load, name, k, shape, m):
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    dataset = load(seed=3)
    self.assertEqual(dataset.num_classes, k)
    chex.assert_shape([dataset.train.x, dataset.test.x], [shape, (m, shape[1])])
    chex.assert_shape([dataset.train.y, dataset.test.y], [shape[:1], (m,)])
    chex.assert_type([dataset.train.x, dataset.train.y], [FLOAT, np.int32])
    # Independent oracle: the same seeded stratified split, scaled by StandardScaler fitted
    # on the training rows only (a constant pixel has scale 1 there too).
    x, y = getattr(datasets, name)(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=3, stratify=y)
    scaler = StandardScaler().fit(x_tr)
    np.testing.assert_allclose(dataset.train.x, scaler.transform(x_tr), atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(dataset.test.x, scaler.transform(x_te), atol=ATOL, rtol=ATOL)
    np.testing.assert_array_equal(dataset.train.y, y_tr)
    np.testing.assert_array_equal(dataset.test.y, y_te)
    # Training statistics only: the held-out split is not itself standardised.
    np.testing.assert_allclose(np.mean(dataset.train.x, axis=0), 0.0, atol=1e-5)
    self.assertGreater(np.max(np.abs(np.mean(dataset.test.x, axis=0))), 1e-3)

  def test_split_is_seeded(self):
    a, b, c = (data.load_breast_cancer(seed=s) for s in (0, 0, 1))
    chex.assert_trees_all_equal(a, b)
    self.assertFalse(np.array_equal(a.test.y, c.test.y) and np.array_equal(a.test.x, c.test.x))
    # Stratified: both splits keep the class balance (212 malignant of 569).
    self.assertAlmostEqual(float(np.mean(a.train.y)), 357 / 569, delta=0.01)
    self.assertAlmostEqual(float(np.mean(a.test.y)), 357 / 569, delta=0.01)

  def test_standardize_constant_feature_and_train_statistics(self):
    x_train = np.array([[1.0, 5.0], [3.0, 5.0]])  # feature 1 is constant
    x_test = np.array([[5.0, 7.0]])
    train, test = data.standardize(x_train, x_test)
    np.testing.assert_array_equal(train, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(test, [[3.0, 2.0]])  # (5-2)/1 and (7-5)/1: no division by 0


class SyntheticDataTest(parameterized.TestCase):
  def test_logistic_labels_follow_the_true_model(self):
    dataset = data.make_logistic_data(7, 20_000, 100, 4, weight_scale=2.0, bias=-0.5)
    chex.assert_shape(
      [dataset.train.x, dataset.train.y, dataset.test.x], [(20_000, 4), (20_000,), (100, 4)]
    )
    chex.assert_type([dataset.train.x, dataset.train.y], [FLOAT, np.int32])
    self.assertEqual(float(dataset.true_params["b"]), -0.5)
    x = np.asarray(dataset.train.x, np.float64)
    p = 1 / (1 + np.exp(-(x @ np.asarray(dataset.true_params["w"], np.float64) - 0.5)))
    y = np.asarray(dataset.train.y)
    self.assertEqual(set(np.unique(y)), {0, 1})
    # Mean label and label-weighted feature means match the model (within 5 std. errors).
    stderr = np.sqrt(np.mean(p * (1 - p)) / len(y))
    self.assertAlmostEqual(np.mean(y), np.mean(p), delta=5 * stderr)
    np.testing.assert_allclose(x.T @ y / len(y), x.T @ p / len(y), atol=5 * 0.5 / np.sqrt(len(y)))

  def test_softmax_labels_follow_the_true_model(self):
    dataset = data.make_softmax_data(8, 20_000, 10, 3, 4)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), dataset.true_params)
    chex.assert_shape([params["w"], params["b"]], [(3, 4), (4,)])
    z = np.asarray(dataset.train.x, np.float64) @ params["w"] + params["b"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    counts = np.bincount(np.asarray(dataset.train.y), minlength=4)
    self.assertEqual(len(counts), 4)  # labels in [0, K)
    np.testing.assert_allclose(counts / 20_000, p.mean(0), atol=5 * 0.5 / np.sqrt(20_000))

  def test_synthetic_data_is_seeded(self):
    chex.assert_trees_all_equal(
      data.make_logistic_data(1, 50, 5, 2), data.make_logistic_data(1, 50, 5, 2)
    )
    self.assertFalse(
      np.array_equal(
        data.make_softmax_data(1, 50, 5).train.y, data.make_softmax_data(2, 50, 5).train.y
      )
    )


class ImportTest(absltest.TestCase):
  def test_import_does_not_import_optional_dependencies(self):
    code = (
      "import sys, xent_jax, xent_jax.data, xent_jax.models, xent_jax.optimum, "
      "xent_jax.training; "
      "print(sorted(m for m in ('sklearn', 'scipy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    self.assertEqual(out.stdout.strip(), "[]")


if __name__ == "__main__":
  absltest.main()
