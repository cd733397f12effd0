"""Every family: stages that compose to the model, widths that match, the library's own features.

Sweeps build on the meta device (no memory, no compute); reference checks use
small random networks saved to files, the way a user passes their own weights.
"""

import re

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

from sktransfer import FineTuneClassifier, PretrainedFeaturizer, list_backbones
from sktransfer._backbones import Backbone, get_backbone_spec
from sktransfer._backbones._timm import build_meta
from sktransfer._backbones._torchvision import (
    _builder_overrides,
    build_torchvision,
    torchvision_cut,
)

TIMM_FAMILIES = [
    "timm/resnet18",
    "regnetx_002",
    "timm/efficientnet_b0",
    "mobilenetv3_small_050",
    "convnext_atto",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "vit_small_patch14_dinov2.lvd142m",
    "vit_base_patch16_clip_224.openai",
    "swin_tiny_patch4_window7_224",
]


def meta_forward(backbone: nn.Module, size: int) -> torch.Size:
    with torch.no_grad():
        return backbone(torch.zeros(1, 3, size, size, device="meta")).shape


def cosine(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.nn.functional.cosine_similarity(a, b)


# RegNet's builder computes its widths with tensors, so it cannot build on the meta device;
# the small ones are built for real, the others (GBs of random weights) are left out.
LARGE_REGNETS = ("regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf", "regnet_y_8gf", "regnet_y_16gf")
LARGE_REGNETS += ("regnet_y_32gf", "regnet_y_128gf")
TORCHVISION = [n for n in list_backbones() if not n.startswith("efficientnet_lite")]


def family(name):
    return re.sub(r"[\d_].*", "", name.removeprefix("wide_"))


def sweep(names):
    """The first model of each family runs by default, the others with the slow tests."""
    seen = set()
    for name in names:
        yield name if family(name) not in seen else pytest.param(name, marks=pytest.mark.slow)
        seen.add(family(name))


@pytest.mark.parametrize("name", list(sweep(n for n in TORCHVISION if n not in LARGE_REGNETS)))
def test_every_torchvision_classifier_cuts_to_its_declared_width(name):
    spec = get_backbone_spec(name, weights=None)
    device = "cpu" if name.startswith("regnet") else "meta"
    with torch.device(device):
        network = torchvision.models.get_model(name, weights=None, **_builder_overrides(name))
    network = network.to("meta")
    stages, pool = torchvision_cut(network.eval())
    assert tuple(stages) == spec.stages
    assert meta_forward(Backbone(stages, pool), spec.preprocessing.input_size) == (
        1,
        spec.feature_dim,
    )


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_families_have_stages_and_their_declared_width(name):
    spec = get_backbone_spec(name, weights=None)
    assert len(spec.stages) >= 5 and spec.stages[0] == "stem"
    # On the meta device where this timm can build it there (older releases cannot, for all).
    network = build_meta(name.removeprefix("timm/")).to("meta")
    stages, pool = spec.cut(network)
    backbone = Backbone(stages, pool)
    assert backbone.stage_names == spec.stages
    assert meta_forward(backbone, spec.preprocessing.input_size) == (1, spec.feature_dim)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_timm_stages_run_in_turn_equal_the_model(name):
    torch.manual_seed(0)
    spec = get_backbone_spec(name, weights=None)
    network = timm.create_model(name, pretrained=False).eval()
    x = image = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        features = network.forward_features(x)
        expected = network.forward_head(features, pre_logits=True)
        stages, pool = spec.cut(network)
        for stage in stages.values():
            x = stage(x)
        torch.testing.assert_close(x, features)
        torch.testing.assert_close(pool(x), expected)
        # The stem and the pooling are shallow copies with children removed: the model itself
        # must keep all of them (only its classifier is dropped).
        torch.testing.assert_close(network.forward_features(image), features)


def pil(photos):
    return [Image.fromarray(p) for p in photos]


@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224", "timm/resnet18"])
def test_timm_features_equal_timms_own_pipeline(name, photos, tmp_path):
    arch = name.removeprefix("timm/")
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    featurizer = PretrainedFeaturizer(name, weights=str(tmp_path / "w.pth"), progress=False)
    features = featurizer.fit_transform(photos)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        batch = torch.stack([transform(image) for image in pil(photos)])
        expected = model.forward_head(model.forward_features(batch), pre_logits=True)
    assert featurizer.n_features_out_ == model.num_features == features.shape[1]
    assert cosine(features, expected).min() >= 0.999


def builder_state(name):
    """A random checkpoint shaped as torchvision publishes it (auxiliary heads included)."""
    # init_weights=False: PyTorch's default initialisation, not vanishingly small features.
    auxiliary = name in ("googlenet", "inception_v3")
    kwargs = dict(aux_logits=True, init_weights=False) if auxiliary else {}
    torch.manual_seed(0)
    state = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    if not name.startswith("densenet"):
        return state
    # DenseNet's published checkpoints predate num_batches_tracked and name their layers the
    # old way ("norm.1", not "norm1").
    legacy = re.compile(r"(denselayer\d+\.(norm|relu|conv))([12])\.")
    return {
        legacy.sub(r"\1.\3.", key): tensor
        for key, tensor in state.items()
        if not key.endswith("num_batches_tracked")
    }


def builders_own_model(name, state, torch_home):
    """The builder given its weights enum, reading ``state`` from the torch hub cache.

    ``TORCH_HOME`` must point at ``torch_home``: the builder finds the file there as if it had
    downloaded it, and loads it its own way (aux heads, legacy keys, image size).
    """
    weights = torchvision.models.get_model_weights(name).DEFAULT
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / weights.url.rsplit("/", 1)[-1])
    return torchvision.models.get_model(name, weights=weights).eval()


