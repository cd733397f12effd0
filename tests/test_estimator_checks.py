"""scikit-learn's estimator checks, run on the fine-tuners.

Images are not 2-D tabular data, so ``parametrize_with_checks`` skips these
estimators as a whole (they lack the ``two_d_array`` input tag). Every check
scikit-learn runs on a classifier or a regressor is listed here by name instead.
Those that apply to image input pass. The others are strict xfails narrowed to
the exception they raise, each with its reason: most feed a 2-D tabular X, which
the fine-tuners refuse with a ValueError naming its shape.
Left out: the array API checks, which scikit-learn skips unless SCIPY_ARRAY_API
is set (they would feed tabular X too).
"""

import warnings

import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks

from sktransfer import FineTuneClassifier, FineTuneRegressor, InvalidImageError

from .conftest import TINY_PREPROCESSING, make_tiny_backbone

_TABULAR = "feeds a 2-D tabular X, refused as not a collection of images"
_MESSAGE = "asserts on the words of tabular X's error: " + _TABULAR

# Checks that pass, and the failures that hold for both fine-tuners.
COMMON_CHECKS = {
    # the data-free API
    "check_estimator_cloneable": None,
    "check_estimator_tags_renamed": None,
    "check_valid_tag_types": None,
    "check_estimator_repr": None,
    "check_mixin_order": None,
    "check_parameters_default_constructible": None,
    "check_get_params_invariance": None,
    "check_set_params": None,
    "check_param_validation": None,
    "check_do_not_raise_errors_in_init_or_set_params": None,
    "check_no_attributes_set_in_init": (
        AssertionError,
        "skorch's NeuralNet.__init__ sets history_, initialized_ and virtual_params_",
    ),
    # unfitted, or checks that stop before X is used
    "check_estimators_unfitted": None,
    "check_n_features_in_after_fitting": None,
    "check_non_transformer_estimators_n_iter": None,
    "check_supervised_y_no_nan": None,
    "check_fit1d": None,
    # checks on tabular X
    "check_fit_score_takes_y": (ValueError, _TABULAR),
    "check_estimators_overwrite_params": (ValueError, _TABULAR),
    "check_dont_overwrite_parameters": (ValueError, _TABULAR),
    "check_estimators_fit_returns_self": (ValueError, _TABULAR),
    "check_readonly_memmap_input": (ValueError, _TABULAR),
    "check_estimators_dtypes": (ValueError, _TABULAR),
    "check_pipeline_consistency": (ValueError, _TABULAR),
    "check_estimators_pickle": (ValueError, _TABULAR + " (pickling is tested with images)"),
    "check_f_contiguous_array_estimator": (ValueError, _TABULAR),
    "check_estimators_partial_fit_n_features": (ValueError, _TABULAR),
    "check_supervised_y_2d": (ValueError, _TABULAR),
    "check_methods_sample_order_invariance": (ValueError, _TABULAR),
    "check_methods_subset_invariance": (ValueError, _TABULAR),
    "check_dict_unchanged": (ValueError, _TABULAR),
    "check_fit_idempotent": (ValueError, _TABULAR),
    "check_fit_check_is_fitted": (ValueError, _TABULAR),
    "check_n_features_in": (ValueError, _TABULAR),
    "check_fit2d_predict1d": (ValueError, _TABULAR),
    "check_dtype_object": (InvalidImageError, "feeds an object array of tabular rows"),
    "check_requires_y_none": (
        ValueError,
        "raises its own ValueError: the error for y=None is not in the words it expects, "
        "because X is tabular",
    ),
    "check_positive_only_tag_during_fit": (AssertionError, _MESSAGE),
    "check_estimators_empty_data_messages": (AssertionError, _MESSAGE),
    "check_estimators_nan_inf": (AssertionError, _MESSAGE),
    "check_estimator_sparse_tag": (AssertionError, "feeds a sparse matrix: " + _MESSAGE),
    "check_estimator_sparse_array": (AssertionError, "feeds a sparse array: " + _MESSAGE),
    "check_estimator_sparse_matrix": (AssertionError, "feeds a sparse matrix: " + _MESSAGE),
    "check_fit2d_1feature": (AssertionError, _MESSAGE),
}

CLASSIFIER_CHECKS = {
    "check_complex_data": None,
    "check_classifiers_one_label": None,
    "check_classifiers_regression_target": None,
    "check_decision_proba_consistency": None,
    "check_classifier_data_not_an_array": (ValueError, "feeds a wrapped tabular X"),
    "check_classifiers_classes": (ValueError, _TABULAR),
    "check_classifiers_train": (ValueError, _TABULAR),
    "check_classifiers_multilabel_representation_invariance": (ValueError, _TABULAR),
    "check_classifiers_multilabel_output_format_predict": (ValueError, _TABULAR),
    "check_classifiers_multilabel_output_format_predict_proba": (ValueError, _TABULAR),
    "check_classifiers_multilabel_output_format_decision_function": (ValueError, _TABULAR),
    "check_class_weight_classifiers": (ValueError, _TABULAR),
    "check_classifiers_one_label_sample_weights": (AssertionError, _MESSAGE),
    "check_fit2d_1sample": (
        AssertionError,
        "fits one sample: y's single class is refused first, in words the check does not expect",
    ),
}


REGRESSOR_CHECKS = {
    "check_complex_data": None,
    "check_regressor_data_not_an_array": (ValueError, _TABULAR),
    "check_regressors_train": (ValueError, _TABULAR),
    "check_regressor_multioutput": (ValueError, _TABULAR),
    "check_regressors_no_decision_function": (ValueError, _TABULAR),
    "check_regressors_int": (ValueError, _TABULAR),
    "check_fit2d_1sample": (AssertionError, _MESSAGE),
}


def _tiny(estimator):
    def make():
        return estimator(
            make_tiny_backbone(),
            preprocessing=TINY_PREPROCESSING,
            max_epochs=1,
            batch_size=8,
            cache=None,
            progress=False,
        )

    return make


ESTIMATORS = {
    "FineTuneClassifier": (_tiny(FineTuneClassifier), CLASSIFIER_CHECKS),
    "FineTuneRegressor": (_tiny(FineTuneRegressor), REGRESSOR_CHECKS),
}


def _cases():
    for estimator, (_, own_checks) in ESTIMATORS.items():
        for check, failure in {**COMMON_CHECKS, **own_checks}.items():
            marks = ()
            if failure is not None:
                exception, reason = failure
                marks = pytest.mark.xfail(raises=exception, reason=reason, strict=True)
            yield pytest.param(estimator, check, marks=marks, id=f"{estimator}-{check}")


@pytest.mark.parametrize(("estimator", "check"), list(_cases()))
def test_sklearn_estimator_check(estimator, check):
    make, _ = ESTIMATORS[estimator]
    function = getattr(estimator_checks, check, None)
    if function is None:
        pytest.skip(f"{check} is not in this scikit-learn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        function(estimator, make())


def test_unfitted_estimators_refuse_images_with_not_fitted_error(small_images):
    # check_estimators_unfitted feeds tabular X; the contract holds for images too.
    for make, _ in ESTIMATORS.values():
        with pytest.raises(NotFittedError):
            make().predict(small_images)
