"""The torchvision/timm key mappings of nets/interop.py, and --init-from.

torchvision and timm cannot be installed beside this torch, so the mapping is checked against
independent references written here from those libraries' sources: the list of key names and
shapes their ResNet / VisionTransformer have (torchvision ``resnet.py``: ``_make_layer`` adds a
``downsample`` to a stage's first block when the stride or the width changes; timm
``vision_transformer.py``: ``PatchEmbed.proj``, ``Block`` = norm1, attn.qkv, attn.proj, norm2,
``Mlp`` fc1/fc2), and a forward pass written from their ``forward`` methods that reads only their
key names. A shape list alone cannot catch two same-shaped tensors swapped; the forward can.
Where the library is installed, its own model loads the file (those tests skip here).
"""

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprlearn.errors import ReprlearnError
from reprlearn.nets import create_backbone
from reprlearn.nets.interop import init_backbone, key_mapping, to_reference


def bn(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}


def torchvision_resnet(bottleneck: bool, layers, in_ch=3, cifar_stem=False):
    """torchvision's ResNet state-dict names and shapes, without ``fc`` (our export drops the classifier)."""
    exp = 4 if bottleneck else 1
    keys = {"conv1.weight": (64, in_ch, 3, 3) if cifar_stem else (64, in_ch, 7, 7), **bn("bn1", 64)}
    inplanes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            p = f"layer{i + 1}.{j}."
            if bottleneck:
                keys.update({p + "conv1.weight": (planes, inplanes, 1, 1), **bn(p + "bn1", planes),
                             p + "conv2.weight": (planes, planes, 3, 3), **bn(p + "bn2", planes),
                             p + "conv3.weight": (planes * 4, planes, 1, 1), **bn(p + "bn3", planes * 4)})
            else:
                keys.update({p + "conv1.weight": (planes, inplanes, 3, 3), **bn(p + "bn1", planes),
                             p + "conv2.weight": (planes, planes, 3, 3), **bn(p + "bn2", planes)})
            if stride != 1 or inplanes != planes * exp:
                keys.update({p + "downsample.0.weight": (planes * exp, inplanes, 1, 1),
                             **bn(p + "downsample.1", planes * exp)})
            inplanes = planes * exp
    return keys


def timm_vit(dim, depth, in_ch, image_size, patch):
    """timm's VisionTransformer (class token, num_classes=0) state-dict names and shapes."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + (image_size // patch) ** 2, dim),
            "patch_embed.proj.weight": (dim, in_ch, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}."
        keys.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,), p + "attn.qkv.weight": (3 * dim, dim),
                     p + "attn.qkv.bias": (3 * dim,), p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                     p + "norm2.weight": (dim,), p + "norm2.bias": (dim,), p + "mlp.fc1.weight": (4 * dim, dim),
                     p + "mlp.fc1.bias": (4 * dim,), p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)})
    return {**keys, "norm.weight": (dim,), "norm.bias": (dim,)}


CASES = [("resnet18", 224, 3, torchvision_resnet(False, (2, 2, 2, 2))),
         ("resnet18", 32, 1, torchvision_resnet(False, (2, 2, 2, 2), in_ch=1, cifar_stem=True)),
         ("resnet50", 224, 3, torchvision_resnet(True, (3, 4, 6, 3))),
         ("vit-tiny", 224, 3, timm_vit(192, 12, 3, 224, 16)),
         ("vit-small", 224, 3, timm_vit(384, 12, 3, 224, 16)),
         ("vit-small", 32, 1, timm_vit(384, 12, 1, 32, 4))]


@pytest.mark.parametrize("name,size,channels,reference", CASES, ids=[f"{c[0]}-{c[1]}px-{c[2]}ch" for c in CASES])
def test_exported_names_and_shapes_are_the_reference_librarys(name, size, channels, reference):
    backbone = create_backbone(name, in_channels=channels, image_size=size)
    exported = {k: tuple(v.shape) for k, v in to_reference(name, backbone).items()}
    assert sorted(set(exported) ^ set(reference))[:5] == []
    assert exported == reference


def torchvision_resnet_forward(sd, x, cifar_stem):
    """torchvision's BasicBlock ResNet forward, reading only torchvision's key names (eval-mode BN)."""
    def norm(name, h):
        return F.batch_norm(h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    h = F.conv2d(x, sd["conv1.weight"], stride=1 if cifar_stem else 2, padding=1 if cifar_stem else 3)
    h = F.relu(norm("bn1", h))
    if not cifar_stem:
        h = F.max_pool2d(h, 3, 2, 1)
    for i in range(1, 5):
        j = 0
        while f"layer{i}.{j}.conv1.weight" in sd:
            p, stride = f"layer{i}.{j}.", 2 if i > 1 and j == 0 else 1
            out = F.relu(norm(p + "bn1", F.conv2d(h, sd[p + "conv1.weight"], stride=stride, padding=1)))
            out = norm(p + "bn2", F.conv2d(out, sd[p + "conv2.weight"], padding=1))
            short = norm(p + "downsample.1", F.conv2d(h, sd[p + "downsample.0.weight"], stride=stride)) \
                if p + "downsample.0.weight" in sd else h
            h, j = F.relu(out + short), j + 1
    return h.mean(dim=(2, 3))


def timm_vit_forward(sd, x, heads, patch):
    """timm's VisionTransformer forward (global_pool='token'), reading only timm's key names."""
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
    n, length, dim = t.shape
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}."
        h = F.layer_norm(t, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(
            n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(dim // heads)).softmax(-1) @ v
        att = att.transpose(1, 2).reshape(n, length, dim)
        t = t + F.linear(att, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"],
                     sd[p + "mlp.fc2.bias"])
        t, i = t + h, i + 1
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], 1e-6)[:, 0]


def randomise(module):
    """Non-trivial BN statistics and affine terms, so a swapped BN would show."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


