"""
===========================================================
Similar images: nearest neighbours and clusters of features
===========================================================

Pretrained features are useful without any labels: images that look alike
to the network have nearby feature vectors. So a nearest-neighbour search
in feature space finds similar photos (near-duplicates, other shots of the
same thing), and clustering groups a folder of unlabelled photos.

The collection here: random crops of eight real photos that scikit-image
and scikit-learn ship, 15 crops each, at different positions and zooms,
some mirrored. A good similarity should find the other crops of the same
photo; we compare the features with raw pixels on both tasks.
"""

# %%
# A collection of crops
# ---------------------
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from skimage import data as skimage_data
from sklearn.cluster import KMeans
from sklearn.datasets import load_sample_images
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from sktransfer import PretrainedFeaturizer

china, flower = load_sample_images().images
PHOTOS = {
    "cat": skimage_data.chelsea(),
    "coffee": skimage_data.coffee(),
    "astronaut": skimage_data.astronaut(),
    "rocket": skimage_data.rocket(),
    "galaxies": skimage_data.hubble_deep_field(),
    "tissue": skimage_data.immunohistochemistry(),
    "temple": china,
    "flower": flower,
}
CROPS_PER_PHOTO = 15
SIZE = 96


def random_crop(photo, rng):
    """A square crop of 35-80% of the shorter side, maybe mirrored, SIZE x SIZE."""
    side = int(rng.uniform(0.35, 0.8) * min(photo.shape[:2]))
    top = rng.integers(0, photo.shape[0] - side + 1)
    left = rng.integers(0, photo.shape[1] - side + 1)
    crop = photo[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((SIZE, SIZE)))


rng = np.random.default_rng(0)
images = np.stack([random_crop(p, rng) for p in PHOTOS.values() for _ in range(CROPS_PER_PHOTO)])
source = np.repeat(list(PHOTOS), CROPS_PER_PHOTO)  # which photo each crop comes from
print(f"{len(images)} crops of {len(PHOTOS)} photos, {SIZE} x {SIZE} pixels")

# %%
# Features, and raw pixels to compare with
# ----------------------------------------
# Both are L2-normalised, so that Euclidean distance ranks like cosine
# similarity.
features = normalize(PretrainedFeaturizer().fit_transform(images))
pixels = normalize(images.reshape(len(images), -1).astype(np.float32))

# %%
# Nearest neighbours
# ------------------
# For every crop, its 5 nearest other crops; how many come from the same
# photo?
K = 5


def neighbours(vectors):
    # K + 1 because each crop is its own nearest neighbour.
    _, indices = NearestNeighbors(n_neighbors=K + 1).fit(vectors).kneighbors(vectors)
    return indices[:, 1:]


feature_neighbours = neighbours(features)
found_by = {"pretrained features": feature_neighbours, "raw pixels": neighbours(pixels)}
for name, found in found_by.items():
    same = (source[found] == source[:, None]).mean()
    print(f"{name:>20}: {same:.2f} of the {K} nearest neighbours come from the same photo")

# %%
# A few queries and what they find
# --------------------------------
queries = [0, 3 * CROPS_PER_PHOTO, 5 * CROPS_PER_PHOTO, 7 * CROPS_PER_PHOTO]
fig, axes = plt.subplots(len(queries), K + 1, figsize=(1.7 * (K + 1), 1.9 * len(queries)))
for row, query in zip(axes, queries):
    for column, (ax, index) in enumerate(zip(row, [query, *feature_neighbours[query]])):
        ax.imshow(images[index])
        ax.set_title(
            "query" if column == 0 else source[index],
            fontsize=9,
            color="black" if source[index] == source[query] else "red",
        )
        ax.set_xticks([])
        ax.set_yticks([])
fig.suptitle("Nearest neighbours in feature space (red: from another photo)")
fig.tight_layout()
fig.savefig("similar_images.png", dpi=100)

# %%
# Clustering without labels
# -------------------------
# k-means with one cluster per photo; the adjusted Rand index compares the
# clusters with the true sources (1: identical groupings, 0: chance).
for name, vectors in {"pretrained features": features, "raw pixels": pixels}.items():
    clusters = KMeans(n_clusters=len(PHOTOS), n_init=10, random_state=0).fit_predict(vectors)
    print(f"{name:>20}: adjusted Rand index {adjusted_rand_score(source, clusters):.2f}")
