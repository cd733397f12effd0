"""The fine-tuner decodes each image once per fit and keeps it in the feature store.

Decodes are counted where PIL reads an encoded file's pixels (``load`` of
an image whose pixels are not read yet); reading a header to see how a file
will decode is not one. The files are real photos (scikit-image's) as
small JPEGs; the backbone is the tiny test network.
"""

import numpy as np
import pytest
from PIL import Image, ImageFile
from sklearn.model_selection import GridSearchCV

from sktransfer import Preprocessing
from sktransfer._finetune import FineTuneClassifier, FineTuneRegressor, _frozen
from sktransfer._finetune._decoded import DecodedImages, kept_image
from sktransfer._input import images as _images
from sktransfer._input.images import ImageCollection, InvalidImageError
from sktransfer._input.transforms import eval_views
from sktransfer._store import memory as _memory_store
from sktransfer._store.disk import DiskStore
from sktransfer._store.memory import MemoryStore
from tests.test_finetune import make_backbone

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
    return paths, np.array(["a", "b"] * (N_FILES // 2))


@pytest.fixture
def decodes(monkeypatch):
    """Number of images PIL has decoded since the test began."""
    decoded = []
    original = ImageFile.ImageFile.load

    def counting_load(image):
        if image.tile:  # its pixels are still to be read
            decoded.append(1)
        return original(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return lambda: len(decoded)


@pytest.fixture
def memory(monkeypatch):
    """A fresh process-wide memory store for the test (``cache="memory"``)."""
    store = MemoryStore(1 << 26)
    monkeypatch.setattr(_memory_store, "_DEFAULT_MEMORY_STORE", store)
    return store


def make_clf(**params):
    defaults = dict(
        preprocessing=TINY,
        max_epochs=3,
        batch_size=4,
        augment=True,
        random_state=0,
        progress=False,
        cache=None,
    )
    return FineTuneClassifier(make_backbone(), **{**defaults, **params})


class TestDecodedOncePerFit:
    @pytest.mark.parametrize("freeze", ["backbone", 1, 0])
    def test_augmented_epochs_decode_each_file_once(self, jpeg_files, decodes, freeze):
        X, y = jpeg_files
        make_clf(freeze=freeze).fit(X, y)
        assert decodes() == N_FILES

    @pytest.mark.parametrize("augment", [False, True])
    def test_warmup_and_frozen_outputs_share_the_decode(self, jpeg_files, decodes, augment):
        X, y = jpeg_files
        # Warm-up trains the head on the backbone's outputs, then the rest on stage 1's
        # outputs (not stored: cache=None) or on augmented images.
        make_clf(freeze=1, warmup_epochs=2, augment=augment).fit(X, y)
        assert decodes() == N_FILES

    def test_predict_decodes_once_for_every_view(self, jpeg_files, decodes):
        X, y = jpeg_files
        clf = make_clf(freeze=0, max_epochs=1, tta="ten_crop").fit(X, y)
        before = decodes()
        clf.predict_proba(X)
        assert decodes() - before == N_FILES

    def test_the_regressor_decodes_each_file_once_per_fit_and_predict(self, jpeg_files, decodes):
        X, _ = jpeg_files
        reg = FineTuneRegressor(
            make_backbone(), preprocessing=TINY, max_epochs=2, augment=True, freeze=0, tta="flip"
        )
        reg.set_params(progress=False, cache=None, random_state=0)
        reg.fit(X, np.linspace(0, 1, N_FILES)).predict(X)
        assert decodes() == 2 * N_FILES

    def test_partial_fit_and_warm_start_reuse_the_store(self, jpeg_files, decodes, memory):
        X, y = jpeg_files
        clf = make_clf(freeze=0, max_epochs=1, cache="memory", warm_start=True)
        clf.fit(X, y).fit(X, y)
        clf.partial_fit(X, y)
        clf.predict(X)
        assert decodes() == N_FILES

    def test_folds_of_a_search_reuse_the_store(self, jpeg_files, decodes, tmp_path):
        X, y = jpeg_files
        search = GridSearchCV(
            make_clf(max_epochs=1, cache=str(tmp_path)), {"freeze": [1, 0]}, cv=2
        ).fit(X, y)
        assert decodes() == N_FILES
        search.predict(X)
        assert decodes() == N_FILES

    def test_over_the_memory_limit_every_read_decodes(self, jpeg_files, decodes, monkeypatch):
        X, y = jpeg_files
        kept = make_clf(freeze=0).fit(X, y).predict_proba(X)
        assert decodes() == 2 * N_FILES  # fit, then predict (cache=None)
        monkeypatch.setattr(_frozen, "FROZEN_CACHE_LIMIT_BYTES", 0)
        with pytest.warns(UserWarning, match="decoded again whenever"):
            fresh = make_clf(freeze=0).fit(X, y).predict_proba(X)
        assert decodes() - 2 * N_FILES >= (3 + 1) * N_FILES  # each epoch, and predict
        np.testing.assert_allclose(kept, fresh, rtol=1e-5, atol=1e-6)


class TestKeptImages:
    @pytest.mark.parametrize("crop_mode", ["center", "squash"])
    @pytest.mark.parametrize("shape", [(300, 451), (451, 300), (40, 64), (30, 20), (50, 230)])
    def test_every_view_of_the_kept_image_is_the_decoded_images(self, photos, shape, crop_mode):
        p = Preprocessing(input_size=32, resize_size=40, crop_mode=crop_mode)
        rgb = np.asarray(Image.fromarray(photos[0]).resize(shape[::-1], Image.BILINEAR))
        kept = kept_image(rgb, p)
        assert min(kept.shape[:2]) == min(40 if crop_mode == "center" else 1000, *shape)
        for view in eval_views(p, "ten_crop"):
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


class TestFitsBoundedAndSafe:
    def test_a_bad_file_is_named_after_the_good_ones_are_stored(
        self, jpeg_files, tmp_path, memory, decodes
    ):
        X, y = jpeg_files
        bad = tmp_path / "truncated.jpg"
        bad.write_bytes(open(X[0], "rb").read()[:300])
        with pytest.raises(InvalidImageError, match=r"sample 2 \(.*truncated\.jpg\)"):
            make_clf(cache="memory").fit([*X[:2], str(bad), *X[2:]], ["a", "b", "a", *y[2:]])
        assert len(memory) == N_FILES
        make_clf(cache="memory").fit(X, y)
        assert decodes() == N_FILES  # the truncated file fails in its header, before any pixel

    def test_over_the_row_limit_nothing_is_stored(self, jpeg_files, monkeypatch, memory):
        X, y = jpeg_files
        monkeypatch.setattr(_frozen, "FROZEN_STORE_MAX_ROW_BYTES", 100)
        make_clf(cache="memory").fit(X, y)
        assert len(memory) == 0

    def test_in_memory_images_are_kept_but_not_stored(self, photos, memory, monkeypatch):
        reads = []
        decode = _images.decode_image
        monkeypatch.setattr(_images, "decode_image", lambda *a: reads.append(1) or decode(*a))
        make_clf(cache="memory").fit(photos, ["a", "b"] * 2)
        assert len(reads) == len(photos) and len(memory) == 0


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


def test_decode_is_a_parameter(jpeg_files):
    X, y = jpeg_files
    clf = make_clf(max_epochs=1, decode="full")
    assert clf.get_params()["decode"] == "full"
    with pytest.raises(ValueError, match="decode"):
        make_clf(decode="exact").fit(X, y)
