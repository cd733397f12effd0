"""
=====================================================
Let cross-validation choose the layer to featurize at
=====================================================

A pretrained network's last stage is specialised to ImageNet's classes:
cats, cars, coffee cups. The further a task is from those photos, the more
an earlier, more generic stage can help (Head2Toe, Evci et al., ICML 2022).
:class:`~sktransfer.PretrainedFeaturizer` takes the stage as a parameter,
``layers``, so ``GridSearchCV`` can choose it like any other.

Here the task is far from ImageNet: scikit-learn's handwritten digits, 8 x 8
grayscale scans. The search costs one pass of the network per image, however
many layers it tries: the first fit stores every stage's pooled output, and
each candidate is a slice of what was stored.

To run in about a minute on a laptop CPU, the digits go through the network at 64 px
instead of the backbone's native 224 px.
"""

# %%
# The data: handwritten digits, far from ImageNet's photos
# ---------------------------------------------------------
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import Preprocessing, PretrainedFeaturizer, get_backbone_spec

digits = load_digits()
images = (digits.images * 255 / 16).round().astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
X_train, X_test, y_train, y_test = train_test_split(
    images, digits.target, train_size=400, test_size=400, stratify=digits.target, random_state=0
)

# The lite0 weights were trained with mean = std = 0.5; only the size changes.
small = Preprocessing(input_size=64, resize_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
print("stages:", ", ".join(get_backbone_spec("efficientnet_lite0").stages))

# %%
# Search over the layer
# ---------------------
# ``-1`` is the model's own features (its last stage, pooled its way); the
# other candidates are earlier stages, average-pooled, and one concatenation.
pipe = make_pipeline(
    PretrainedFeaturizer(preprocessing=small, progress=False),
    StandardScaler(),
    LogisticRegression(C=0.1, max_iter=2000),
)
candidates = [-1, "block6", "block5", "block4", "block3", ("block4", -1)]
search = GridSearchCV(pipe, {"pretrainedfeaturizer__layers": candidates}, cv=3)
start = time.perf_counter()
search.fit(X_train, y_train)
print(f"search: {len(candidates)} layers x 3 folds in {time.perf_counter() - start:.0f} s")

scores = search.cv_results_["mean_test_score"]
for layers, score in zip(candidates, scores):
    print(f"{str(layers):<20}{score:.3f}")
picked = search.best_params_["pretrainedfeaturizer__layers"]
print("picked layers:", picked)
print(f"cross-validated accuracy, last stage: {scores[0]:.3f}")
print(f"cross-validated accuracy, picked: {search.best_score_:.3f}")
print(f"held-out accuracy, picked: {search.score(X_test, y_test):.3f}")

# %%
# Accuracy per candidate
# ----------------------
# On this far domain a middle stage beats the last one; on ImageNet-like
# photos the last stage usually wins (see the user guide's figure).
fig, ax = plt.subplots(figsize=(6, 3))
labels = [str(layers) for layers in candidates]
ax.bar(labels, scores, color=["C3" if c == picked else "C0" for c in candidates])
ax.set_ylim(min(scores) - 0.05, 1)
ax.set_ylabel("3-fold accuracy")
ax.set_title("Digits: linear probe on each layer")
ax.tick_params(axis="x", rotation=20)
fig.tight_layout()
fig.savefig("choose_layers.png")
