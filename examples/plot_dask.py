"""
=====================
Scaling out with Dask
=====================

Two ways to put a cluster to work, both with plain scikit-learn and Dask:

1. **Cross-validation on the cluster.** ``GridSearchCV(..., n_jobs=-1)``
   under ``joblib.parallel_backend("dask")`` runs each fit on a Dask
   worker. A pickled :class:`~sktransfer.PretrainedFeaturizer` carries no
   weights (a few hundred bytes for a registry backbone): each worker process
   builds the backbone once and reuses it for every task it runs. With
   ``cache=<directory>``, the worker processes of a machine share the
   features they compute, so each image goes through the network once.
2. **Featurizing a large collection.** Put the file paths in a Dask array,
   chunk it, and map the fitted featurizer's ``transform`` over the chunks:
   the result is a Dask array of features, computed where the workers are.

Here the cluster is a :class:`~distributed.LocalCluster` of two worker
processes; on a real cluster, connect with ``Client("scheduler-address")``
instead. The disk cache is a SQLite file: share one directory between the
processes of one machine, and give each machine its own local directory
(SQLite must not be used over a network file system).

A script that starts worker processes needs the
``if __name__ == "__main__":`` guard at the end, because each new process
imports the main module; in a notebook, run the body of ``main`` directly.
"""

# %%
# The images: texture photos saved as files
# -----------------------------------------
# A few dozen here, to run in seconds; the code is the same for a million.
import logging
import shutil
import tempfile
import time
from pathlib import Path

import dask.array as da
import joblib
import matplotlib.pyplot as plt
import numpy as np
from dask.distributed import Client, LocalCluster, get_task_stream
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktransfer import PretrainedFeaturizer, cache_info
from sktransfer.datasets import load_image_folder, load_textures, save_image_folder


def make_image_files(root):
    """48 texture patches as PNG files under ``root/<label>/``; their paths and labels."""
    images, labels = load_textures(patch_size=128)
    save_image_folder(images, labels, root, suffix=".png")
    return load_image_folder(root)


# %%
# 1. Grid search with every fit on the cluster
# --------------------------------------------
# Nothing changes in the scikit-learn code but the joblib backend.


def grid_search_on_cluster(X, y, cache):
    pipe = make_pipeline(PretrainedFeaturizer(cache=cache), LogisticRegression(max_iter=1000))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.01, 0.1, 1.0]}, cv=5, n_jobs=-1)
    with joblib.parallel_backend("dask"):
        search.fit(X, y)
    return search


# %%
# 2. Features of a large collection, chunk by chunk
# -------------------------------------------------
# ``map_blocks`` runs ``transform`` on each chunk of paths, on some worker;
# the declared ``meta`` spares Dask a trial call on an empty chunk. With
# ``inline_array=True`` each task carries its own paths rather than
# depending on one shared array, so the scheduler spreads chunks evenly.


def featurize(featurizer, paths, chunk_size):
    """Features of ``paths`` as a Dask array: one task per ``chunk_size`` paths."""
    paths = da.from_array(np.asarray(paths), chunks=chunk_size, inline_array=True)
    width = featurizer.n_features_out_
    return paths.map_blocks(
        featurizer.transform,
        new_axis=1,
        chunks=(paths.chunks[0], (width,)),
        meta=np.empty((0, width), dtype=np.float32),
    )


# %%
# Plot which worker computed which chunk, and when
# ------------------------------------------------


def plot_task_stream(tasks, title, filename):
    workers = sorted({task["worker"] for task in tasks})
    start = min(part["start"] for task in tasks for part in task["startstops"])
    fig, ax = plt.subplots(figsize=(8, 1 + 0.6 * len(workers)))
    for task in tasks:
        row = workers.index(task["worker"])
        for part in task["startstops"]:
            if part["action"] == "compute":
                ax.broken_barh(
                    [(part["start"] - start, part["stop"] - part["start"])],
                    (row - 0.35, 0.7),
                    edgecolor="white",
                )
    ax.set_yticks(range(len(workers)), [f"worker {i}" for i in range(len(workers))])
    ax.set_xlabel("seconds")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(filename, dpi=100)


# %%
# Run it
# ------


def main():
    workdir = Path(tempfile.mkdtemp(prefix="sktransfer-dask-"))
    X, y = make_image_files(workdir / "images")
    cache = workdir / "features"
    # Worker processes with one thread each: torch then uses one core per worker.
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster) as client:
        start = time.perf_counter()
        search = grid_search_on_cluster(X, y, cache)
        print(
            f"grid search on the cluster: {time.perf_counter() - start:.1f} s, "
            f"best C {search.best_params_['logisticregression__C']}, "
            f"accuracy {search.best_score_:.3f}"
        )
        # One pass stores each image's final features and every stage's pooled
        # outputs, so a later search over ``layers`` runs no network either.
        per_image = cache_info(cache).entries / len(X)
        print(f"the workers cached {per_image:g} vectors per image for {len(X)} images")

        # The same files again, without any cache, so that the workers run the network.
        featurizer = PretrainedFeaturizer(cache=None, progress=False).fit(X)
        features = featurize(featurizer, X, chunk_size=8)
        print(f"lazy features: {features}")
        with get_task_stream(client) as stream:
            start = time.perf_counter()
            computed = features.compute()
        print(f"computed {computed.shape} on the cluster in {time.perf_counter() - start:.1f} s")

    # The same as computing here, row for row.
    local = featurizer.transform(X[:16])
    print(f"largest difference from a local run: {np.abs(computed[:16] - local).max():.2e}")
    plot_task_stream(
        stream.data,
        "Featurizing chunks of 8 images on two worker processes",
        "dask_task_stream.png",
    )
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
