"""sktransfer.inspection: the errors gallery, Grad-CAM maps and training curves, on real photos.

Most tests use the tiny three-stage backbone (or a one-stage identity
backbone, whose Grad-CAM map is a known function of the pixels) on real
texture photos; the quadrant tests run the real default backbone (slow).
"""

from collections import OrderedDict

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.dataset import ValidSplit
from torch import nn

from sktransfer import FineTuneClassifier, FineTuneRegressor, Preprocessing, PretrainedFeaturizer
from sktransfer._input.transforms import eval_transform
from sktransfer.datasets import load_textures, make_exposure_patches
from sktransfer.inspection import ImageErrorsDisplay, SaliencyDisplay, TrainingHistoryDisplay
from sktransfer.inspection._gradcam import to_image

from ._helpers import run_python
from .conftest import TINY_PREPROCESSING, make_tiny_backbone

matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tiny_featurizer(**params):
    return PretrainedFeaturizer(
        make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, cache=None, progress=False, **params
    )


@pytest.fixture(scope="module")
def textures():
    """Real photos: 16 patches each of brick, grass and gravel, 64 px."""
    return load_textures(patch_size=64, stride=128)


@pytest.fixture(scope="module")
def texture_pipeline(textures):
    X, y = textures
    return make_pipeline(tiny_featurizer(), LogisticRegression(max_iter=2000)).fit(X, y)


def visible_axes(display):
    return [axis for axis in display.axes_.flat if axis.axison]


