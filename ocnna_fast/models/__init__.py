"""Model definitions whose pretrained weights ship as local files (no downloads)."""
from .cifar_resnet import CifarResNet, cifar_resnet, load_akamaster_checkpoint

__all__ = ["CifarResNet", "cifar_resnet", "load_akamaster_checkpoint"]
