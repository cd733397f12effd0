"""The docs build, the gallery examples and the quick-start notebook.

One Sphinx build (``-W``: any warning fails it) runs every gallery example
once, through sphinx-gallery, in a copy of ``docs/`` and ``examples/``
(started with the session, in the background: see ``_docs_build.py``); the
tests then check, on that single run, the figures each example saved and the
numbers it printed, which sphinx-gallery keeps in the page it generates. The
numbers are the claims the examples' text makes, so each test checks one.
The notebook runs in a Jupyter kernel.

Marked slow: ``pytest -m "not slow"`` skips the build.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sktransfer import get_backbone_spec

from . import _docs_build

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# Script -> the figures it must save. Every plot_*.py is here.
FIGURES = {
    "plot_quick_start.py": ["quick_start.png"],
    "plot_learning_curve.py": ["learning_curve.png"],
    "plot_image_folder.py": ["image_folder.png"],
    "plot_errors.py": ["confusion_matrix.png", "misclassified.png"],
    "plot_similar_images.py": ["similar_images.png"],
    "plot_dask.py": ["dask_task_stream.png"],
    "plot_freeze_depth.py": ["freeze_depth.png"],
    "plot_choose_layers.py": ["choose_layers.png"],
    "plot_regression.py": ["regression.png"],
    "plot_inspection.py": [
        "inspection_errors.png",
        "inspection_saliency.png",
        "inspection_history.png",
    ],
}


# What one pass of the default backbone stores per image: its final features and
# each stage's average- and max-pooled outputs.
VECTORS_PER_IMAGE = 1 + 2 * len(get_backbone_spec("efficientnet_lite0").stages)


def number_after(text, label):
    """The number printed right after ``label`` (the first occurrence)."""
    match = re.search(re.escape(label) + r"\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", text)
    assert match, f"{label!r} not found in the output:\n{text}"
    return float(match.group(1))


def table_row(text, label):
    """The numbers of the first table row that starts with ``label``."""
    line = next(line for line in text.splitlines() if line.startswith(label))
    return [float(cell) for cell in line[len(label) :].split()]


# What each example's text claims, checked on what it printed.
def check_quick_start(out):
    assert number_after(out, "cross-validated accuracy:") >= 0.95
    assert number_after(out, "held-out accuracy:") >= 0.9


def check_learning_curve(out):
    # The textures table comes first: pretrained features win at every size,
    # and with 12 images already beat raw pixels with 96.
    pretrained, random_weights, raw = (
        table_row(out, name)
        for name in ("pretrained features", "random-weight features", "raw pixels")
    )
    assert len(pretrained) == len(raw) == 5
    assert all(p > max(r, w) for p, r, w in zip(pretrained, raw, random_weights))
    assert pretrained[1] > raw[-1] + 0.2


def check_image_folder(out):
    assert number_after(out, "held-out accuracy:") >= 0.9
    # Every photo computed once: the final features and each stage's average and max.
    assert number_after(out, "disk cache:") == VECTORS_PER_IMAGE
    assert number_after(out, "vectors per photo,") == 90


def check_errors(out):
    match = re.search(r"(\d+) of (\d+) patches misclassified", out)
    assert match, out
    n_wrong, n_total = map(int, match.groups())
    assert n_total == 363 and 0 < n_wrong < 0.1 * n_total


def check_similar_images(out):
    features = number_after(out, "pretrained features:")
    pixels = number_after(out, "raw pixels:")
    assert features >= 0.9 and features > pixels + 0.2


def check_dask(out):
    assert number_after(out, "the workers cached") == VECTORS_PER_IMAGE
    assert number_after(out, "vectors per image for") == 48
    assert "computed (48, 1280) on the cluster" in out
    assert number_after(out, "largest difference from a local run:") < 1e-4


def check_freeze_depth(out):
    # A table of every depth and size; the frozen backbone is above chance throughout.
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 1 and cells[0] in ("backbone", "-3", "0"):
            rows[cells[0]] = [float(cell.split("+-")[0]) for cell in cells[1:]]
    assert set(rows) == {"backbone", "-3", "0"}, out
    assert all(len(scores) == 2 for scores in rows.values())
    assert min(rows["backbone"]) > 0.5


def check_choose_layers(out):
    # Far from ImageNet, the search picks an earlier stage, and it is clearly better.
    picked = re.search(r"picked layers: (.+)", out).group(1)
    assert picked != "-1"
    last = number_after(out, "cross-validated accuracy, last stage:")
    assert number_after(out, "cross-validated accuracy, picked:") >= last + 0.03
    assert number_after(out, "held-out accuracy, picked:") >= 0.9


def check_regression(out):
    # Both transfer-learning models explain much of the exposure gain; a constant, none.
    assert abs(number_after(out, "mean gain (DummyRegressor)")) < 0.05
    assert number_after(out, "features + RidgeCV") > 0.3
    assert number_after(out, "FineTuneRegressor") > 0.3
    assert "chosen by the search: {" in out


def check_inspection(out):
    # Both models learned the task and their Grad-CAM maps lie on the pasted square
    # far more than its share of the image; the history has one point per epoch.
    assert number_after(out, "held-out accuracy:") >= 0.9
    assert number_after(out, "held-out accuracy, fine-tuned:") >= 0.9
    for model in ("probe", "fine-tuned"):
        match = re.search(
            rf"heat on the pasted square, {model}: (\S+) \(the square covers (\S+)\)", out
        )
        assert match, out
        on_square, area = map(float, match.groups())
        assert on_square > 2 * area, (model, on_square, area)
    assert number_after(out, "epochs recorded:") == 12


CHECKS = {
    "plot_quick_start.py": check_quick_start,
    "plot_learning_curve.py": check_learning_curve,
    "plot_image_folder.py": check_image_folder,
    "plot_errors.py": check_errors,
    "plot_similar_images.py": check_similar_images,
    "plot_dask.py": check_dask,
    "plot_freeze_depth.py": check_freeze_depth,
    "plot_choose_layers.py": check_choose_layers,
    "plot_regression.py": check_regression,
    "plot_inspection.py": check_inspection,
}


def test_every_example_is_checked():
    scripts = {path.name for path in EXAMPLES.glob("plot_*.py")}
    assert scripts == set(FIGURES) == set(CHECKS)


@pytest.fixture(scope="module")
def docs_build(request, tmp_path_factory):
    """The docs build, with warnings as errors; the gallery runs every example.

    It starts with the session (``docs_build_in_background`` in conftest.py);
    this waits for it. Returns the copy of the source tree it was built in:
    the examples ran in ``examples/`` (sphinx-gallery runs each in its own
    folder), and their pages, with what they printed, are in
    ``docs/auto_examples/``.
    """
    for module in _docs_build.BUILD_NEEDS:
        pytest.importorskip(module)
    folder = _docs_build.build_folder(request.config, tmp_path_factory)
    returncode, log = _docs_build.wait(folder)
    assert returncode == 0, log[-8000:]
    return folder


def printed_by(page: str) -> str:
    """What an example printed: the blocks sphinx-gallery marks as script output."""
    lines, blocks = page.splitlines(), []
    for start, line in enumerate(lines):
        if line.strip() != ".. rst-class:: sphx-glr-script-out":
            continue
        body = start + 1
        while not lines[body].strip().startswith(".. code-block::"):
            body += 1
        block = []
        for line in lines[body + 1 :]:
            if line.strip() and not line.startswith("    "):
                break
            block.append(line[4:])
        blocks.append("\n".join(block))
    return "\n".join(blocks)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_example_saves_its_figures_and_says_what_it_claims(script, docs_build):
    for name in FIGURES[script]:
        with Image.open(docs_build / "examples" / name) as figure:
            pixels = np.asarray(figure.convert("L"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 10  # something was drawn
    page = (docs_build / "docs" / "auto_examples" / script).with_suffix(".rst")
    CHECKS[script](printed_by(page.read_text()))


@pytest.mark.slow
def test_docs_pages_are_built(docs_build):
    html = docs_build / "html"
    for page in ("index", "user_guide", "api", "backbones", "installation"):
        assert (html / f"{page}.html").stat().st_size > 1000
    gallery = (html / "auto_examples" / "index.html").read_text()
    for script in FIGURES:
        assert Path(script).stem in gallery


class TestQuickStartNotebook:
    """examples/quick_start.ipynb, executed top to bottom in a fresh kernel."""

    @pytest.fixture(scope="class")
    @staticmethod
    def notebook(tmp_path_factory):
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        pytest.importorskip("ipykernel")
        pytest.importorskip("matplotlib")
        notebook = nbformat.read(EXAMPLES / "quick_start.ipynb", as_version=4)
        # The kernel draws inline, as in Jupyter: no Agg backend from the environment.
        env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
        client = nbclient.NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path_factory.mktemp("notebook"))}},
        )
        client.execute(env=env)  # raises CellExecutionError naming the failing cell
        return notebook

    @staticmethod
    def outputs(notebook, output_type=None):
        return [
            output
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
            if output_type is None or output.output_type == output_type
        ]

    @staticmethod
    def text(outputs):
        return "".join(
            output.get("text", "") + output.get("data", {}).get("text/plain", "")
            for output in outputs
        )

    def test_is_stored_without_outputs(self):
        nbformat = pytest.importorskip("nbformat")
        stored = nbformat.read(EXAMPLES / "quick_start.ipynb", as_version=4)
        nbformat.validate(stored)
        assert all(not cell.get("outputs") for cell in stored.cells if cell.cell_type == "code")

    @pytest.mark.slow
    def test_runs_and_reports_accuracy(self, notebook):
        out = self.text(self.outputs(notebook))
        assert number_after(out, "cross-validated accuracy:") >= 0.95
        assert number_after(out, "held-out accuracy:") >= 0.9

    @pytest.mark.slow
    def test_draws_figures_and_html(self, notebook):
        displays = self.outputs(notebook, "display_data") + self.outputs(notebook, "execute_result")
        assert any("image/png" in output.get("data", {}) for output in displays)
        # The fitted pipeline shows as scikit-learn's HTML diagram.
        assert any(
            "PretrainedFeaturizer" in output.get("data", {}).get("text/html", "")
            for output in displays
        )
        # set_output(transform="pandas"): a DataFrame with named feature columns.
        assert "pretrainedfeaturizer0" in self.text(displays)

    @pytest.mark.slow
    def test_shows_a_progress_bar(self, notebook):
        # tqdm's notebook bar needs ipywidgets; without it tqdm warns and shows nothing.
        pytest.importorskip("ipywidgets")
        bars = [
            output
            for output in self.outputs(notebook, "display_data")
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        ]
        assert any("featurizing" in output["data"]["text/plain"] for output in bars)
