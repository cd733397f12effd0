"""
=================================================================
Where does it go wrong? Confusion matrix and misclassified images
=================================================================

An accuracy score says how often a classifier is wrong, not where. Two
plots answer that: the confusion matrix (which classes get mixed up) and
the misclassified images themselves (why: a blurred photo, a wrong label, a
class that really is ambiguous at this size).

Every prediction below comes from a model that did not see the image in
training: :func:`~sklearn.model_selection.cross_val_predict` fits one model
per fold and predicts the fold it left out. The images are small 24 x 24
patches of scikit-image's brick, grass and gravel photos, small enough that
a few are hard to tell apart.
"""

# %%
# Out-of-fold probabilities for every patch
# -----------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import ConfusionMatrixDisplay, classification_report
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline

from sktransfer import PretrainedFeaturizer
from sktransfer.datasets import load_textures

X, y = load_textures(patch_size=24, stride=48)  # 121 patches per class
pipe = make_pipeline(PretrainedFeaturizer(), LogisticRegression(max_iter=1000))
cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
proba = cross_val_predict(pipe, X, y, cv=cv, method="predict_proba")

classes = np.unique(y)  # the column order of predict_proba
predicted = classes[proba.argmax(axis=1)]
print(classification_report(y, predicted, digits=3))

# %%
# Confusion matrix
# ----------------
# Rows are the true classes, columns the predicted ones; off the diagonal
# are the mistakes.
fig, ax = plt.subplots(figsize=(4.5, 4))
ConfusionMatrixDisplay.from_predictions(y, predicted, ax=ax, colorbar=False)
ax.set_title("Out-of-fold predictions")
fig.tight_layout()
fig.savefig("confusion_matrix.png", dpi=100)

# %%
# The misclassified patches
# -------------------------
# Sorted by how confident the wrong prediction was: confident mistakes are
# the ones to look at first, as they often reveal a wrong label.
wrong = np.flatnonzero(predicted != y)
wrong = wrong[np.argsort(-proba[wrong].max(axis=1))]
print(f"{len(wrong)} of {len(y)} patches misclassified")

n_columns = 5
n_rows = max(1, -(-len(wrong) // n_columns))
fig, axes = plt.subplots(n_rows, n_columns, figsize=(2.2 * n_columns, 2.8 * n_rows), squeeze=False)
for ax in axes.flat:
    ax.axis("off")
for ax, index in zip(axes.flat, wrong):
    ax.imshow(X[index], cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"{y[index]} -> {predicted[index]}\np = {proba[index].max():.2f}", fontsize=9)
fig.suptitle("Misclassified patches: true -> predicted class")
fig.tight_layout()
fig.savefig("misclassified.png", dpi=100)
