"""Our backbones' weights in other libraries' layouts, and other libraries' weights in ours.

Two backbones have a 1:1 counterpart (same modules, same parameter shapes, same computation),
so their weights move by renaming keys only:

- ``resnet18`` / ``resnet50`` <-> torchvision's ``ResNet`` (``torchvision.models.resnet18/50``):

  ============================  ==================================
  ours                          torchvision
  ============================  ==================================
  ``stem.0.weight``             ``conv1.weight``
  ``stem.1.*``                  ``bn1.*``
  ``stages.I.J.convK/bnK.*``    ``layer{I+1}.J.convK/bnK.*``
  ``stages.I.J.shortcut.0/1.*`` ``layer{I+1}.J.downsample.0/1.*``
  (none: features are pooled)   ``fc.*`` (the ImageNet classifier)
  ============================  ==================================

  Structure: with the ImageNet stem (images > 64 px, or ``cifar_stem=False``) it is torchvision's
  network with ``fc = nn.Identity()``. With the CIFAR stem (images <= 64 px) ``conv1`` is a 3x3
  stride-1 conv and there is no max-pool: build torchvision's model, then set
  ``model.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False)`` and ``model.maxpool = nn.Identity()``.
  Grey images (C = 1) need ``conv1`` with one input channel either way.

- ``vit-tiny`` / ``vit-small`` (and ``vit-micro``, the same class) <-> timm's ``VisionTransformer``:

  ===========================  ===============================
  ours                         timm
  ===========================  ===============================
  ``patch_embed.weight/bias``  ``patch_embed.proj.weight/bias``
  ``blocks.I.mlp.0.*``         ``blocks.I.mlp.fc1.*``
  ``blocks.I.mlp.2.*``         ``blocks.I.mlp.fc2.*``
  everything else              the same name
  ===========================  ===============================

  built as ``timm.models.VisionTransformer(img_size=S, patch_size=P, in_chans=C, embed_dim=D,
  depth=L, num_heads=H, num_classes=0, global_pool="token")`` (qkv bias, LayerNorm eps 1e-6, GELU:
  timm's defaults, which are ours). ``pool=mean`` corresponds to ``global_pool="avg",
  fc_norm=False``. A sin-cos ViT keeps its table as a buffer; the export writes it as timm's
  ``pos_embed`` parameter.

Every other backbone (cnn, mlp, linear, unet, realnvp) has no counterpart in those libraries; a
``timm:NAME`` backbone is timm's own model, whose layout is its keys without our ``model.`` prefix.
"""

from __future__ import annotations

import re
import torch
from torch import Tensor, nn

from ..errors import fail

Rules = list[tuple[str, str]]  # (regex on one side, replacement giving the other side)

_RESNET: Rules = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
                  (r"^stages\.(\d+)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample."),
                  (r"^stages\.(\d+)\.", lambda m: f"layer{int(m[1]) + 1}.")]
_RESNET_BACK: Rules = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."),
                       (r"^layer(\d+)\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut."),
                       (r"^layer(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.")]
_VIT: Rules = [(r"^patch_embed\.", "patch_embed.proj."), (r"\.mlp\.0\.", ".mlp.fc1."), (r"\.mlp\.2\.", ".mlp.fc2.")]
_VIT_BACK: Rules = [(r"^patch_embed\.proj\.", "patch_embed."), (r"\.mlp\.fc1\.", ".mlp.0."),
                    (r"\.mlp\.fc2\.", ".mlp.2.")]
_TIMM: Rules = [(r"^model\.", "")]
_TIMM_BACK: Rules = [(r"^", "model.")]

# backbone -> (library, our key -> theirs, theirs -> ours, their classifier's key prefix)
LAYOUTS: dict[str, tuple[str, Rules, Rules, str]] = {
    "resnet18": ("torchvision", _RESNET, _RESNET_BACK, "fc."),
    "resnet50": ("torchvision", _RESNET, _RESNET_BACK, "fc."),
    "vit-tiny": ("timm", _VIT, _VIT_BACK, "head."),
    "vit-small": ("timm", _VIT, _VIT_BACK, "head."),
    "vit-micro": ("timm", _VIT, _VIT_BACK, "head."),
}


def _apply(rules: Rules, key: str) -> str:
    for pattern, repl in rules:
        new = re.sub(pattern, repl, key, count=1)
        if new != key:
            return new
    return key


def layout_of(name: str) -> str | None:
    """The library whose layout backbone ``name`` maps to (torchvision, timm), or None."""
    if name.startswith("timm:"):
        return "timm"
    return LAYOUTS[name][0] if name in LAYOUTS else None


def _rules(name: str, backbone: nn.Module | None = None) -> tuple[Rules, Rules, str]:
    if name.startswith("timm:"):  # the classifier of a pretrained file, which ours (num_classes=0) lacks
        return _TIMM, _TIMM_BACK, getattr(backbone, "classifier_prefix", "")
    _, out, back, head = LAYOUTS[name]
    return out, back, head


