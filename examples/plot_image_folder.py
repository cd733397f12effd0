"""
=============================================
From a folder of photos to a tuned classifier
=============================================

The job sktransfer is made for: a folder with one sub-folder of photos per
class, and the best classifier cross-validation can find, without a training
loop. Think of two cats, ``tigger/`` and ``misty/``, and ``neither/`` for
every other photo.

We have no photos of Tigger or Misty here, so we build the same kind of
folder from real photos that scikit-image and scikit-learn ship: random
crops of a cat (``cat/``), of a cup of coffee (``coffee/``), and of six
unrelated photos (``neither/``), saved as JPEG files of different sizes and
shapes. Crops of one photo look alike, so this task is easier than yours
will be; the code is the same.
"""

# %%
# Build the folder of photos
# --------------------------
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline

from sktransfer import PretrainedFeaturizer, cache_info
from sktransfer.datasets import load_image_folder, save_image_folder

china, flower = load_sample_images().images
SOURCES = {
    "cat": [skimage_data.chelsea()],
    "coffee": [skimage_data.coffee()],
    "neither": [
        skimage_data.astronaut(),
        skimage_data.rocket(),
        skimage_data.hubble_deep_field(),
        skimage_data.immunohistochemistry(),
        china,
        flower,
    ],
}
PHOTOS_PER_CLASS = 30


def random_crop(photo, rng):
    """A crop of 40-80% of the photo's shorter side, maybe mirrored, resized."""
    short = min(photo.shape[:2])
    height, width = (rng.uniform(0.4, 0.8, size=2) * short).astype(int)
    top = rng.integers(0, photo.shape[0] - height + 1)
    left = rng.integers(0, photo.shape[1] - width + 1)
    crop = photo[top : top + height, left : left + width]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = rng.uniform(120, 300) / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size))


rng = np.random.default_rng(0)
images, labels = [], []
for label, photos in SOURCES.items():
    for index in range(PHOTOS_PER_CLASS):
        images.append(random_crop(photos[index % len(photos)], rng))
        labels.append(label)

workdir = Path(tempfile.mkdtemp(prefix="sktransfer-example-"))
save_image_folder(images, labels, workdir / "pets")  # pets/<label>/<index>.jpg
print(sorted(path.name for path in (workdir / "pets").iterdir()))

# %%
# Load it and hold some photos out
# --------------------------------
# :func:`~sktransfer.datasets.load_image_folder` returns the file paths and
# their labels (the sub-folder names), like scikit-learn's ``load_files``.
X, y = load_image_folder(workdir / "pets")
print(f"{len(X)} photos, for instance {X[0]}")
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0
)

# %%
# Cross-validate the head, with features cached on disk
# -----------------------------------------------------
# ``cache=<directory>`` keeps every computed feature vector in a SQLite file:
# the grid search computes each photo once, and the next session (or another
# process) reads them back instead of running the network again. Features
# are keyed by the photo's bytes and by everything that changes them
# (backbone, weights, preprocessing, precision), so a renamed file still
# hits and a changed one does not.
cache = workdir / "features"
pipe = make_pipeline(PretrainedFeaturizer(cache=cache), LogisticRegression(max_iter=1000))
search = GridSearchCV(pipe, {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}, cv=5)

start = time.perf_counter()
search.fit(X_train, y_train)
first = time.perf_counter() - start
print(
    f"best C: {search.best_params_['logisticregression__C']}, "
    f"cross-validated accuracy {search.best_score_:.3f}"
)
print(f"held-out accuracy: {search.score(X_test, y_test):.3f} on {len(y_test)} photos")
# Each photo's final features plus every stage's pooled outputs (for ``layers``).
print(f"disk cache: {cache_info(cache).entries / len(X):g} vectors per photo, {len(X)} photos")

# A second search, as in a new session: every feature comes from the disk.
start = time.perf_counter()
GridSearchCV(pipe, {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}, cv=5).fit(X_train, y_train)
print(
    f"grid search: {first:.1f} s computing features, "
    f"{time.perf_counter() - start:.1f} s reading them from the cache"
)

# %%
# Predict held-out photos
# -----------------------
# The tuned pipeline takes file paths, like any other input it accepts:
# ``search.predict(["new_photo.jpg"])``. Here, the first held-out photos with
# the probability of the predicted class.
proba = search.predict_proba(X_test)
predicted = search.classes_[proba.argmax(axis=1)]

fig, axes = plt.subplots(2, 5, figsize=(11, 5))
for ax, path, label, guess, p in zip(axes.flat, X_test, y_test, predicted, proba.max(axis=1)):
    ax.imshow(Image.open(path))
    ax.set_title(f"{guess} ({p:.2f})", color="black" if guess == label else "red")
    ax.axis("off")
fig.suptitle("Held-out photos: predicted class and its probability (red: wrong)")
fig.tight_layout()
fig.savefig("image_folder.png", dpi=100)

# %%
# Clean up
# --------
shutil.rmtree(workdir)
