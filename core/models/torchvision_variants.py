"""torchvision networks in the variants quantization papers train from scratch.

- ``alexnet_bn``: torchvision's AlexNet (dropout kept) with a BatchNorm after every convolution and hidden
  fully connected layer, before its ReLU, as in the HWGQ-Net AlexNet (Cai et al., 2017) that EdMIPS builds
  on: quantizers with fixed steps (HWGQ) assume unit-variance, batch-normalised inputs.
- ``googlenet_noaux``, ``inception_v3_noaux``: GoogLeNet / Inception-V3 without the auxiliary classifiers
  and without torchvision's ``transform_input`` (a re-normalisation for ported weights), with
  torchvision's own weight initialisation; a search or counting run sees only the main path.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.errors import ConfigError
from core.models.registry import register_model

_NO_AUX = {"aux_logits": False, "transform_input": False, "init_weights": True}


@register_model()
def alexnet_bn(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision's AlexNet with BatchNorm after each conv and hidden fc (before the ReLU)."""
    import torchvision

    model = torchvision.models.alexnet(weights=None, num_classes=num_classes, **kwargs)
    features: list[nn.Module] = []
    for m in model.features:
        features.append(m)
        if isinstance(m, nn.Conv2d):
            features.append(nn.BatchNorm2d(m.out_channels))
    last = [m for m in model.classifier if isinstance(m, nn.Linear)][-1]
    classifier: list[nn.Module] = []
    for m in model.classifier:
        classifier.append(m)
        if isinstance(m, nn.Linear) and m is not last:
            classifier.append(nn.BatchNorm1d(m.out_features))
    model.features, model.classifier = nn.Sequential(*features), nn.Sequential(*classifier)
    return model


def _no_aux(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("aux_logits") or kwargs.get("transform_input"):
        raise ConfigError(f"{name}_noaux has no auxiliary classifiers and no input transform; drop "
                          f"aux_logits / transform_input (or build {name!r} for torchvision's original)")
    return {**_NO_AUX, **kwargs}


@register_model()
def googlenet_noaux(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision's GoogLeNet without auxiliary classifiers or input transform."""
    import torchvision

    return torchvision.models.googlenet(weights=None, num_classes=num_classes, **_no_aux("googlenet", kwargs))


@register_model(input_size=(3, 299, 299))
def inception_v3_noaux(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision's Inception-V3 without the auxiliary classifier or input transform (299x299 input)."""
    import torchvision

    return torchvision.models.inception_v3(weights=None, num_classes=num_classes,
                                           **_no_aux("inception_v3", kwargs))