class TestImageErrorsDisplay:
    def test_shows_the_highest_log_losses_titled_with_true_and_predicted(
        self, textures, texture_pipeline
    ):
        X, y = textures
        display = ImageErrorsDisplay.from_estimator(texture_pipeline, X, y, n=6)
        proba = texture_pipeline.predict_proba(X)
        classes = texture_pipeline.classes_
        # Each loss is scikit-learn's log loss of that one sample.
        rows = proba.astype(float) / proba.astype(float).sum(axis=1, keepdims=True)
        per_sample = np.array(
            [log_loss([label], [row], labels=classes) for label, row in zip(y, rows)]
        )
        np.testing.assert_allclose(display.losses, np.sort(per_sample)[::-1][:6], rtol=1e-6)
        np.testing.assert_allclose(per_sample[display.indices], display.losses, rtol=1e-6)
        assert len(visible_axes(display)) == 6 and display.figure_ is display.axes_.flat[0].figure
        predicted = classes[proba.argmax(axis=1)]
        for axis, index, image in zip(display.axes_.flat, display.indices, display.images):
            title = axis.get_title()
            assert f"true: {y[index]} (p=" in title
            assert f"predicted: {predicted[index]} (p={proba[index].max():.2f})" in title
            # The photo as given (grayscale patches become gray RGB), not the network's crop.
            np.testing.assert_array_equal(image, np.repeat(X[index][..., None], 3, axis=-1))
            np.testing.assert_array_equal(axis.get_images()[0].get_array(), image)

    def test_from_predictions_matches_from_estimator(self, textures, texture_pipeline):
        X, y = textures
        proba = texture_pipeline.predict_proba(X)
        classes = texture_pipeline.classes_
        display = ImageErrorsDisplay.from_predictions(
            y, classes[proba.argmax(axis=1)], X=X, y_proba=proba, classes=classes, n=5
        )
        expected = ImageErrorsDisplay.from_estimator(texture_pipeline, X, y, n=5)
        np.testing.assert_array_equal(display.indices, expected.indices)
        np.testing.assert_allclose(display.losses, expected.losses)

    def test_out_of_fold_mistakes_come_first(self, textures):
        X, y = textures
        pipe = make_pipeline(tiny_featurizer(), LogisticRegression(max_iter=2000))
        predicted = cross_val_predict(pipe, X, y, cv=3)
        display = ImageErrorsDisplay.from_predictions(y, predicted, X=X, n=len(y))
        n_wrong = int((predicted != y).sum())
        assert 0 < n_wrong < len(y)
        np.testing.assert_array_equal(display.losses, [1.0] * n_wrong + [0.0] * (len(y) - n_wrong))
        assert all(predicted[i] != y[i] for i in display.indices[:n_wrong])
        assert display.axes_.flat[0].get_title() == (
            f"true: {y[display.indices[0]]}\npredicted: {predicted[display.indices[0]]}"
        )

    def test_regressor_shows_the_largest_absolute_errors(self):
        X, gains = make_exposure_patches(30, patch_size=48, random_state=0)
        model = make_pipeline(tiny_featurizer(), Ridge()).fit(X[:20], gains[:20])
        display = ImageErrorsDisplay.from_estimator(model, X[20:], gains[20:], n=4)
        errors = np.abs(model.predict(X[20:]) - gains[20:])
        np.testing.assert_allclose(display.losses, np.sort(errors)[::-1][:4])
        index = display.indices[0]
        assert display.axes_.flat[0].get_title() == (
            f"true: {gains[20 + index]:.3g}\npredicted: {model.predict(X[20:])[index]:.3g}"
        )

    def test_paths_and_pil_images_are_shown_upright_as_given(self, tmp_path, photos):
        # A phone photo stored sideways, with the EXIF tag that tells viewers to turn it.
        photo = photos[0]  # chelsea, 300 x 451
        stored = Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90)
        exif = stored.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        path = tmp_path / "sideways.jpg"
        stored.save(path, quality=95, exif=exif)
        upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert upright.shape == photo.shape
        model = make_pipeline(tiny_featurizer(), LogisticRegression()).fit(
            [photo, photo[::-1]], ["a", "b"]
        )
        for X in ([str(path), str(path)], [Image.open(path), Image.open(path)]):
            display = ImageErrorsDisplay.from_estimator(model, X, ["a", "b"], n=2)
            for image in display.images:
                np.testing.assert_array_equal(image, upright)

    def test_draws_into_given_axes(self, textures, texture_pipeline):
        X, y = textures
        figure, (left, right) = plt.subplots(1, 2)
        display = ImageErrorsDisplay.from_estimator(texture_pipeline, X, y, n=4, ax=left)
        assert display.figure_ is figure and display.axes_.shape == (1, 4)
        assert not left.axison and right.axison  # the grid took the left axes' place
        _, axes = plt.subplots(2, 3)
        display.plot(ax=axes)
        assert display.axes_.shape == (2, 3) and len(visible_axes(display)) == 4
        with pytest.raises(ValueError, match="ax holds 2 axes; 4 images need 4"):
            display.plot(ax=axes[0, :2])

    def test_bad_arguments_are_named(self, textures, texture_pipeline):
        X, y = textures
        proba, classes = texture_pipeline.predict_proba(X), texture_pipeline.classes_
        with pytest.raises(ValueError, match="one column per class"):
            ImageErrorsDisplay.from_predictions(y, y, X=X, y_proba=proba[:, :2])
        with pytest.raises(ValueError, match=r"y_true holds labels not in classes .*\['sand'\]"):
            ImageErrorsDisplay.from_predictions(
                np.where(y == "brick", "sand", y), y, X=X, y_proba=proba, classes=classes
            )
        with pytest.raises(ValueError, match="multi-label"):
            ImageErrorsDisplay.from_predictions(np.eye(3)[:2], np.eye(3)[:2], X=X[:2])
        with pytest.raises(ValueError, match="y_true has shape .* but y_pred has"):
            ImageErrorsDisplay.from_predictions(y, y[:-1], X=X)
        with pytest.raises(ValueError, match="n must be a positive int"):
            ImageErrorsDisplay.from_estimator(texture_pipeline, X, y, n=0)


def test_importing_inspection_does_not_import_matplotlib():
    run_python(
        "import sys, sktransfer.inspection\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )


# --- Grad-CAM ---

#: The network sees the pixels themselves: stage "pixels" is the normalised image.
PIXELS = Preprocessing(input_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.5,) * 3)


def pixel_backbone():
    return nn.Sequential(OrderedDict(pixels=nn.Identity()))


