"""
=========================================================
Looking at a model: its worst errors, Grad-CAM and curves
=========================================================

A score says how good a model is; three pictures say more:

- the images it gets most wrong (fastai's ``plot_top_losses``), with
  :class:`~sktransfer.inspection.ImageErrorsDisplay`;
- where in each image it found its answer (Grad-CAM), with
  :class:`~sktransfer.inspection.SaliencyDisplay`;
- how a fine-tuner's loss went, epoch by epoch (Keras' ``History``), with
  :class:`~sktransfer.inspection.TrainingHistoryDisplay`.

The task is made so that we know where the evidence is: each image is a
patch of scikit-image's grass photo with a smaller square of brick or of
gravel pasted somewhere in it, and the label is which of the two was
pasted. A model that has learned the task must look at the square.
"""

# %%
# Scenes from real texture photos
# -------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from skorch.dataset import ValidSplit

from sktransfer import FineTuneClassifier, PretrainedFeaturizer
from sktransfer.datasets import load_textures
from sktransfer.inspection import ImageErrorsDisplay, SaliencyDisplay, TrainingHistoryDisplay

backgrounds, background_labels = load_textures(patch_size=160, stride=48)
grass = backgrounds[background_labels == "grass"]
squares, square_labels = load_textures(patch_size=64, stride=32)

rng = np.random.default_rng(0)
scenes, labels, boxes = [], [], []
for i in range(80):
    label = ("brick", "gravel")[i % 2]
    scene = grass[rng.integers(len(grass))].copy()
    size = int(rng.integers(20, 49))
    top, left = rng.integers(0, 160 - size, 2)
    square = squares[square_labels == label][rng.integers(len(squares) // 3)]
    scene[top : top + size, left : left + size] = square[:size, :size]
    scenes.append(scene)
    labels.append(label)
    boxes.append((top, left, size))
scenes, labels, boxes = np.stack(scenes), np.array(labels), np.array(boxes)
X_train, X_test, y_train, y_test, _, boxes_test = train_test_split(
    scenes, labels, boxes, test_size=30, stratify=labels, random_state=0
)
print(f"{len(X_train)} training scenes, {len(X_test)} test scenes, {scenes.shape[1:]} px")

# %%
# A linear probe and its worst test images
# ----------------------------------------
# The loss of each test image is the log loss of its true class; the
# display shows the highest, titled with the true and predicted class and
# the probability the model gave each.
pipe = make_pipeline(PretrainedFeaturizer(), LogisticRegression(max_iter=1000))
pipe.fit(X_train, y_train)
print(f"held-out accuracy: {pipe.score(X_test, y_test):.3f}")

errors = ImageErrorsDisplay.from_estimator(pipe, X_test, y_test, n=5)
errors.figure_.suptitle("Test scenes with the highest loss")
errors.figure_.savefig("inspection_errors.png", dpi=100)

# %%
# Where the probe looked
# ----------------------
# Grad-CAM weights the channels of the backbone's last spatial stage by how
# much each raises the predicted class's score; the map is the positive
# part of their weighted sum, drawn over the image. The white box is the
# pasted square. Brick, unlike anything in grass, draws the map onto its
# square; gravel is closer to grass, and its maps often lie elsewhere: the
# model also reads gravel in the grass around it (the numbers below).
saliency = SaliencyDisplay.from_estimator(pipe, X_test[:5])
for axis, (top, left, size) in zip(saliency.axes_.flat, boxes_test[:5]):
    axis.add_patch(plt.Rectangle((left, top), size, size, fill=False, color="white", lw=1.5))
saliency.figure_.suptitle(f"Grad-CAM of the predicted class, stage {saliency.stage!r}")
saliency.figure_.savefig("inspection_saliency.png", dpi=100)


# %%
# How much of each map falls on the pasted square, against the share of the
# image the square covers, which is what a map spread evenly would put there.
def share_on_square(model, images, boxes):
    display = SaliencyDisplay.from_estimator(model, images)
    plt.close(display.figure_)  # only its maps are needed here
    on_square, area = [], []
    for heat, (top, left, size) in zip(display.maps_, boxes):
        on_square.append(heat[top : top + size, left : left + size].sum() / heat.sum())
        area.append(size * size / heat.size)
    return np.array(on_square), np.array(area)


on_square, area = share_on_square(pipe, X_test, boxes_test)
print(
    f"heat on the pasted square, probe: {on_square.mean():.2f} "
    f"(the square covers {area.mean():.2f})"
)
for label in ("brick", "gravel"):
    mine = y_test == label
    print(f"  {label}: {on_square[mine].mean():.2f} (covers {area[mine].mean():.2f})")

# %%
# Fine-tuning, with a validation split, and its training curves
# -------------------------------------------------------------
# With a ``train_split``, the fine-tuner scores a held-out fifth of its
# training images after every epoch; the display draws the training and
# validation losses and the validation accuracy (right axis).
clf = FineTuneClassifier(
    freeze="backbone",
    max_epochs=12,
    lr=3e-3,
    train_split=ValidSplit(5, stratified=True),
    random_state=0,
)
clf.fit(X_train, y_train)
history = TrainingHistoryDisplay.from_estimator(clf)
history.ax_.set_title("FineTuneClassifier, one point per epoch")
history.figure_.savefig("inspection_history.png", dpi=100)
print(f"epochs recorded: {len(history.epochs)}")
print(f"held-out accuracy, fine-tuned: {clf.score(X_test, y_test):.3f}")

on_square, area = share_on_square(clf, X_test, boxes_test)
print(
    f"heat on the pasted square, fine-tuned: {on_square.mean():.2f} "
    f"(the square covers {area.mean():.2f})"
)