@pytest.mark.parametrize("size,cifar", [(32, True), (80, False)])
def test_resnet18_in_torchvision_layout_computes_our_features(size, cifar):
    backbone = randomise(create_backbone("resnet18", in_channels=3, image_size=size))
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        ref = torchvision_resnet_forward(to_reference("resnet18", backbone), x, cifar)
        assert torch.allclose(backbone(x), ref, atol=1e-4, rtol=1e-4)


def test_vit_in_timm_layout_computes_our_features():
    backbone = create_backbone("vit-tiny", in_channels=3, image_size=32).eval()  # patch 4, 8x8 grid
    for p in backbone.parameters():  # biases and norms off their zero/one init, so a swap would show
        p.data.add_(torch.randn_like(p) * 0.02)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = timm_vit_forward(to_reference("vit-tiny", backbone), x, heads=3, patch=4)
        assert torch.allclose(backbone(x), ref, atol=1e-4, rtol=1e-4)


def test_backbones_without_a_counterpart_say_so():
    with pytest.raises(ReprlearnError, match="no timm/torchvision counterpart"):
        to_reference("cnn", create_backbone("cnn", in_channels=1, image_size=8))


def test_torchvision_loads_the_exported_resnet():
    tv = pytest.importorskip("torchvision", reason="torchvision is not installed here; the layout is checked above")
    ours = randomise(create_backbone("resnet18", in_channels=3, image_size=96))  # ImageNet stem
    model = tv.models.resnet18()
    model.fc = nn.Identity()
    model.load_state_dict(to_reference("resnet18", ours), strict=True)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), ours(x), atol=1e-4)


def test_timm_loads_the_exported_vit():
    timm = pytest.importorskip("timm", reason="timm is not installed here; the layout is checked above")
    ours = create_backbone("vit-tiny", in_channels=3, image_size=32).eval()
    model = timm.models.VisionTransformer(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=12,
                                          num_heads=3, num_classes=0, global_pool="token")
    model.load_state_dict(to_reference("vit-tiny", ours), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), ours(x), atol=1e-4)


# ---------------------------------------------------------------- --init-from


def test_init_from_a_reference_layout_file_sets_every_weight(tmp_path):
    from safetensors.torch import save_file

    source = randomise(create_backbone("resnet18", in_channels=1, image_size=32))
    ref = to_reference("resnet18", source)
    ref["fc.weight"], ref["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # a classifier is dropped
    save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp_path / "tv.safetensors"))
    torch.save(ref, tmp_path / "tv.pth")
    for path in (tmp_path / "tv.safetensors", tmp_path / "tv.pth"):
        target = create_backbone("resnet18", in_channels=1, image_size=32)
        init_backbone("resnet18", target, path)
        for k, v in source.state_dict().items():
            assert torch.equal(target.state_dict()[k], v), k


def test_init_from_a_file_without_batchnorm_step_counters(tmp_path):
    """Files saved before PyTorch 0.4.1 (torchvision's first ResNet weights) have no
    num_batches_tracked: a counter, not a weight, so the load takes every weight and keeps 0."""
    source = randomise(create_backbone("resnet18", in_channels=3, image_size=32))
    ref = {k: v for k, v in to_reference("resnet18", source).items() if not k.endswith("num_batches_tracked")}
    torch.save(ref, tmp_path / "old.pth")
    target = create_backbone("resnet18", in_channels=3, image_size=32)
    init_backbone("resnet18", target, tmp_path / "old.pth")
    for k, v in source.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[k], v), k
    ref.pop("layer1.0.bn1.running_var")  # a running statistic is a weight: still refused
    torch.save(ref, tmp_path / "bad.pth")
    with pytest.raises(ReprlearnError, match="running_var"):
        init_backbone("resnet18", create_backbone("resnet18", in_channels=3, image_size=32), tmp_path / "bad.pth")


