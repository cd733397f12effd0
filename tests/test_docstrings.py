"""Every public name has a numpydoc docstring with an Examples section that doctest runs.

pytest's ``--doctest-modules`` (on in pyproject.toml) runs the examples; this
file makes sure there is one to run for each public name, and that none is
skipped without its reason written beside it.
"""

import inspect
import re

import pytest
from numpydoc.docscrape import NumpyDocString

import sktransfer
import sktransfer.datasets
import sktransfer.inspection


def public_names():
    """``sktransfer.__all__``, ``sktransfer.inspection.__all__`` and the functions
    ``sktransfer.datasets`` defines."""
    names = [(f"sktransfer.{name}", getattr(sktransfer, name)) for name in sktransfer.__all__]
    names += [
        (f"sktransfer.inspection.{name}", getattr(sktransfer.inspection, name))
        for name in sktransfer.inspection.__all__
    ]
    names += [
        (f"sktransfer.datasets.{name}", value)
        for name, value in vars(sktransfer.datasets).items()
        if inspect.isfunction(value)
        and not name.startswith("_")
        and value.__module__ == "sktransfer.datasets"
    ]
    return names


# A skipped example names its reason in a comment before the directive, on the same line.
SKIP_WITHOUT_REASON = re.compile(r"^\s*(>>>|\.\.\.)(?:(?!#).)*#\s*doctest:.*\+SKIP")


@pytest.mark.parametrize("qualified, value", [pytest.param(q, v, id=q) for q, v in public_names()])
def test_public_name_has_examples_that_run(qualified, value):
    doc = inspect.getdoc(value)
    assert doc, f"{qualified} has no docstring"
    examples = NumpyDocString(doc)["Examples"]
    assert examples, f"{qualified}'s docstring has no Examples section"
    prompts = [line for line in examples if line.lstrip().startswith(">>>")]
    assert prompts, f"{qualified}'s Examples section has no >>> line for doctest to run"
    unexplained = [line for line in examples if SKIP_WITHOUT_REASON.match(line)]
    assert not unexplained, f"{qualified} skips examples without a reason: {unexplained}"
    # Doctest collects a docstring from the module that defines the object.
    assert value.__module__.startswith("sktransfer"), qualified


def test_the_list_covers_the_names_the_issue_lists():
    names = {qualified.rsplit(".", 1)[1] for qualified, _ in public_names()}
    assert {
        "Backbone", "BackboneSpec", "Preprocessing", "get_backbone_spec", "list_backbones",
        "load_backbone", "clear_cache", "ImageFailure", "InvalidImageError",
        "UntrustedCacheError", "WeightsIntegrityError", "WeightsNotFoundError", "load_textures",
        "load_faces", "make_exposure_patches", "save_image_folder", "load_image_folder",
    } <= names  # fmt: skip


def test_a_skip_without_its_reason_is_caught():
    assert SKIP_WITHOUT_REASON.match(">>> fit(X, y)  # doctest: +SKIP")
    assert not SKIP_WITHOUT_REASON.match(">>> fit(X, y)  # needs a GPU  # doctest: +SKIP")
    assert not SKIP_WITHOUT_REASON.match(">>> fit(X, y)  # doctest: +ELLIPSIS")
