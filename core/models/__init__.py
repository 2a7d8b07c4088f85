"""Models the papers need that torchvision/timm lack, and one ``build_model`` for every name.

Core names: ``resnet20``, ``resnet32``, ``resnet56`` (CIFAR, option-A shortcuts), ``digits_resnet``,
``edmips_resnet18``, ``edmips_resnet50`` (EdMIPS's official variant), ``mobilenet_v1``, ``alexnet_bn``,
``googlenet_noaux``, ``inception_v3_noaux`` (torchvision variants).
Any other name goes to torchvision, then timm; nothing is ever downloaded.
"""

# Importing the model modules registers their factories.
from core.models.cifar_resnet import CifarResNet, PadShortcut, digits_resnet, resnet20, resnet32, resnet56
from core.models.edmips_resnet import EdMIPSResNet, edmips_resnet18, edmips_resnet50
from core.models.mobilenet_v1 import MobileNetV1, mobilenet_v1
from core.models.registry import MODELS, build_model, list_models, load_pretrained, register_model
from core.models.torchvision_variants import alexnet_bn, googlenet_noaux, inception_v3_noaux

__all__ = [
    "MODELS", "build_model", "list_models", "load_pretrained", "register_model",
    "CifarResNet", "PadShortcut", "resnet20", "resnet32", "resnet56", "digits_resnet",
    "EdMIPSResNet", "edmips_resnet18", "edmips_resnet50", "MobileNetV1", "mobilenet_v1",
    "alexnet_bn", "googlenet_noaux", "inception_v3_noaux",
]
