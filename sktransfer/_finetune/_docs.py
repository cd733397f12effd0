"""The fine-tuners' shared documentation, written once and composed into each docstring.

As skorch composes ``NeuralNet``'s parameter docs into its classifier's and
regressor's, :func:`compose_doc` fills a fine-tuner's ``{parameters}`` with
one entry per argument of its ``__init__``, in signature order: the class's
own entry where it gives one, else the shared one below; ``{attributes}``
gets the shared fitted attributes.
"""

from __future__ import annotations

import inspect

SHARED_PARAMETERS = {
    "backbone": """\
backbone : str or torch.nn.Module, default="efficientnet_lite0"
    A name from :func:`sktransfer.list_backbones`, or a module mapping
    (N, 3, S, S) to (N, D) or (N, C, h, w); an ``nn.Sequential``'s
    children are its stages. The module is copied, never changed.""",
    "weights": """\
weights : "default", None or path, default="default"
    ``"default"``: the registry's pretrained weights; ``None``: random
    initialisation (a baseline, seeded by ``random_state``); a path: a
    state dict file.""",
    "preprocessing": """\
preprocessing : Preprocessing, default=None
    Overrides the preprocessing that belongs to the weights; for a
    module backbone, defaults to ImageNet's (224 px).""",
    "head": """\
head : "linear" or tuple of int, default="linear"
    The new head, which fine-tuning adds on the backbone's features: a
    linear layer, or the hidden widths of a small MLP with ReLU. (Not the
    stage that timm names ``head`` in EfficientNets, their final
    convolution, which ``freeze`` counts like any stage.)""",
    "dropout": """\
dropout : float, default=0.2
    Dropout on the input of every linear layer of the new head.""",
    "freeze": """\
freeze : "backbone" or int, default="backbone"
    ``"backbone"``: only the new head trains. An int k >= 0: the first k
    stages are frozen (0 trains everything). A negative int -k: all but
    the last k stages are frozen. ``stages_`` lists the stages.""",
    "warmup_epochs": """\
warmup_epochs : int, default=0
    Probe, then tune: first train only the new head for this many epochs,
    with the whole backbone frozen (on cached features, so nearly
    free), then train the stages ``freeze`` leaves trainable with it for
    ``max_epochs``. A new head trained jointly with pretrained stages
    sends large, random gradients into them; a head that already fits
    does not (Kumar et al., ICLR 2022; fastai's ``fine_tune``). No
    effect with ``freeze="backbone"`` or with ``warm_start`` fits that
    continue training.""",
    "backbone_lr_scale": """\
backbone_lr_scale : float, default=0.1
    Learning rate of the trainable backbone stages relative to ``lr``,
    the new head's; pretrained weights need smaller steps than a new head.
    The scale holds however the rate is set: ``lr`` or ``optimizer__lr``,
    before or after ``fit`` (then for ``warm_start`` fits and
    ``partial_fit``).""",
    "augment": """\
augment : bool, default=False
    Train on random resized crops and horizontal flips (torchvision v2),
    sized from the preprocessing. The frozen stages then run on every
    batch of training; ``predict`` still uses the store.""",
    "decode": """\
decode : {"fast", "full"}, default="fast"
    How image files are decoded, as :class:`PretrainedFeaturizer` does:
    ``"fast"`` decodes large files at a reduced scale (JPEG's DCT scaling)
    that keeps features within cosine 0.999 of the full decode;
    ``"full"`` decodes every pixel, the exact reference pipeline. Either
    way each image is decoded once per ``fit``, ``partial_fit`` or
    ``predict`` and kept, resized as the evaluation transform resizes it
    (``resize_size`` on the shorter side), for every epoch, warm-up and
    test-time view; files keep it in the store ``cache``, so later fits
    and the folds of a search decode nothing. Part of the cache key.""",
    "precision": """\
precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
    Compute precision, as the featurizer's: ``"auto"`` is bf16 (or fp16)
    autocast on CUDA and fp32 on CPU. Every stage computes in it, frozen
    or trained, in ``fit`` as in prediction (mixed precision: weights,
    gradients, the optimizer's state and the loss stay float32); fp16
    training scales the loss with a ``torch.amp.GradScaler``, kept in
    ``grad_scaler_`` across ``warm_start`` fits, ``partial_fit`` and
    pickling. Set after ``fit``, it applies from the next ``predict`` or
    ``fit``; a pickled ``"auto"`` model computes in what ``"auto"`` means
    where it is loaded (fp32 on a CPU).""",
    "engine": """\
engine : {"torch", "onnxruntime"}, default="torch"
    What computes the frozen stages' outputs when they are computed once
    (``cache_frozen``, no ``augment``), for ``fit`` and prediction:
    ``"onnxruntime"`` exports them to ONNX once per process and runs them
    with ONNX Runtime, as :class:`PretrainedFeaturizer` does (fp32 only;
    ``pip install "sktransfer[onnx]"``). Training always runs in torch.""",
    "cache": """\
cache : "memory", str, os.PathLike or None, default="memory"
    Feature store for the frozen stages' outputs: ``"memory"``, the
    process-wide LRU (bounded in bytes) that the featurizer uses; a
    directory, a SQLite store shared by processes and later sessions;
    None, nothing stored across fits. Outputs larger than
    ``FROZEN_STORE_MAX_ROW_BYTES`` per image (early stages at full
    resolution) are not stored; a randomly initialised registry backbone
    is cached only when an int ``random_state`` seeds it.""",
    "cache_frozen": """\
cache_frozen : bool, default=True
    Run the frozen stages once per image rather than on every batch:
    from the store, else once per ``fit`` (held in memory up to
    ``FROZEN_CACHE_LIMIT_BYTES``). ``False`` runs them on every batch.""",
    "random_state": """\
random_state : int, RandomState instance or None, default=None
    Seeds everything random in ``fit``: head initialisation, dropout,
    shuffling, augmentation and a randomly initialised backbone, so two
    fits give identical models and a search gives the same result with
    any ``n_jobs``. torch's global random state is restored afterwards.
    None draws from torch's global generator.""",
    "progress": """\
progress : bool, default=True
    Show progress bars (frozen-stage pass, epochs, prediction) when the
    output is a terminal or a notebook; they clear themselves when done.""",
    "optimizer": """\
optimizer : torch optimizer class, default=torch.optim.AdamW
    Its parameters are set with the ``optimizer__`` prefix, e.g.
    ``optimizer__weight_decay=0.05``.""",
    "lr": """\
lr : float, default=1e-3
    Learning rate of the head.""",
    "max_epochs": """\
max_epochs : int, default=10
    Number of epochs (after ``warmup_epochs``).""",
    "batch_size": """\
batch_size : int, default=16
    Images per step; moderate batches are fastest on CPU.""",
    "callbacks": """\
callbacks : list or None, default=None
    skorch callbacks: ``EarlyStopping``, ``Checkpoint``,
    ``LRScheduler``, ``Freezer``, ...""",
    "warm_start": """\
warm_start : bool, default=False
    Continue training the current network on the next ``fit``, unless a
    parameter it is built from changed (``backbone``, ``weights``,
    ``preprocessing``, ``head``, ``dropout``, ``freeze``): then it is
    built afresh.""",
    "verbose": """\
verbose : int, default=0
    1 prints skorch's table of losses per epoch.""",
    "device": """\
device : str or torch.device, default="auto"
    ``"auto"`` picks CUDA, then MPS, then CPU.""",
    "kwargs": """\
**kwargs
    Any other :class:`skorch.NeuralNet` argument (``iterator_train__*``,
    ``criterion__*``, ``predict_nonlinearity``, ``compile``, ...).
    ``iterator_train__shuffle`` defaults to True.""",
}

