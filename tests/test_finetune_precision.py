"""Mixed-precision training: the trainable stages and the head under autocast, fp16 loss scaling.

Tiny three-stage conv nets on 32 px images, as in test_finetune.py. The bf16
cases run where the CPU computes bf16 natively; the fp16 cases run on any
CPU (torch emulates fp16 where it must: slow, but these nets are tiny); the
CUDA cases where a GPU is present.
"""

import pickle

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from sktransfer._engines.device import cpu_native_dtypes

from .test_finetune import TINY, colour_images, make_backbone, make_clf
from .test_finetune_params import make_reg

needs_native_bf16 = pytest.mark.skipif(
    torch.bfloat16 not in cpu_native_dtypes(),
    reason="this CPU has no native bf16 (avx512_bf16/amx_bf16): torch would emulate it",
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Where fp16 is emulated the fine-tuner says so once; that is not what these tests check.
fp16_anywhere = pytest.mark.filterwarnings("ignore:precision=.fp16.:UserWarning")


@pytest.fixture(scope="module")
def data():
    return colour_images(4, seed=0)


class TrainingDtypes(Callback):
    """Dtypes in training: of the last stage's conv output, the head's layer input and output."""

    def on_train_begin(self, net, **kwargs):
        self.stage, self.head_in, self.head_out = set(), set(), set()
        self.handles = [
            net.module_.stages[-1][0].register_forward_hook(self.record(self.stage)),
            net.module_.head[-1].register_forward_hook(self.record(self.head_out, self.head_in)),
        ]

    def on_train_end(self, net, **kwargs):
        for handle in self.handles:
            handle.remove()

    @staticmethod
    def record(outputs, inputs=None):
        def hook(module, args, output):
            if torch.is_grad_enabled():
                outputs.add(output.dtype)
                if inputs is not None:
                    inputs.add(args[0].dtype)

        return hook


def fit_recording(make, X, y, **params):
    """Fit ``make(**params)`` and return it with the dtypes its training computed in."""
    dtypes = TrainingDtypes()
    return make(callbacks=[dtypes], **params).fit(X, y), dtypes


def preprocessed(X):
    return torch.stack([TINY(image) for image in X])


class GradientNorm(Callback):
    """The gradients' total norm as callbacks see it, after every step."""

    def initialize(self):
        self.norms = []
        return self

    def on_grad_computed(self, net, named_parameters, **kwargs):
        grads = [p.grad for _, p in named_parameters if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


@needs_native_bf16
class TestBf16TrainingOnCpu:
    def test_trainable_stages_and_head_train_in_bf16(self, data):
        X, y = data
        clf, dtypes = fit_recording(
            make_clf, X, y, freeze=-1, precision="bf16", max_epochs=2, random_state=0
        )
        # Before, only the frozen stages ran in bf16: the trainable ones trained in float32.
        assert dtypes.stage == dtypes.head_out == {torch.bfloat16}
        # Master weights and the optimizer's state stay float32; the loss too.
        assert {p.dtype for p in clf.module_.parameters()} == {torch.float32}
        moments = [s["exp_avg"] for s in clf.optimizer_.state.values()]
        assert moments and {m.dtype for m in moments} == {torch.float32}
        assert np.isfinite(clf.history[:, "train_loss"]).all()
        assert clf.grad_scaler_ is None  # bf16 has float32's range
        assert clf.predict_proba(X).dtype == np.float32

    def test_fp32_trains_in_fp32(self, data):
        _, dtypes = fit_recording(make_clf, *data, freeze=-1, precision="fp32", max_epochs=1)
        assert dtypes.stage == dtypes.head_out == {torch.float32}

    def test_the_regressors_head_stays_float32(self, data):
        X, _ = data
        reg, dtypes = fit_recording(
            make_reg, X, np.linspace(0.0, 1.0, len(X)), freeze=-1, precision="bf16", max_epochs=2
        )
        assert dtypes.stage == {torch.bfloat16}
        assert dtypes.head_in == dtypes.head_out == {torch.float32}
        # Prediction computes as training did: the stage in bf16, the head in float32.
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pooled = reg.module_.eval().forward_frozen(preprocessed(X))
                pooled = reg.module_.pool(reg.module_.trainable_stages(pooled))
            expected = reg.module_.head(pooled.float()).numpy()[:, 0]
        np.testing.assert_allclose(
            reg.predict(X), expected * reg.y_scale_[0] + reg.y_mean_[0], rtol=1e-5, atol=1e-6
        )

    def test_warm_refit_after_set_params_fp32_trains_and_predicts_in_fp32(self, data):
        X, y = data
        clf, dtypes = fit_recording(
            make_clf, X, y, freeze=-1, precision="bf16", warm_start=True, max_epochs=1
        )
        assert dtypes.stage == {torch.bfloat16}
        clf.set_params(precision="fp32").fit(X, y)
        assert len(clf.history) == 2  # the same network, trained further
        assert dtypes.stage == dtypes.head_out == {torch.float32}
        with torch.no_grad():
            expected = torch.softmax(clf.module_.eval()(images=preprocessed(X)), 1).numpy()
        np.testing.assert_allclose(clf.predict_proba(X), expected, atol=1e-6)

    def test_cold_refit_after_set_params_fp32_is_an_fp32_fit(self, data):
        X, y = data
        clf = make_clf(freeze=-1, precision="bf16", max_epochs=2, random_state=0).fit(X, y)
        clf.set_params(precision="fp32").fit(X, y)
        fp32 = make_clf(freeze=-1, precision="fp32", max_epochs=2, random_state=0).fit(X, y)
        assert len(clf.history) == 2
        np.testing.assert_array_equal(clf.history[:, "train_loss"], fp32.history[:, "train_loss"])
        np.testing.assert_array_equal(clf.predict_proba(X), fp32.predict_proba(X))


@fp16_anywhere
class TestFp16LossScaling:
    """GradScaler, on the CPU: fp16 computes the same steps there, only slower."""

    def test_trains_in_fp16_with_a_scaler(self, data):
        clf, dtypes = fit_recording(make_clf, *data, freeze=0, precision="fp16", max_epochs=1)
        assert dtypes.stage == dtypes.head_out == {torch.float16}
        assert isinstance(clf.grad_scaler_, torch.amp.GradScaler)

    def test_callbacks_see_unscaled_gradients(self, data):
        X, y = data
        norms = {}
        for precision in ("fp32", "fp16"):
            recorder = GradientNorm()
            make_clf(
                freeze=0,
                precision=precision,
                max_epochs=1,
                batch_size=len(X),
                dropout=0.0,
                random_state=0,
                callbacks=[recorder],
            ).fit(X, y)
            norms[precision] = recorder.norms[0]
        # Scaled, they would be 65536 times larger (the scaler's initial scale).
        assert norms["fp16"] == pytest.approx(norms["fp32"], rel=0.05)

    def test_an_overflowing_step_is_skipped_and_the_scale_backs_off(self, data):
        X, y = data
        clf = make_clf(freeze=0, precision="fp16", max_epochs=1, batch_size=len(X))
        clf.fit(X, y)
        # A scale that overflows fp16's range (65504) in the backward pass.
        clf.grad_scaler_ = torch.amp.GradScaler("cpu", init_scale=2.0**40)
        before = [p.detach().clone() for p in clf.module_.parameters()]
        clf.partial_fit(X, y)
        after = list(clf.module_.parameters())
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        assert clf.grad_scaler_.get_scale() == 2.0**39
        clf.partial_fit(X, y)  # the backed-off scale is kept: it halves again, not restarts
        assert clf.grad_scaler_.get_scale() == 2.0**38

    def test_the_scale_survives_pickling_warm_start_and_partial_fit(self, data):
        X, y = data
        steps_per_epoch = -(-len(X) // 8)
        clf = make_clf(freeze=0, precision="fp16", max_epochs=1, warm_start=True).fit(X, y)

        def tracker(estimator):
            return estimator.grad_scaler_.state_dict()["_growth_tracker"]

        assert tracker(clf) == steps_per_epoch
        clf = pickle.loads(pickle.dumps(clf))
        assert tracker(clf) == steps_per_epoch
        clf.partial_fit(X, y)
        assert tracker(clf) == 2 * steps_per_epoch
        clf.fit(X, y)
        assert tracker(clf) == 3 * steps_per_epoch
        clf.set_params(warm_start=False).fit(X, y)  # a new network, a new scale
        assert tracker(clf) == steps_per_epoch

    def test_no_scaler_outside_fp16(self, data):
        clf = make_clf(freeze=0, precision="fp32", max_epochs=1).fit(*data)
        assert clf.grad_scaler_ is None


@needs_cuda
class TestCuda:
    @pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
    def test_mixed_precision_fit_on_the_gpu_predicts_on_the_cpu(self, data, precision):
        if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            pytest.skip("this GPU has no native bf16")
        X, y = data
        clf = make_clf(
            make_backbone(), freeze=0, precision=precision, device="cuda", max_epochs=2
        ).fit(X, y)
        assert np.isfinite(clf.history[:, "train_loss"]).all()
        assert (clf.grad_scaler_ is not None) == (clf.module_.precision == torch.float16)
        restored = pickle.loads(pickle.dumps(clf)).set_params(device="cpu", precision="fp32")
        restored.module_.to("cpu")
        np.testing.assert_allclose(restored.predict_proba(X), clf.predict_proba(X), atol=0.05)
