"""The names of the built-in datasets and models with their one-line help, as plain data (no torch): the
command line's parser reads them from here, and :mod:`valleys.zoo.data`, :mod:`valleys.zoo.regression` and
:mod:`valleys.zoo.models` re-export them."""

from __future__ import annotations

__all__ = ["DATASETS", "REGRESSION_DATASETS", "MODELS", "INPUT_KINDS", "MODEL_INPUTS"]

#: Classification datasets of :func:`valleys.zoo.data.load_dataset`.
DATASETS: dict[str, str] = {
    "mnist1d": "MNIST-1D signals, 10 classes, generated offline (default)",
    "digits": "scikit-learn 8x8 digits, 10 classes",
    "fashion-mnist": "Fashion-MNIST 28x28, 10 classes (Debian package dataset-fashion-mnist or torchvision files)",
    "fashion-mnist-14": "Fashion-MNIST downsampled to 14x14 (2x2 averages; 4x fewer pixels, for CNNs on CPUs)",
}

#: Regression datasets of :func:`valleys.zoo.regression.load_regression`.
REGRESSION_DATASETS: dict[str, str] = {
    "diabetes": "scikit-learn diabetes regression (442 x 10), 90/10 split",
    "concrete": "UCI concrete compressive strength (1030 x 8, Yeh 1998), bundled, 90/10 split",
    "boston": "Boston housing (506 x 13, Harrison & Rubinfeld 1978), bundled, 90/10 split",
    "toy1d": "1-D toy with a gap: inputs in [-1, -0.7] and [0.35, 1], a smooth curve plus noise (slide 32)",
    "uci": "a folder in the UCI layout given with --data-root (data.txt and index files), split --uci-split",
}

#: Reference architectures of :func:`valleys.zoo.models.build_model`.
MODELS: dict[str, str] = {
    "mlp": "fully connected ReLU net, any input",
    "cnn1d": "1-D CNN for signals (mnist1d)",
    "cnn": "small CNN with BatchNorm, images",
    "convlarge": "the 13-layer CNN of the semi-supervised papers (ConvLarge) with BatchNorm, images of 12x12 or more",
    "preresnet": "small pre-activation ResNet with BatchNorm, images",
    "vgg": "VGG-style net without BatchNorm, with Dropout, images",
}

#: What each classification dataset feeds a model, and what each model needs ("any": flattens its input),
#: so a mismatch is refused when the settings are checked, before any data is loaded.
INPUT_KINDS: dict[str, str] = {
    "mnist1d": "1-D signals",
    "digits": "images",
    "fashion-mnist": "images",
    "fashion-mnist-14": "images",
}
MODEL_INPUTS: dict[str, str] = {
    "mlp": "any",
    "cnn1d": "1-D signals",
    "cnn": "images",
    "convlarge": "images",
    "preresnet": "images",
    "vgg": "images",
}