SHARED_ATTRIBUTES = """\
spec_ : BackboneSpec
    The resolved backbone: preprocessing, feature dimension, stages.
stages_ : tuple of str
    The backbone's stages, input to output; an int ``freeze`` counts these.
frozen_stages_ : tuple of str
    The stages frozen by ``freeze``.
module_ : FineTuneNetwork
    The network: ``stages`` (the backbone's) and ``head``.
history_ : skorch.History
    Losses and scores per epoch and batch; the first ``warmup_epochs``
    rows are the head-only epochs.
grad_scaler_ : torch.amp.GradScaler or None
    The loss scale of fp16 training, carried on by later fits of the same
    network; None until the network trains in fp16."""


def compose_doc(**own_parameters):
    """Class decorator: fill the docstring's ``{parameters}`` and ``{attributes}``.

    Parameters
    ----------
    **own_parameters : str
        The class's own entries (``"name : type\\n    text"``) by argument
        name; they replace the shared entry of the same name.
    """

    def decorate(cls):
        entries = []
        for name in inspect.signature(cls.__init__).parameters:
            if name != "self":
                entries.append(own_parameters.get(name) or SHARED_PARAMETERS[name])
        doc = inspect.cleandoc(cls.__doc__)
        doc = doc.replace("{parameters}", "\n".join(entries))
        cls.__doc__ = doc.replace("{attributes}", SHARED_ATTRIBUTES)
        return cls

    return decorate
