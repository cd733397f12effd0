"""
=================================================================
Where does it go wrong? Confusion matrix and misclassified images
=================================================================

An accuracy score says how often a classifier is wrong, not where. Two
plots answer that: the confusion matrix (which classes get mixed up) and
the images with the highest loss (why: a blurred photo, a wrong label, a
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
from sktransfer.inspection import ImageErrorsDisplay

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
# The patches with the highest loss
# ---------------------------------
# :class:`~sktransfer.inspection.ImageErrorsDisplay` shows the images with
# the highest loss, here the log loss of the true class: the mistakes come
# first, the most confident first, as they often reveal a wrong label; then
# the correct predictions the model hesitated over. ``from_predictions``
# takes the out-of-fold probabilities, so no patch is judged by a model that
# trained on it.
wrong = int((predicted != y).sum())
print(f"{wrong} of {len(y)} patches misclassified")

display = ImageErrorsDisplay.from_predictions(
    y, predicted, X=X, y_proba=proba, classes=classes, n=max(wrong, 5)
)
display.figure_.suptitle("Out-of-fold loss, highest first")
display.figure_.savefig("misclassified.png", dpi=100)