def cut_before_classifier(model):
    """The reference cut: the model's own forward with its final linear layer removed."""
    if type(model).__name__ == "SqueezeNet":
        return lambda x: model.features(x).mean((2, 3))
    parent, name = model, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    *path, last = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, nn.Identity())
    return model


# The larger networks take tens of seconds each on a small CPU: marked slow.
TORCHVISION_FAMILIES = [
    *(pytest.param(n, marks=pytest.mark.slow) for n in ("vgg11", "alexnet", "inception_v3")),
    *(pytest.param(n, marks=pytest.mark.slow) for n in ("densenet121", "swin_t", "vit_b_16")),
    pytest.param("convnext_tiny", marks=pytest.mark.slow),
    "googlenet",
    "mobilenet_v3_small",
    "regnet_y_400mf",
    "squeezenet1_0",
    "resnet18",
]


@pytest.mark.parametrize("name", TORCHVISION_FAMILIES)
def test_torchvision_features_equal_the_builders_model_cut_before_its_classifier(
    name, photos, tmp_path, monkeypatch
):
    # The checkpoint as published (aux heads, DenseNet's legacy keys) goes through the same
    # build as the downloaded one: the builder's arguments for the weights, then the state.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = builder_state(name)
    model = builders_own_model(name, state, tmp_path)
    torch.save(state, tmp_path / "w.pth")
    featurizer = PretrainedFeaturizer(name, weights=str(tmp_path / "w.pth"), progress=False)
    features = featurizer.fit_transform(photos[:2])
    transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    batch = torch.stack([transform(torch.from_numpy(p).permute(2, 0, 1)) for p in photos[:2]])
    with torch.no_grad():
        expected = cut_before_classifier(model)(batch)
    assert features.shape == (2, featurizer.n_features_out_) and np.isfinite(features).all()
    assert cosine(features, expected).min() >= 0.999


@pytest.mark.parametrize(
    "name", ["googlenet", pytest.param("inception_v3", marks=pytest.mark.slow)]
)
def test_auxiliary_classifier_models_fine_tune_with_nothing_frozen(name, photos):
    clf = FineTuneClassifier(
        name, weights=None, freeze=0, max_epochs=1, batch_size=2, train_split=None, verbose=0
    )
    clf.fit(photos[:2], ["cat", "cup"])
    assert clf.frozen_stages_ == () and clf.predict(photos[:2]).shape == (2,)


def test_vit_fine_tunes_its_last_two_blocks_and_the_head(photos, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    clf = FineTuneClassifier(
        "vit_tiny_patch16_224",
        weights=str(tmp_path / "w.pth"),
        freeze=-2,
        max_epochs=1,
        batch_size=2,
        train_split=None,
        verbose=0,
    ).fit(photos[:2], ["cat", "cup"])
    assert clf.stages_[-2:] == ("block10", "block11")
    trainable = {
        ".".join(n.split(".")[:2]) for n, p in clf.module_.named_parameters() if p.requires_grad
    }
    assert {t for t in trainable if t.startswith("stages.")} == {"stages.block10", "stages.block11"}
    assert not any(t.startswith("pool.") for t in trainable) or "pool" in trainable
    assert any(t.startswith("head") for t in trainable)


@pytest.mark.parametrize(
    "name",
    ["googlenet", "densenet121", "resnet18", pytest.param("vit_b_16", marks=pytest.mark.slow)],
)
def test_default_weights_build_as_the_builder_does_for_them(name, tmp_path, monkeypatch):
    # Built without the weights enum (no private torchvision API), from the checked state:
    # the same tensors and architecture as the builder's own model for those weights.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = builder_state(name)
    expected = builders_own_model(name, state, tmp_path)
    spec = get_backbone_spec(name)
    model = build_torchvision(spec, state)
    assert type(model) is type(expected)
    assert [(n, repr(m)) for n, m in model.named_children()] == [
        (n, repr(m)) for n, m in expected.named_children()
    ]
    assert model.state_dict().keys() == expected.state_dict().keys()
    for key, tensor in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], tensor, msg=key)
    for attribute in ("transform_input", "aux_logits", "image_size"):
        assert getattr(model, attribute, None) == getattr(expected, attribute, None)
