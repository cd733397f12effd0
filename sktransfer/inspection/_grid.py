"""What the image Displays share: matplotlib imported on demand, a grid of axes, the images."""

from __future__ import annotations

import math

import numpy as np

from .._input.images import ImageCollection

#: Inches per image panel in a new figure (width, height, titles included).
PANEL_SIZE = (2.4, 2.9)


def pyplot():
    """``matplotlib.pyplot``, imported only when a display draws."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "the inspection displays draw with matplotlib: pip install matplotlib "
            '(or pip install "sktransfer[inspection]")'
        ) from exc
    return plt


def decode_images(X, indices=None) -> list[np.ndarray]:
    """Samples ``indices`` of ``X`` (all by default) decoded in full: uint8 RGB, upright."""
    images = ImageCollection(X)
    indices = range(len(images)) if indices is None else indices
    return [images.load(int(index)) for index in indices]


def image_axes(n: int, ax=None, n_cols: int | None = None):
    """A figure and ``n`` axes for images, without ticks; spare axes are hidden.

    Parameters
    ----------
    n : int
        How many images.
    ax : matplotlib Axes, array-like of Axes or None, default=None
        None: a new figure. One Axes: its place is split into the grid (as
        scikit-learn's ``PartialDependenceDisplay`` does). Several: used in
        order, at least ``n`` of them.
    n_cols : int, default=None
        Columns of a new grid; default up to 5.

    Returns
    -------
    figure : matplotlib Figure
    axes : ndarray of Axes
        A grid (rows, columns) when made here, else as given.
    """
    plt = pyplot()
    n_cols = n_cols or min(n, 5)
    n_rows = math.ceil(n / n_cols)
    if ax is None:
        figure, axes = plt.subplots(
            n_rows,
            n_cols,
            figsize=(PANEL_SIZE[0] * n_cols, PANEL_SIZE[1] * n_rows),
            squeeze=False,
            layout="constrained",  # makes room for the titles, and for a suptitle
        )
    elif hasattr(ax, "get_subplotspec") and n > 1:
        figure = ax.figure
        ax.set_axis_off()
        grid = ax.get_subplotspec().subgridspec(n_rows, n_cols)
        axes = np.array(
            [[figure.add_subplot(grid[r, c]) for c in range(n_cols)] for r in range(n_rows)]
        )
    else:
        axes = np.asarray(ax, dtype=object)
        if axes.size < n:
            raise ValueError(f"ax holds {axes.size} axes; {n} images need {n}")
        figure = axes.flat[0].figure
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= n:
            axis.set_axis_off()
    return figure, axes
