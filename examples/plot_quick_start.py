"""
==========================================================
Quick start: pretrained features and a logistic regression
==========================================================

A network pretrained on ImageNet has learned to describe photos. With its
classifier cut off and its weights frozen, it turns each image into a
vector of 1280 numbers; a linear model on those vectors is the strong
baseline whenever you have few labelled images.

:class:`~sktransfer.PretrainedFeaturizer` is that frozen network as a
scikit-learn transformer, so it goes into a pipeline like any other. Here it
classifies 64 x 64 patches of three real texture photos that scikit-image
ships: brick, grass and gravel.
"""

# %%
# The data: patches of three texture photos
# -----------------------------------------
# :func:`~sktransfer.datasets.load_textures` cuts each 512 x 512 photo into
# non-overlapping patches: 64 per class, grayscale uint8 arrays. The
# featurizer also accepts file paths, PIL images, and colour or differently
# sized arrays.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline

from sktransfer import PretrainedFeaturizer
from sktransfer.datasets import load_textures

X, y = load_textures(patch_size=64)
classes = sorted(set(y.tolist()))
print(f"{len(X)} patches of {X.shape[1]} x {X.shape[2]} pixels; classes: {classes}")

# %%
# Pretrained features, then a linear model
# ----------------------------------------
# The featurizer's ``fit`` only looks the backbone up; ``transform`` runs it.
# Each image's features are computed once and cached in memory, so the five
# cross-validation folds below cost one pass over the images. (A logistic
# regression on the raw pixels of the same patches scores about 0.67: see
# :ref:`sphx_glr_auto_examples_plot_learning_curve.py`.)
pipe = make_pipeline(PretrainedFeaturizer(), LogisticRegression(max_iter=1000))
cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
scores = cross_val_score(pipe, X, y, cv=cv)
print(f"cross-validated accuracy: {scores.mean():.3f} +- {scores.std():.3f} (chance: 0.333)")

# %%
# Predictions on held-out patches
# -------------------------------
# Fit on three quarters of the patches and look at the rest.
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0
)
pipe.fit(X_train, y_train)
predicted = pipe.predict(X_test)
print(f"held-out accuracy: {np.mean(predicted == y_test):.3f} on {len(y_test)} patches")

fig, axes = plt.subplots(2, 6, figsize=(9, 3.4))
for ax, image, label, guess in zip(axes.flat, X_test, y_test, predicted):
    ax.imshow(image, cmap="gray")
    ax.set_title(guess, color="black" if guess == label else "red", fontsize=10)
    ax.axis("off")
fig.suptitle("Predicted class of held-out patches (red: wrong)")
fig.tight_layout()
fig.savefig("quick_start.png", dpi=100)