def key_mapping(name: str, backbone: nn.Module) -> dict[str, str]:
    """{our key: the reference library's key} for every tensor of ``backbone`` (its state dict,
    plus a sin-cos ViT's positional table)."""
    out, _, _ = _rules(name)
    return {k: _apply(out, k) for k in reference_tensors(backbone)}


def reference_tensors(backbone: nn.Module) -> dict[str, Tensor]:
    """Our tensors by our names: the state dict, plus a fixed positional table timm keeps as a parameter."""
    state = dict(backbone.state_dict())
    pos = getattr(backbone, "pos_embed", None)
    if isinstance(pos, Tensor) and "pos_embed" not in state:
        state["pos_embed"] = pos
    return state


def to_reference(name: str, backbone: nn.Module) -> dict[str, Tensor]:
    """``backbone``'s weights under the reference library's names (torchvision or timm layout)."""
    if layout_of(name) is None:
        raise fail(f"backbone {name} has no timm/torchvision counterpart; the formats it supports are "
                   "reprlearn's safetensors, TorchScript and ONNX")
    mapping = key_mapping(name, backbone)
    return {mapping[k]: v for k, v in reference_tensors(backbone).items()}


def from_file_layout(name: str, backbone: nn.Module,
                     state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(``state`` under our names, {our name: the file's name}): as it is when its keys are ours, else
    renamed from the reference layout (its classifier dropped). Keys that fit neither are kept, for
    the strict check to name."""
    ours = set(backbone.state_dict())
    if set(state) <= ours or layout_of(name) is None:
        return dict(state), {}
    _, back, head = _rules(name, backbone)
    names = {_apply(back, k): k for k in state if not (head and k.startswith(head))}
    renamed = {ours_key: state[file_key] for ours_key, file_key in names.items()}
    fixed = getattr(backbone, "pos_embed", None)
    if "pos_embed" in renamed and "pos_embed" not in ours and isinstance(fixed, Tensor):
        raise fail("the file has learned positional embeddings (pos_embed) but this ViT uses a fixed sin-cos "
                   "table; initialise a ViT built with learned positions")
    return renamed, names


def load_strict(backbone: nn.Module, state: dict[str, Tensor], where: str,
                file_names: dict[str, str] | None = None) -> None:
    """Copy ``state`` (our names) into ``backbone``; the first missing, unexpected or differently shaped
    key fails in one line, named as the file names it (``file_names``: ours -> the file's)."""
    ours = backbone.state_dict()
    named = (lambda k: f"{file_names[k]!r} (here {k!r})" if file_names and k in file_names else repr(k))
    state = dict(state)
    for key, value in ours.items():
        if key not in state and key.endswith("num_batches_tracked"):
            # a BatchNorm's step counter, not a weight: files saved before PyTorch 0.4.1 (torchvision's first
            # ResNet weights among them) lack it, and it only matters to BatchNorm with momentum None
            state[key] = value.clone()
        if key not in state:
            raise fail(f"{where} has no weight for {named(key)} {tuple(value.shape)}; it was saved from another "
                       "architecture (give a file of the same backbone)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise fail(f"{where}: {named(key)} is {tuple(state[key].shape)} in the file but {tuple(value.shape)} "
                       "here; the file is for another architecture or input (channels, image size, patch size)")
    extra = [k for k in state if k not in ours]
    if extra:
        raise fail(f"{where} has a weight this backbone does not: {named(extra[0])} (and {len(extra) - 1} more); "
                   "it was saved from another architecture")
    backbone.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)


def read_state_file(path) -> tuple[dict[str, Tensor], dict]:
    """(tensors, reprlearn metadata or {}) of a safetensors file or a PyTorch state dict.

    A PyTorch file may hold the dict itself, or it under ``state_dict`` / ``model``; a reprlearn
    checkpoint (``last.ckpt``) gives its encoder's backbone. Loaded without running code.
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise fail(f"--init-from {path}: no such file; give a .safetensors or a PyTorch state-dict file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("reprlearn", "{}"))
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # noqa: BLE001 - a corrupt header or body means the same to the user
            raise fail(f"{path} is not a readable safetensors file ({type(e).__name__}: {str(e)[:80]})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise fail(f"{path} cannot be loaded safely as a PyTorch state dict "
                   f"({type(e).__name__}: {str(e)[:80]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
        prefix = "method.encoder.backbone."  # a reprlearn checkpoint: its encoder's backbone
        if any(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise fail(f"{path} holds no state dict (a mapping of names to tensors)")
    return obj, {}


def init_backbone(name: str, backbone: nn.Module, path) -> None:
    """``--init-from PATH``: set ``backbone``'s weights from a reprlearn export, a reprlearn checkpoint,
    or a torchvision/timm-layout file (see the module docstring), strictly."""
    state, meta = read_state_file(path)
    saved = meta.get("backbone")
    if saved and saved != name:
        raise fail(f"--init-from {path} holds a {saved} backbone, not {name}; give --backbone {saved} or another file")
    renamed, names = from_file_layout(name, backbone, state)
    load_strict(backbone, renamed, f"--init-from {path}", names)

