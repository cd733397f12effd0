"""load_image_folder and the demo data sets built from real photos."""

import os

import numpy as np
import pytest
from PIL import Image

from sktransfer import PretrainedFeaturizer
from sktransfer.datasets import (
    IMAGE_EXTENSIONS,
    load_faces,
    load_image_folder,
    load_textures,
    make_exposure_patches,
    save_image_folder,
)


def save_tiny(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 40, 40)).save(path)


class TestImageFolder:
    def test_round_trip_through_a_folder(self, tmp_path):
        images, labels = load_textures(patch_size=128)
        save_image_folder(images[::8], labels[::8], tmp_path)
        (tmp_path / "brick" / "notes.txt").write_text("not an image")
        (tmp_path / ".hidden").mkdir()
        with pytest.warns(UserWarning, match=r"left out 1 file.*'brick/notes.txt'"):
            paths, found = load_image_folder(tmp_path)
        assert list(found) == sorted(labels[::8])
        assert all(p.endswith(".jpg") for p in paths)
        assert paths[0].startswith(str(tmp_path / "brick"))

    def test_paths_feed_the_featurizer(self, tmp_path):
        images, labels = load_textures(patch_size=256)
        save_image_folder(images, labels, tmp_path)
        paths, _ = load_image_folder(tmp_path)
        features = PretrainedFeaturizer(progress=False).fit_transform(paths[:2])
        assert features.shape == (2, 1280) and np.isfinite(features).all()

    def test_missing_or_empty_folder(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_image_folder(tmp_path / "nope")
        (tmp_path / "cats").mkdir()
        with pytest.raises(ValueError, match="no images found in class folder .*cats"):
            load_image_folder(tmp_path)
        with pytest.raises(ValueError, match="no class folders"):
            load_image_folder(tmp_path / "cats")

    def test_images_at_any_depth_in_every_format_pillow_decodes(self, tmp_path):
        # torchvision's ImageFolder finds these; sktransfer once skipped the sub-folder and .jfif
        save_tiny(tmp_path / "cat" / "b.png")
        save_tiny(tmp_path / "cat" / "indoor" / "a.png")
        save_tiny(tmp_path / "cat" / "indoor" / "deeper" / "c.jpg")
        save_tiny(tmp_path / "dog" / "d.JFIF")
        save_tiny(tmp_path / "dog" / ".thumb.png")  # hidden: left out without a word
        paths, labels = load_image_folder(tmp_path)
        names = [os.path.relpath(p, tmp_path) for p in paths]
        assert names == ["cat/b.png", "cat/indoor/a.png", "cat/indoor/deeper/c.jpg", "dog/d.JFIF"]
        assert list(labels) == ["cat", "cat", "cat", "dog"]
        assert ".jfif" in IMAGE_EXTENSIONS and ".h5" not in IMAGE_EXTENSIONS

    def test_an_empty_class_is_an_error_not_a_missing_class(self, tmp_path):
        save_tiny(tmp_path / "cat" / "a.png")
        (tmp_path / "dog" / "indoor").mkdir(parents=True)
        (tmp_path / "dog" / "indoor" / "readme.txt").write_text("no photos yet")
        with pytest.raises(ValueError, match="no images found in class folder .*dog"):
            load_image_folder(tmp_path)

    def test_files_outside_class_folders_are_named_in_a_warning(self, tmp_path):
        save_tiny(tmp_path / "cat" / "a.png")
        save_tiny(tmp_path / "loose.png")
        with pytest.warns(UserWarning, match="left out 1 file.*'loose.png'"):
            paths, _ = load_image_folder(tmp_path)
        assert len(paths) == 1

    def test_a_class_linked_to_the_root_is_refused(self, tmp_path):
        save_tiny(tmp_path / "cat" / "a.png")
        save_tiny(tmp_path / "loose.png")
        (tmp_path / "everything").symlink_to(tmp_path, target_is_directory=True)
        with pytest.raises(ValueError, match="everything' is a link to"):
            load_image_folder(tmp_path)

    def test_link_loops_are_not_followed(self, tmp_path):
        save_tiny(tmp_path / "cat" / "indoor" / "a.png")
        save_tiny(tmp_path / "dog" / "b.png")
        (tmp_path / "cat" / "indoor" / "up").symlink_to(tmp_path / "cat")
        (tmp_path / "cat" / "root").symlink_to(tmp_path)
        with pytest.warns(UserWarning, match="did not follow 2 link"):
            paths, labels = load_image_folder(tmp_path)
        assert list(labels) == ["cat", "dog"] and paths[0].endswith("a.png")


def test_demo_data_sets():
    images, labels = load_textures(patch_size=64)
    assert images.shape == (192, 64, 64) and images.dtype == np.uint8
    assert sorted(set(labels)) == ["brick", "grass", "gravel"]
    faces, face_labels = load_faces()
    assert faces.shape == (200, 25, 25) and (face_labels == "face").sum() == 100


def test_exposure_patches_are_reproducible_and_their_gain_is_their_brightness():
    images, gains = make_exposure_patches(20, patch_size=32, random_state=0)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert gains.shape == (20,) and gains.min() >= 0.25 and gains.max() <= 1.75
    again, same = make_exposure_patches(20, patch_size=32, random_state=0)
    assert np.array_equal(images, again) and np.array_equal(gains, same)
    # The gain is what makes a patch bright or dark, whatever the photo.
    brightness = images.reshape(20, -1).mean(axis=1)
    assert np.corrcoef(brightness, gains)[0, 1] > 0.5
