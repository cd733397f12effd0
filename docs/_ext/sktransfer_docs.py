"""Sphinx helpers for the sktransfer docs: backbone tables made from the registry.

``.. backbone-table:: name [name ...]`` renders each backbone's spec
(preprocessing, feature size, stages, weights) as :func:`sktransfer.get_backbone_spec`
returns it, so the page cannot drift from the code. ``.. backbone-families::``
lists the torchvision names of :func:`sktransfer.list_backbones` by family.

On ``builder-inited`` it also checks that the API page names every public
object, so a new export without documentation fails a ``-W`` build.
"""

import re
from collections import defaultdict
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import sktransfer
import sktransfer.datasets
from sktransfer import get_backbone_spec, list_backbones

logger = logging.getLogger(__name__)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _stages(stages):
    """Stage names, shortened in the middle when there are many."""
    shown = (
        ", ".join(stages)
        if len(stages) <= 6
        else (f"{', '.join(stages[:2])}, ..., {', '.join(stages[-2:])}")
    )
    return f"{len(stages)}: {shown}"


def _normalisation(preprocessing):
    if (preprocessing.mean, preprocessing.std) == IMAGENET:
        return "ImageNet mean and std"
    mean = ", ".join(f"{m:g}" for m in preprocessing.mean)
    std = ", ".join(f"{s:g}" for s in preprocessing.std)
    return f"mean ({mean}), std ({std})"


def _weights(spec):
    source = spec.weights
    if source is None:
        return "random"
    if hasattr(source, "distribution"):
        return f"package ``{source.distribution}``"
    if hasattr(source, "repo_id"):
        return f"``{source.repo_id}`` in the Hugging Face cache"
    return f"``{source.filename}`` in the torch hub cache"


def _list_table(header, rows, widths):
    widths = " ".join(map(str, widths))
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines


class BackboneTable(SphinxDirective):
    """A table of the specs of the backbones named as arguments."""

    required_arguments = 1
    final_argument_whitespace = True

    def run(self):
        rows = []
        for name in self.arguments[0].split():
            spec = get_backbone_spec(name)
            p = spec.preprocessing
            rows.append(
                [
                    f"``{name}``",
                    f"{p.input_size} px (resize {p.resize_size}, centre crop), {p.interpolation}",
                    _normalisation(p),
                    str(spec.feature_dim),
                    _stages(spec.stages),
                    _weights(spec),
                ]
            )
        header = ["backbone", "input", "normalisation", "features", "stages", "weights"]
        return self._parse(_list_table(header, rows, (14, 20, 16, 8, 24, 18)))

    def _parse(self, lines):
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="backbone-table"), 0, container)
        return container.children


class BackboneFamilies(BackboneTable):
    """The torchvision backbones of the registry, grouped by the module that builds them."""

    required_arguments = 0

    def run(self):
        import torchvision

        families = defaultdict(list)
        for name in list_backbones():
            if name.startswith("efficientnet_lite"):
                continue
            module = torchvision.models.get_model_builder(name).__module__
            families[module.rsplit(".", 1)[-1]].append(name)
        rows = [
            [family, ", ".join(f"``{name}``" for name in sorted(names, key=_natural))]
            for family, names in sorted(families.items())
        ]
        return self._parse(_list_table(["family", "names"], rows, (20, 80)))


def _natural(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def public_names():
    """``sktransfer.__all__`` and the functions of ``sktransfer.datasets``, fully qualified."""
    names = {f"sktransfer.{name}" for name in sktransfer.__all__}
    for name, value in vars(sktransfer.datasets).items():
        if (
            callable(value)
            and not name.startswith("_")
            and (getattr(value, "__module__", None) == "sktransfer.datasets")
        ):
            names.add(f"sktransfer.datasets.{name}")
    return names


def check_api_page(app):
    """Warn about public names that the API page does not list."""
    listed = set()
    module = None
    for line in (Path(app.srcdir) / "api.rst").read_text().splitlines():
        if line.startswith(".. currentmodule::"):
            module = line.split("::")[1].strip()
        elif re.fullmatch(r"   [A-Za-z_]\w*", line) and module:
            listed.add(f"{module}.{line.strip()}")
    for name in sorted(public_names() - listed):
        logger.warning(f"{name} is public but not listed in docs/api.rst")


def skip_metadata_requests(app, what, name, obj, skip, options):
    """Leave out the ``set_*_request`` methods scikit-learn generates for metadata routing.

    Their docstrings point into scikit-learn's own documentation.
    """
    return True if re.fullmatch(r"set_\w+_request", name) else skip


def setup(app):
    app.add_directive("backbone-table", BackboneTable)
    app.add_directive("backbone-families", BackboneFamilies)
    app.connect("builder-inited", check_api_page)
    app.connect("autodoc-skip-member", skip_metadata_requests)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