def test_init_from_a_mismatching_file_fails_in_one_line_naming_the_key(tmp_path):
    ref = to_reference("resnet18", create_backbone("resnet18", in_channels=3, image_size=32))
    ref["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(ref, tmp_path / "bad.pth")
    with pytest.raises(ReprlearnError) as e:
        init_backbone("resnet18", create_backbone("resnet18", in_channels=3, image_size=32), tmp_path / "bad.pth")
    assert "\n" not in str(e.value) and "'layer2.0.conv1.weight'" in str(e.value) and "(128, 64, 5, 5)" in str(e.value)
    # a file of another architecture: the first key it lacks
    torch.save(create_backbone("cnn", in_channels=3, image_size=32).state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(ReprlearnError, match=r"has no weight for .*stem\.0\.weight"):
        init_backbone("resnet18", create_backbone("resnet18", in_channels=3, image_size=32), tmp_path / "cnn.pth")


def test_cli_train_with_a_mismatching_init_file_is_one_line(tmp_path, capsys):
    from reprlearn.cli import main

    torch.save({"net.0.0.weight": torch.zeros(3, 3)}, tmp_path / "w.pth")
    code = main(["train", "simclr", "--init-from", str(tmp_path / "w.pth"), "--out", str(tmp_path / "r"),
                 "--epochs", "1", "--no-eval", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'net.0.0.weight'" in err[0] and "(3, 3)" in err[0], err


# ---------------------------------------------------------------- timm:NAME


class FakeTimmNet(nn.Module):
    """What the timm backbone relies on: forward_features, forward_head(pre_logits=True), a classifier name."""

    pretrained_cfg = {"classifier": "fc"}

    def __init__(self, in_chans):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 6, 3, padding=1)

    def forward_features(self, x):
        return self.conv(x)

    def forward_head(self, x, pre_logits=False):
        assert pre_logits
        return x.amax(dim=(2, 3))


@pytest.fixture
def fake_timm(monkeypatch):
    module = types.ModuleType("timm")

    def create_model(name, pretrained, num_classes, in_chans, **kw):
        assert not pretrained and num_classes == 0
        if name != "fakenet":
            raise RuntimeError(f"Unknown model ({name})")
        if "img_size" in kw:
            raise TypeError("unexpected keyword img_size")  # a CNN does not take it
        return FakeTimmNet(in_chans)

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)


def test_timm_backbone_pools_forward_features_and_loads_timm_names(fake_timm, tmp_path):
    backbone = create_backbone("timm:fakenet", in_channels=1, image_size=8)
    assert backbone.feature_dim == 6
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(backbone(x), backbone.model.conv(x).amax(dim=(2, 3)))
    state = {"conv.weight": torch.randn(6, 1, 3, 3), "conv.bias": torch.randn(6), "fc.weight": torch.zeros(10, 6)}
    torch.save(state, tmp_path / "timm.pth")  # timm's own names, classifier included
    init_backbone("timm:fakenet", backbone, tmp_path / "timm.pth")
    assert torch.equal(backbone.model.conv.weight, state["conv.weight"])
    with pytest.raises(ReprlearnError, match="timm has no model 'nonet'"):
        create_backbone("timm:nonet", in_channels=1, image_size=8)


def test_timm_backbone_without_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ReprlearnError, match=r"needs timm.*reprlearn\[timm\]"):
        create_backbone("timm:resnet18", in_channels=3, image_size=32)


def test_real_timm_backbone():
    pytest.importorskip("timm", reason="timm is not installed here (the optional extra reprlearn[timm])")
    backbone = create_backbone("timm:resnet18", in_channels=3, image_size=32)
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, backbone.feature_dim)


def test_key_mapping_names_every_tensor_once():
    backbone = create_backbone("vit-small", in_channels=3, image_size=32)
    mapping = key_mapping("vit-small", backbone)
    assert len(set(mapping.values())) == len(mapping) == len(backbone.state_dict())


def test_cli_bad_backbone_is_one_line(tmp_path, capsys):
    from reprlearn.cli import main

    assert main(["train", "simclr", "--backbone", "resnet19", "--out", str(tmp_path / "r"), "--no-eval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'backbone'" in err[0] and "timm:NAME" in err[0], err


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_init_from_reaches_the_encoder_and_every_copy_of_it(method, tmp_path):
    """--init-from is applied before the method is built, so an EMA teacher copies the file's weights."""
    from reprlearn.methods import DataInfo
    from reprlearn.runs import build_method, resolve_config

    cfg, method_cfg = resolve_config(method, {"backbone": "cnn"})
    info = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.5], std=[0.3])
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v
               for k, v in create_backbone("cnn", in_channels=1, image_size=8).state_dict().items()}
    torch.save(weights, tmp_path / "w.pth")
    built = build_method(cfg, method_cfg, info, init_from=str(tmp_path / "w.pth"))
    copies = {k: v for k, v in built.state_dict().items() if k.endswith("backbone.net.0.0.weight")}
    assert len(copies) == (2 if method == "byol" else 1), sorted(copies)
    for value in copies.values():
        assert torch.equal(value, weights["net.0.0.weight"])