def red_or_blue(n, seed=0):
    """Gray images, each with a red or a blue square somewhere: the label."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 48, 48, 3), 128, dtype=np.uint8)
    labels = np.array(["red", "blue"] * (n // 2))
    for image, label in zip(images, labels):
        top, left = rng.integers(0, 32, 2)
        image[top : top + 16, left : left + 16] = (255, 0, 0) if label == "red" else (0, 0, 255)
    return images, labels


def red_square_scene():
    """A wide gray photo-like scene (80 x 120) with a red square in the top-left
    quadrant of what the centre crop keeps: the evaluation transform cuts its sides."""
    image = np.full((80, 120, 3), 128, dtype=np.uint8)
    image[10:30, 25:45] = (255, 0, 0)
    return image


def pixel_models():
    X, y = red_or_blue(16)
    pipe = make_pipeline(
        PretrainedFeaturizer(pixel_backbone(), preprocessing=PIXELS, cache=None, progress=False),
        StandardScaler(),
        LogisticRegression(),
    ).fit(X, y)
    clf = FineTuneClassifier(
        pixel_backbone(),
        preprocessing=PIXELS,
        freeze="backbone",
        max_epochs=30,
        lr=0.1,
        batch_size=16,
        cache=None,
        progress=False,
        random_state=0,
    ).fit(X, y)
    return {"pipeline": pipe, "fine-tuner": clf}


@pytest.fixture(scope="module")
def models():
    return pixel_models()


class TestSaliencyDisplay:
    @pytest.mark.parametrize("kind", ["pipeline", "fine-tuner"])
    def test_map_lies_on_the_evidence_in_the_image_own_pixels(self, models, kind):
        model = models[kind]
        scene = red_square_scene()
        display = SaliencyDisplay.from_estimator(model, [scene], target="red")
        (heat,) = display.maps_
        assert heat.shape == scene.shape[:2] and heat.dtype == np.float32
        assert heat.min() == 0 and heat.max() == 1
        row, col = np.unravel_index(heat.argmax(), heat.shape)
        assert 10 <= row < 30 and 25 <= col < 45, (row, col)
        # The centre crop keeps columns 7..113 of 120: the rest was never seen.
        assert not heat[:, :6].any() and not heat[:, 114:].any()
        assert display.stage == "pixels" and display.targets.tolist() == ["red"]
        # Asked about blue, the red square argues against it.
        blue = SaliencyDisplay.from_estimator(model, [scene], target="blue").maps_[0]
        assert blue[10:30, 25:45].max() < 0.05

    @pytest.mark.parametrize("kind", ["pipeline", "fine-tuner"])
    def test_default_target_is_the_prediction(self, models, kind):
        X, _ = red_or_blue(6, seed=1)
        display = SaliencyDisplay.from_estimator(models[kind], X)
        np.testing.assert_array_equal(display.targets, models[kind].predict(X))
        titles = [axis.get_title() for axis in visible_axes(display)]
        assert titles == [f"{label} (pixels)" for label in display.targets]
        assert len(display.overlays_) == 6

    def test_fine_tuner_is_left_as_it_was(self, models):
        clf = models["fine-tuner"]
        clf.module_.train()
        before = {
            name: (p.detach().clone(), None if p.grad is None else p.grad.clone())
            for name, p in clf.module_.named_parameters()
        }
        SaliencyDisplay.from_estimator(clf, [red_square_scene()])
        assert clf.module_.training
        # Gradients go to the stage's output only: nothing reaches the parameters' .grad.
        for name, parameter in clf.module_.named_parameters():
            value, grad = before[name]
            torch.testing.assert_close(parameter.detach(), value, rtol=0, atol=0)
            assert (parameter.grad is None) if grad is None else torch.equal(parameter.grad, grad)

    def test_stage_by_name_or_index_on_a_real_photo(self, photos):
        X, y = load_textures(patch_size=64, stride=128)
        pipe = make_pipeline(tiny_featurizer(layers=(0, 2)), LogisticRegression()).fit(X, y)
        chelsea = photos[0]
        last = SaliencyDisplay.from_estimator(pipe, [chelsea])
        first = SaliencyDisplay.from_estimator(pipe, [chelsea], stage=0)
        assert last.stage == "2" and first.stage == "0"
        for display in (last, first):
            assert display.maps_[0].shape == chelsea.shape[:2]
            assert display.maps_[0].max() == 1
        assert not np.allclose(last.maps_[0], first.maps_[0])
        with pytest.raises(ValueError, match=r"stage='block9' is not a stage .*0=0 \(4, "):
            SaliencyDisplay.from_estimator(pipe, [chelsea], stage="block9")
        with pytest.raises(ValueError, match="target='sand' is not one of the classes"):
            SaliencyDisplay.from_estimator(pipe, [chelsea], target="sand")

    def test_stage_without_spatial_extent_is_refused(self):
        X, y = red_or_blue(8)
        backbone = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(3, 4, 3), flat=nn.Sequential(nn.AdaptiveAvgPool2d(1)))
        )
        pipe = make_pipeline(
            PretrainedFeaturizer(backbone, preprocessing=PIXELS, cache=None, progress=False),
            LogisticRegression(),
        ).fit(X, y)
        assert SaliencyDisplay.from_estimator(pipe, X[:1]).stage == "conv"
        with pytest.raises(ValueError, match="stage 'flat' has no spatial extent"):
            SaliencyDisplay.from_estimator(pipe, X[:1], stage="flat")

    def test_unsupported_estimators_are_named(self, textures):
        X, y = textures
        with pytest.raises(TypeError, match=r"got a Pipeline of \['PretrainedFeaturizer', 'PCA'"):
            pipe = make_pipeline(tiny_featurizer(), PCA(4), LogisticRegression()).fit(X, y)
            SaliencyDisplay.from_estimator(pipe, X[:1])
        regressor = FineTuneRegressor(
            make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, max_epochs=1, progress=False
        )
        with pytest.raises(TypeError, match="got FineTuneRegressor"):
            SaliencyDisplay.from_estimator(regressor.fit(X[:4], np.arange(4.0)), X[:1])


class ScoresOf(nn.Module):
    """A classifier's class scores (``ClassScores``) as one module, for other Grad-CAM code."""

    def __init__(self, scores):
        super().__init__()
        self.stages = scores.stages
        self.head = scores.head

    def forward(self, x):
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return self.head(outputs)


