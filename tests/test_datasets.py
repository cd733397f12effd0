"""load_image_folder and the demo data sets built from real photos."""

import numpy as np
import pytest

from sktransfer import PretrainedFeaturizer
from sktransfer.datasets import load_faces, load_image_folder, load_textures, save_image_folder


class TestImageFolder:
    def test_round_trip_through_a_folder(self, tmp_path):
        images, labels = load_textures(patch_size=128)
        save_image_folder(images[::8], labels[::8], tmp_path)
        (tmp_path / "brick" / "notes.txt").write_text("not an image")
        (tmp_path / ".hidden").mkdir()
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
        with pytest.raises(ValueError, match="no images found"):
            load_image_folder(tmp_path)


def test_demo_data_sets():
    images, labels = load_textures(patch_size=64)
    assert images.shape == (192, 64, 64) and images.dtype == np.uint8
    assert sorted(set(labels)) == ["brick", "grass", "gravel"]
    faces, face_labels = load_faces()
    assert faces.shape == (200, 25, 25) and (face_labels == "face").sum() == 100
