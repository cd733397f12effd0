"""The library versions a pickled estimator was made with, checked when it is loaded.

What a fitted estimator computes depends on the libraries installed where it
runs: an unpickled featurizer rebuilds its backbone with that machine's timm
or torchvision and runs it with its torch; a fine-tuner's network runs there
too, and Pillow decodes the files. So each pickle records the versions it was
made with, and loading it under others warns, as scikit-learn warns for its
own estimators, rather than silently computing different features.
"""

from __future__ import annotations

import functools
import warnings
from importlib import metadata

from sklearn.exceptions import InconsistentVersionWarning

#: Distributions whose version can change what a fitted estimator computes.
LIBRARIES = ("sktransfer", "torch", "torchvision", "timm", "skorch", "scikit-learn", "pillow")

#: Where a pickled estimator's state keeps them.
STATE_KEY = "_sktransfer_versions"


@functools.cache  # read once per process: a pickle is made per job of a parallel search
def installed_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`LIBRARIES`; None for one not installed."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class LibraryVersionWarning(InconsistentVersionWarning):
    """An estimator was unpickled under other library versions than it was pickled with.

    A subclass of scikit-learn's :class:`~sklearn.exceptions.InconsistentVersionWarning`,
    so ``warnings.simplefilter("error", InconsistentVersionWarning)`` makes
    it an error, for scikit-learn's estimators and ours alike.

    Parameters
    ----------
    estimator_name : str
    saved : dict of str to str or None
        The versions recorded in the pickle; None when it recorded none.
    installed : dict of str to str or None
        The versions installed where it is loaded.
    """

    def __init__(self, *, estimator_name, saved, installed):
        super().__init__(
            estimator_name=estimator_name,
            current_sklearn_version=installed.get("scikit-learn"),
            original_sklearn_version=(saved or {}).get("scikit-learn"),
        )
        self.saved = saved
        self.installed = installed

    def __str__(self):
        advice = (
            "It may compute different features and predictions than where it was saved: "
            "install the versions it was saved with, or fit it again with these."
        )
        if self.saved is None:
            return (
                f"{self.estimator_name} was pickled without a record of the library versions "
                f"it was made with (pickled before sktransfer recorded them). {advice}"
            )
        changed = ", ".join(
            f"{name} {self.saved.get(name)} -> {self.installed.get(name)}"
            for name in LIBRARIES
            if self.saved.get(name) != self.installed.get(name)
        )
        return (
            f"{self.estimator_name} was pickled with other library versions ({changed}). {advice}"
        )


def record_versions(state: dict) -> dict:
    """``state`` with the installed library versions added, for ``__getstate__``."""
    return {**state, STATE_KEY: dict(installed_versions())}


def check_versions(state: dict, estimator_name: str) -> dict:
    """Take the recorded versions out of ``state``; warn when they differ from the installed."""
    saved = state.pop(STATE_KEY, None)
    installed = dict(installed_versions())
    if saved is None or any(saved.get(name) != installed[name] for name in LIBRARIES):
        warnings.warn(
            LibraryVersionWarning(estimator_name=estimator_name, saved=saved, installed=installed),
            stacklevel=3,
        )
    return state