def test_grad_cam_matches_the_grad_cam_package(textures, texture_pipeline):
    # jacobgil/pytorch-grad-cam's GradCAM on the same scores; it min-max scales its maps
    # at the stage's size and again after resizing them to the input (scale_cam_image).
    pytest.importorskip("cv2")
    grad_cam_package = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from sktransfer.inspection._gradcam import _batch_cams, class_scores
    from sktransfer.inspection._grid import decode_images

    X, y = textures
    clf = FineTuneClassifier(
        make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, freeze=1, max_epochs=2
    )
    for model in (texture_pipeline, clf.fit(X, y)):
        scores = class_scores(model)
        images = decode_images(X[::8])  # the gray patches as RGB
        batch = torch.stack([eval_transform(scores.preprocessing)(image) for image in images])

        for stage in (0, 1, 2):
            ours, chosen, _ = _batch_cams(scores, batch, None, stage)
            scores.network.eval()
            cam = grad_cam_package.GradCAM(ScoresOf(scores), [scores.stages[stage]])
            cam.compute_input_gradient = True  # gradients through frozen stages
            theirs = cam(batch, targets=[ClassifierOutputTarget(int(c)) for c in chosen])
            size = (batch.shape[-1], batch.shape[-2])
            np.testing.assert_allclose(
                scale_cam_image(scale_cam_image(ours, size)), theirs, atol=1e-5
            )


