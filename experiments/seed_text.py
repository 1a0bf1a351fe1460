"""The passages of the seed text that the experiments check, quoted and translated.

The seed is a short Chinese text on entropy and cross-entropy (not shipped with the
repository). ``REPORT.md`` quotes the passage of every section a claim cites, in the
original and in English, so that the report reads without the seed. Formulas are given
as the seed writes them (including its §4.1 loss, which omits the (1 - y) term).
"""

# section: (title, original, English translation)
SECTIONS = {
  "2.1": (
    "Entropy and labels in supervised learning",
    "H = - Σ p(c_i) × log p(c_i) 这个公式衡量了模型预测结果的不确定性。预测越模糊,熵越高。",
    "H = -Σ p(c_i) log p(c_i) measures the uncertainty of the model's predictions. The "
    "vaguer the prediction, the higher the entropy.",
  ),
  "2.2": (
    "From deterministic to probabilistic classification",
    "Logistic 函数(用于二分类)、Softmax 函数(用于多分类)、双曲正切函数(Tanh)(归一化后也可"
    "用于概率)。这些函数输出的是一个在 [0,1] 区间内的值或向量,可以解释为类别归属的概率分布。",
    "The logistic function (binary classification), softmax (multi-class) and tanh (after "
    "normalisation, also usable as a probability). These functions output a value or "
    "vector in [0, 1] that can be read as a probability distribution over the classes.",
  ),
  "2.3": (
    "The label distribution and its entropy",
    "该熵值反映了模型预测的不确定性。预测越集中(某个类别概率接近 1),熵越低;预测越模糊"
    "(多个类别概率接近),熵越高。",
    "This entropy reflects the uncertainty of the model's prediction. The more concentrated "
    "the prediction (one class with probability near 1), the lower the entropy; the vaguer "
    "(several classes with similar probabilities), the higher.",
  ),
  "2.4": (
    "An example of entropy in classification",
    "H = -σ(x) log σ(x) - (1 - σ(x)) log(1 - σ(x))。当模型输出不确定(即概率接近 0.5)时,"
    "熵达到最大值。",
    "H = -σ(x) log σ(x) - (1 - σ(x)) log(1 - σ(x)). When the model's output is uncertain "
    "(the probability near 0.5), the entropy is at its maximum.",
  ),
  "2.5": (
    "Comparing several distributions",
    "模型 1: σ₁(x) = 1/(1 + e^{-x});模型 2: σ₂(x) = 1/(1 + e^{-1-2x})。它们的熵不同,"
    "说明不同模型的预测分布具有不同的不确定性。",
    "Model 1: σ₁(x) = 1/(1 + e^{-x}); model 2: σ₂(x) = 1/(1 + e^{-1-2x}). Their entropies "
    "differ: different models' predictive distributions have different uncertainty.",
  ),
  "2.6": (
    "Comparing different entropies",
    "模型 3: σ₃(x) = 1/(1 + e^{10+5x})。它的输出更偏向于某一类,因此熵更低。这说明:如果我们想"
    "比较模型之间的预测效果,不能只看熵的大小,而需要一个统一的度量标准。",
    "Model 3: σ₃(x) = 1/(1 + e^{10+5x}). Its output leans more towards one class, so its "
    "entropy is lower. This shows that to compare models' predictive performance we cannot "
    "look at the size of the entropy alone; we need a common measure.",
  ),
  "3.1": (
    "Definition of cross-entropy",
    "交叉熵是衡量两个概率分布之间差异的指标 ... H(p, q) = - Σ p(x_i) × log q(x_i)。"
    "注意:交叉熵不是对称的,即 H(p, q) ≠ H(q, p)。",
    "Cross-entropy measures the difference between two probability distributions ... "
    "H(p, q) = -Σ p(x_i) log q(x_i). Note: cross-entropy is not symmetric, "
    "H(p, q) ≠ H(q, p).",
  ),
  "3.2": (
    "Cross-entropy for comparing models",
    "真实分布:σ₁(x);预测分布:σ₂(x) ... 交叉熵通常比两个分布各自的熵更高,说明它反映了两个"
    "分布之间的“距离”。",
    "True distribution σ₁(x), predicted distribution σ₂(x) ... The cross-entropy is usually "
    "higher than the entropy of either distribution, which shows that it reflects the "
    "'distance' between the two distributions.",
  ),
  "3.3": (
    "Order matters",
    "交叉熵的顺序不能颠倒。在监督学习中:真实分布(标签)是第一个参数 p(x),模型预测是第二个"
    "参数 q(x)。这是标准做法,顺序错误会导致梯度方向错误,影响训练效果。",
    "The order of the cross-entropy cannot be reversed. In supervised learning the true "
    "distribution (the label) is the first argument p(x) and the model's prediction the "
    "second, q(x). This is the standard practice; the wrong order leads to a wrong gradient "
    "direction and harms training.",
  ),
  "4.1": (
    "The cross-entropy loss",
    "以逻辑回归为例,模型预测为 ŷ = σ(x),交叉熵损失函数为 L(x, y) = -(1/n) Σ y_i log σ(x_i)。"
    "这个函数衡量了模型预测与真实标签之间的差异。我们通过最小化这个损失函数来优化模型参数。",
    "For logistic regression the prediction is ŷ = σ(x) and the cross-entropy loss is "
    "L(x, y) = -(1/n) Σ y_i log σ(x_i). It measures the difference between the predictions "
    "and the true labels; we optimise the model's parameters by minimising it.",
  ),
  "4.2": (
    "Gradient-descent optimisation of the cross-entropy",
    "σ'(x, β) = σ(x, β)(1 - σ(x, β)) ... ∇_β L(x, y) = -(1/n) Σ (y_i - σ_i) x_i。"
    "然后通过梯度下降法更新参数,逐步优化模型。",
    "σ'(x, β) = σ(x, β)(1 - σ(x, β)) ... the gradient of the loss with respect to β is "
    "∇_β L(x, y) = -(1/n) Σ (y_i - σ_i) x_i. The parameters are then updated by gradient "
    "descent, optimising the model step by step.",
  ),
  "5": (
    "Summary",
    "交叉熵 ... 衡量模型预测与真实标签之间的差异;作为分类模型的损失函数;支持通过梯度下降进行"
    "参数优化;可用于比较不同模型的预测效果。",
    "Cross-entropy measures the gap between a model's predictions and the true labels; "
    "serves as the loss of classification models; supports optimising the parameters by "
    "gradient descent; and can be used to compare the predictive performance of models.",
  ),
}


def sections_cited(seed_section: str) -> list[str]:
  """The sections of a claim's ``seed_section`` ("4.1, 4.2" → ["4.1", "4.2"])."""
  return [part.strip() for part in seed_section.split(",") if part.strip()]
