"""list_backbones(details=True): parameters, multiply-adds and ImageNet top-1 of each backbone.

The counts are checked against the libraries' own published numbers
(torchvision's weights meta ``num_params`` and ``_ops``) and against the real
backbone built on the CPU, which the registry's meta-device count must equal.
"""

import csv
import math
import sys
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sktransfer import get_backbone_spec, list_backbones, load_backbone
from sktransfer._backbones import _backbone_details
from sktransfer._backbones._meta import build_on_meta

TABLE = Path(__file__).resolve().parents[1] / "docs" / "backbone_table.csv"


def details(name):
    """The record ``list_backbones`` gives ``name`` (a pattern would match timm's tags too)."""
    return dict(_backbone_details(name))


class TestAgainstTorchvisionsPublishedNumbers:
    # One per family; regnet_y_400mf cannot be built under torch.device("meta") (its builder
    # computes widths with torch), so it exercises the registration-hook path.
    @pytest.mark.parametrize(
        "name",
        ["resnet50", "vit_b_16", "swin_t", "mobilenet_v3_small", "regnet_y_400mf", "densenet121"],
    )
    def test_params_gflops_and_top1_are_the_weights_meta(self, name):
        record = details(name)
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        classes = len(meta["categories"])
        # torchvision's numbers include the classifier, a Linear(feature_dim, classes).
        assert record["params"] + (record["feature_dim"] + 1) * classes == meta["num_params"]
        classifier_gmacs = record["feature_dim"] * classes / 1e9
        assert round(record["gflops"] + classifier_gmacs, 3) == meta["_ops"]
        assert record["imagenet_top1"] == meta["_metrics"]["ImageNet-1K"]["acc@1"]

    def test_resnet50_costs_4_1_gflops(self):
        record = details("resnet50")
        assert record["gflops"] == pytest.approx(4.09, abs=0.01)
        assert record["imagenet_top1"] == pytest.approx(80.858)


class TestAgainstTheRealBackbone:
    @pytest.mark.parametrize(
        "name, weights",
        [
            ("efficientnet_lite0", "default"),  # the packaged weights, built as timm's TF port
            ("timm/resnet18.a3_in1k", None),  # the tag's 160 px input
            ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", None),  # attention's matmuls counted
            ("resnet18", None),
        ],
    )
    def test_meta_counts_equal_the_cpu_backbones(self, name, weights):
        record = details(name)
        backbone = load_backbone(name, weights=weights)
        size = get_backbone_spec(name, weights).preprocessing.input_size
        assert record["params"] == sum(p.numel() for p in backbone.parameters())
        # The CPU's fused attention kernel has no FLOP formula: the math one is counted as bmm.
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                features = backbone(torch.zeros(1, 3, size, size))
        assert record["gflops"] * 2e9 == counter.get_total_flops()
        assert record["input_size"] == size
        assert record["feature_dim"] == features.shape[1]

    def test_a_smaller_input_size_costs_less(self):
        # Same network and parameters; (160 / 224)^2 of the multiply-adds, within stride rounding.
        tagged, torchvision_one = details("timm/resnet18.a3_in1k"), details("resnet18")
        assert tagged["params"] == torchvision_one["params"]
        ratio = tagged["gflops"] / torchvision_one["gflops"]
        assert ratio == pytest.approx((160 / 224) ** 2, rel=0.03)


class TestRecords:
    def test_default_is_still_a_list_of_names(self):
        names = list_backbones()
        assert all(isinstance(name, str) for name in names)
        assert names[0] == "efficientnet_lite0" and "resnet50" in names

    def test_timm_and_lite_have_no_published_top1(self):
        assert details("efficientnet_lite0")["imagenet_top1"] is None
        assert details("timm/resnet18.a3_in1k")["imagenet_top1"] is None

    def test_records_are_copies(self):
        list_backbones("mobilenet_v3*", details=True)[0]["params"] = -1
        assert list_backbones("mobilenet_v3*", details=True)[0]["params"] == 4_202_032

    def test_frame_is_indexed_by_name_with_nan_where_unpublished(self):
        pd = pytest.importorskip("pandas")
        frame = list_backbones("resnet18*", as_frame=True)
        records = list_backbones("resnet18*", details=True)
        assert list(frame.index) == [record["name"] for record in records]
        assert list(frame.columns) == [
            "library", "input_size", "feature_dim", "params", "gflops", "imagenet_top1"
        ]  # fmt: skip
        assert frame.loc["resnet18", "imagenet_top1"] == pytest.approx(69.758)
        assert math.isnan(frame.loc["timm/resnet18.a1_in1k", "imagenet_top1"])
        assert pd.api.types.is_integer_dtype(frame["params"])

    def test_frame_without_pandas_says_what_to_install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "pandas", None)
        with pytest.raises(ImportError, match="pip install pandas"):
            list_backbones("resnet18", as_frame=True)


class TestBuildOnMeta:
    def test_a_builder_that_reads_tensors_still_builds_without_weights(self):
        model = build_on_meta(lambda: torchvision.models.regnet_y_400mf(weights=None))
        assert {p.device.type for p in model.parameters()} == {"meta"}
        assert {b.device.type for b in model.buffers()} == {"meta"}
        # The hooks are gone: the next module holds real tensors.
        assert nn.Linear(2, 2).weight.device.type == "cpu"

    def test_modules_built_in_other_threads_keep_their_weights(self):
        built = {}

        def builder():
            model = torchvision.models.regnet_y_400mf(weights=None)  # fails on the meta device
            # Built while the registration hooks are on, in another thread.
            thread = threading.Thread(target=lambda: built.update(linear=nn.Linear(2, 2)))
            thread.start()
            thread.join()
            return model

        model = build_on_meta(builder)
        assert next(model.parameters()).is_meta
        assert built["linear"].weight.device.type == "cpu"


class TestDocsTable:
    def test_the_docs_table_lists_every_backbone_with_its_computed_numbers(self):
        with TABLE.open() as file:
            rows = {row["backbone"]: row for row in csv.DictReader(file)}
        assert list(rows) == list_backbones()
        for name in ("efficientnet_lite0", "resnet50", "vit_b_16"):
            record, row = details(name), rows[name]
            assert int(row["input"]) == record["input_size"]
            assert int(row["features"]) == record["feature_dim"]
            assert float(row["params (M)"]) == pytest.approx(record["params"] / 1e6, abs=0.006)
            assert float(row["GFLOPs"]) == pytest.approx(record["gflops"], abs=0.006)
            top1 = record["imagenet_top1"]
            assert row["ImageNet top-1 (%)"] == ("" if top1 is None else f"{top1:.1f}")
