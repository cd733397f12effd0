"""The fine-tuner decodes each image once per fit and keeps it in the feature store.

Decodes are counted at PIL's ``Image.open``, which every decode of an
encoded file goes through. The files are real photos (scikit-image's) as
small JPEGs; the backbone is the tiny test network.
"""

import numpy as np
import pytest
from PIL import Image

from sktransfer import Preprocessing
from sktransfer._disk_store import DiskStore
from sktransfer._finetune._decoded import DecodedImages, kept_image
from sktransfer._images import ImageCollection
from sktransfer._memory_store import MemoryStore
from sktransfer._transforms import eval_views

TINY = Preprocessing(input_size=32, resize_size=40)
N_FILES = 6


@pytest.fixture(scope="module")
def jpeg_files(tmp_path_factory):
    """Six real photos as JPEG files of 240 x 160 or 160 x 240 pixels, and their labels."""
    import skimage.data

    folder = tmp_path_factory.mktemp("jpegs")
    paths = []
    names = (
        "chelsea",
        "coffee",
        "astronaut",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
    )
    for i, name in enumerate(names):
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        photo = photo.resize((240, 160) if i % 2 else (160, 240), Image.BILINEAR)
        paths.append(str(folder / f"{i}-{name}.jpg"))
        photo.save(paths[-1], quality=90)
    return np.array(paths), np.array(["a", "b"] * (N_FILES // 2))


class TestKeptImages:
    @pytest.mark.parametrize("crop_mode", ["center", "squash"])
    @pytest.mark.parametrize("shape", [(300, 451), (451, 300), (40, 64), (30, 20), (50, 230)])
    def test_every_view_of_the_kept_image_is_the_decoded_images(self, photos, shape, crop_mode):
        p = Preprocessing(input_size=32, resize_size=40, crop_mode=crop_mode)
        rgb = np.asarray(Image.fromarray(photos[0]).resize(shape[::-1], Image.BILINEAR))
        kept = kept_image(rgb, p)
        assert min(kept.shape[:2]) == min(40 if crop_mode == "center" else 1000, *shape)
        # The corner crops of a longer than 4:1 image cut it once the eval transform has one home.
        tta = "ten_crop" if max(shape) <= 4 * min(shape) else "flip"
        for view in eval_views(p, tta):
            np.testing.assert_array_equal(view(kept).numpy(), view(rgb).numpy())

    def test_stored_as_uint8_at_the_resize_size_under_the_decode(self, jpeg_files):
        X, _ = jpeg_files
        store = MemoryStore(1 << 24)
        images = {}
        for decode in ("full", "reduced"):
            collection = ImageCollection(X[:1], min_side=None if decode == "full" else 60)
            DecodedImages(collection, TINY, store).fill()
            images[decode] = collection
        assert len(store) == 2  # one per decode identity
        full = DecodedImages(images["full"], TINY, store)
        kept = full.load(0)
        assert kept.dtype == np.uint8 and min(kept.shape[:2]) == 40
        np.testing.assert_array_equal(kept, kept_image(images["full"].load(0), TINY))


class TestStoredArrays:
    @pytest.fixture(params=["memory", "disk"])
    def store(self, request, tmp_path):
        return MemoryStore(1 << 20) if request.param == "memory" else DiskStore(tmp_path)

    def test_round_trip_beside_feature_rows(self, store):
        image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        store.put_many(["k"], np.ones((1, 4)))
        store.put_arrays(["k", "wide"], [image, np.ones((2, 2), dtype=">f8")])
        got, wide, absent = store.get_arrays(["k", "wide", "absent"])
        assert got.dtype == np.uint8 and not got.flags.writeable
        np.testing.assert_array_equal(got, image)
        assert wide.dtype.kind == "f" and wide.dtype.itemsize == 8 and absent is None
        np.testing.assert_array_equal(wide, np.ones((2, 2)))
        np.testing.assert_array_equal(store.get_many(["k"])[0], np.ones(4))
        assert len(store) == 3
        store.clear()
        assert len(store) == 0 and store.get_arrays(["k"]) == [None]

    def test_refuses_what_is_not_numeric(self, store):
        with pytest.raises(TypeError, match="numeric"):
            store.put_arrays(["k"], [np.array(["text"])])

    def test_a_damaged_array_is_a_miss(self, tmp_path):
        store = DiskStore(tmp_path)
        store.put_arrays(["k"], [np.zeros((4, 4, 3), dtype=np.uint8)])
        import sqlite3

        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE arrays SET shape = '4,4,4'")
        with pytest.warns(UserWarning, match="damaged"):
            assert store.get_arrays(["k"]) == [None]
        assert len(store) == 0

    def test_the_memory_bound_counts_arrays(self):
        store = MemoryStore(100)
        store.put_arrays(["a", "b"], [np.zeros(60, dtype=np.uint8)] * 2)
        assert store.get_arrays(["a", "b"])[0] is None and store.nbytes == 60

    def test_a_store_made_before_arrays_gets_their_table(self, tmp_path):
        import sqlite3

        DiskStore(tmp_path).put_many(["k"], np.ones((1, 2)))
        with sqlite3.connect(tmp_path / "features.sqlite") as db:
            db.execute("DROP TABLE arrays")
        store = DiskStore(tmp_path)
        assert store.get_arrays(["a"]) == [None] and len(store) == 1
        store.put_arrays(["a"], [np.ones((2, 2, 3), dtype=np.uint8)])
        assert store.get_arrays(["a"])[0].shape == (2, 2, 3)
