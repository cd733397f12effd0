"""The main demo: pretrained features against raw pixels on real photos.

Run ``python -m sktransfer.demo``. For each small labelled set of real
photos shipped with scikit-image, it cross-validates the same logistic
regression head on raw pixels and on features of the frozen default backbone
(EfficientNet-Lite0, ImageNet weights from an installed package, offline).
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sktransfer import PretrainedFeaturizer
from sktransfer.datasets import load_faces, load_textures


def _flatten(images):
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1)


def _scores(X, y, cv):
    raw = make_pipeline(
        FunctionTransformer(_flatten), StandardScaler(), LogisticRegression(max_iter=2000)
    )
    pretrained = make_pipeline(
        PretrainedFeaturizer(progress=False), StandardScaler(), LogisticRegression(max_iter=2000)
    )
    start = time.perf_counter()
    pretrained_score = cross_val_score(pretrained, X, y, cv=cv).mean()
    seconds = time.perf_counter() - start
    return cross_val_score(raw, X, y, cv=cv).mean(), pretrained_score, seconds


def main():
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    tasks = {
        "textures: brick / grass / gravel": load_textures(patch_size=64),
        "faces vs non-faces (LFW subset)": load_faces(),
    }
    print("5-fold cross-validated accuracy of a logistic regression head")
    print(
        f"{'task':<34} {'n':>4} {'classes':>7} {'raw pixels':>11} {'pretrained':>11} {'time':>10}"
    )
    for name, (X, y) in tasks.items():
        raw, pretrained, seconds = _scores(X, y, cv)
        print(
            f"{name:<34} {len(y):>4} {len(set(y)):>7} {raw:>11.3f} {pretrained:>11.3f} "
            f"{seconds:>9.1f}s"
        )
    print("features: EfficientNet-Lite0 (ImageNet weights), frozen; chance is 1/classes")


if __name__ == "__main__":
    main()
