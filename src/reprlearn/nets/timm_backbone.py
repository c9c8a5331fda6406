"""``--backbone timm:NAME``: any timm model as the backbone (the optional extra ``reprlearn[timm]``).

Features are timm's own ``forward_features`` followed by its pooling (``forward_head`` with
``pre_logits=True``; the classifier is removed with ``num_classes=0``), so a model is used as
timm defines it. Nothing is downloaded: the model starts from random weights, and pretrained
weights come from a local file with ``--init-from`` (timm's own key names).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import fail


class TimmBackbone(nn.Module):
    """A timm model; (N, C, H, W) -> (N, feature_dim) pooled features."""

    def __init__(self, name: str, in_channels: int, image_size: int):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise fail(f"--backbone timm:{name} needs timm, which is not installed; "
                       "pip install 'reprlearn[timm]' (or pick a built-in --backbone)") from None
        try:  # a ViT is built for the run's image size; a CNN takes no img_size and adapts by itself
            self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels,
                                           img_size=image_size)
        except TypeError:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        except RuntimeError as e:
            raise fail(f"timm has no model {name!r} ({str(e)[:80]}); see timm.list_models()") from None
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        classifier = cfg.get("classifier") if isinstance(cfg, dict) else None
        # a pretrained file's classifier keys (e.g. head.weight), dropped by --init-from
        self.classifier_prefix = f"{classifier}." if isinstance(classifier, str) else ""
        was = self.model.training
        with torch.no_grad():
            self.feature_dim = int(self.eval()(torch.zeros(2, in_channels, image_size, image_size)).shape[1])
        self.train(was)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return out.flatten(1)


def timm_backbone(name: str, in_channels: int, image_size: int) -> TimmBackbone:
    if not name:
        raise fail("--backbone timm:NAME needs a model name after 'timm:', e.g. timm:resnet18")
    return TimmBackbone(name, in_channels, image_size)