def test_heat_map_covers_what_the_evaluation_transform_keeps():
    # Each pixel holds its own coordinates; the transform's output says which it kept.
    height, width = 50, 300  # wider than 4:1, so the transform cuts the sides first
    rows, cols = np.mgrid[:height, :width]
    coordinates = np.stack([rows, cols // 256, cols % 256], axis=-1).astype(np.uint8)
    preprocessing = Preprocessing(
        input_size=32, resize_size=36, interpolation="nearest", mean=(0,) * 3, std=(1,) * 3
    )
    kept = np.round(eval_transform(preprocessing)(coordinates).numpy() * 255).astype(int)
    kept_rows, kept_cols = kept[0], kept[1] * 256 + kept[2]
    heat = to_image(np.ones((4, 4)), (height, width), preprocessing)
    covered_rows, covered_cols = np.nonzero(heat)
    assert abs(covered_rows.min() - kept_rows.min()) <= 1
    assert abs(covered_rows.max() - kept_rows.max()) <= 1
    assert abs(covered_cols.min() - kept_cols.min()) <= 1
    assert abs(covered_cols.max() - kept_cols.max()) <= 1


# --- training history ---


class TestTrainingHistoryDisplay:
    def make_clf(self, **params):
        defaults = dict(
            preprocessing=TINY_PREPROCESSING, max_epochs=4, batch_size=8, progress=False
        )
        return FineTuneClassifier(make_tiny_backbone(), **{**defaults, **params})

    def test_one_point_per_epoch_with_validation(self, textures):
        X, y = textures
        clf = self.make_clf(train_split=ValidSplit(4, stratified=True)).fit(X, y)
        display = TrainingHistoryDisplay.from_estimator(clf)
        assert set(display.lines_) == {"train_loss", "valid_loss", "valid_acc"}
        for key, line in display.lines_.items():
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
            np.testing.assert_allclose(line.get_ydata(), clf.history[:, key])
        assert display.metric_ax_.get_ylabel() == "valid_acc"
        assert display.ax_.get_xlabel() == "epoch" and display.figure_ is display.ax_.figure

    def test_without_validation_only_the_training_loss(self, textures):
        X, y = textures
        clf = self.make_clf(freeze=-1, warmup_epochs=2).fit(X, y)
        display = TrainingHistoryDisplay.from_estimator(clf)
        assert list(display.lines_) == ["train_loss"] and display.metric_ax_ is None
        # The warm-up epochs are epochs too.
        np.testing.assert_array_equal(display.lines_["train_loss"].get_xdata(), np.arange(1, 7))
        _, ax = plt.subplots()
        assert display.plot(ax=ax).ax_ is ax

    def test_metric_by_name_and_unfitted(self, textures):
        X, y = textures
        with pytest.raises(ValueError, match="has no training history: fit it first"):
            TrainingHistoryDisplay.from_estimator(self.make_clf())
        clf = self.make_clf(max_epochs=2, train_split=ValidSplit(4, stratified=True)).fit(X, y)
        with pytest.raises(ValueError, match="metric='valid_f1' is not in the history"):
            TrainingHistoryDisplay.from_estimator(clf, metric="valid_f1")
        regressor = FineTuneRegressor(
            make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, max_epochs=2, progress=False
        ).fit(X[:8], np.arange(8.0))
        assert len(TrainingHistoryDisplay.from_estimator(regressor).train_loss) == 2


# --- the real default backbone ---


def pasted(obj, top, left, size=96, side=256):
    """A plain gray 256 x 256 scene with ``obj`` resized to ``size`` and pasted at (top, left)."""
    scene = np.full((side, side, 3), 128, dtype=np.uint8)
    scene[top : top + size, left : left + size] = np.asarray(
        Image.fromarray(obj).resize((size, size))
    )
    return scene


QUADRANTS = {"top-left": (28, 28), "top-right": (28, 132), "bottom-left": (132, 28)}
QUADRANTS["bottom-right"] = (132, 132)


@pytest.mark.slow
def test_grad_cam_peaks_in_the_quadrant_of_the_object(photos):
    # Real photo crops: chelsea's head and the coffee cup, pasted anywhere on gray.
    cat, cup = photos[0][20:280, 100:360], photos[1][20:380, 130:490]
    rng = np.random.default_rng(0)
    X, y = [], []
    for label, obj in (("cat", cat), ("coffee", cup)):
        for _ in range(8):
            size = int(rng.integers(64, 128))
            top, left = rng.integers(16, 240 - size, 2)
            X.append(pasted(obj, top, left, size))
            y.append(label)
    X, y = np.stack(X), np.array(y)
    scenes = np.stack([pasted(cat, *corner) for corner in QUADRANTS.values()])
    pipe = make_pipeline(
        PretrainedFeaturizer(progress=False), LogisticRegression(max_iter=1000)
    ).fit(X, y)
    clf = FineTuneClassifier(
        freeze="backbone", max_epochs=10, lr=1e-2, random_state=0, progress=False
    ).fit(X, y)
    for model in (pipe, clf):
        display = SaliencyDisplay.from_estimator(model, scenes, target="cat")
        assert display.stage == "head"
        for quadrant, heat in zip(QUADRANTS, display.maps_):
            halves = {"top": heat[:128], "bottom": heat[128:]}
            vertical, horizontal = quadrant.split("-")
            rows = halves[vertical]
            masses = {
                f"{v}-{h}": part[:, :128].sum() if h == "left" else part[:, 128:].sum()
                for v, part in halves.items()
                for h in ("left", "right")
            }
            assert max(masses, key=masses.get) == quadrant, (type(model).__name__, masses)
            assert masses[quadrant] > 0.5 * heat.sum()
            row, col = np.unravel_index(heat.argmax(), heat.shape)
            top, left = QUADRANTS[quadrant]
            # The peak on the object, to half a cell of the 7 x 7 map (32 px).
            assert top - 16 <= row < top + 96 + 16 and left - 16 <= col < left + 96 + 16
            assert rows.max() == 1
