"""Backbone and head tests: a registry-driven sweep plus architecture facts."""

from __future__ import annotations

import pytest
import torch

from reprlearn.errors import ReprlearnError
from reprlearn.nets import MLPHead, create_backbone, list_backbones, projection_head

# Options that keep the heavy backbones small enough for a fast CPU test.
SMALL = {"vit-tiny": {"depth": 2}, "vit-small": {"depth": 2}}
# 8x8 inputs need a smaller ViT patch (the default patch 4 would give only 4 tokens).
TINY_IMAGE = {"vit-tiny": {"patch_size": 2}, "vit-small": {"patch_size": 2}}
# parameters outside the features' path: the U-Net's features are its bottleneck; its up path denoises
NOT_IN_FEATURES = {"unet": ("up.", "up_attn.", "out_norm.", "conv_out.")}


def _cases():
    for name in list_backbones():
        yield pytest.param(name, 1, 8, {**SMALL.get(name, {}), **TINY_IMAGE.get(name, {})}, id=f"{name}-1x8")
        yield pytest.param(name, 3, 32, SMALL.get(name, {}), id=f"{name}-3x32")


@pytest.mark.parametrize("name,channels,size,kwargs", list(_cases()))
def test_backbone_shape_finite_and_gradients(name, channels, size, kwargs):
    torch.manual_seed(0)
    net = create_backbone(name, in_channels=channels, image_size=size, **kwargs)
    assert isinstance(net.feature_dim, int)
    x = torch.randn(2, channels, size, size)
    out = net(x)
    assert out.shape == (2, net.feature_dim)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if (p.grad is None or not torch.isfinite(p.grad).all())
               and not n.startswith(NOT_IN_FEATURES.get(name, ()))]
    assert not missing, f"no/invalid gradient for {missing}"


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_resnet_parameter_counts_match_torchvision_trunks():
    assert _count(create_backbone("resnet18", image_size=224)) == 11_176_512
    assert _count(create_backbone("resnet18", image_size=32)) == 11_168_832
    assert _count(create_backbone("resnet18", image_size=32, cifar_stem=False)) == 11_176_512
    r50 = create_backbone("resnet50", image_size=224)
    assert _count(r50) == 23_508_032
    assert r50.feature_dim == 2048


def test_resnet50_forward_tiny_input():
    net = create_backbone("resnet50", image_size=32)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 2048)


def test_resnet_zero_init_residual_makes_blocks_start_as_identity_branch():
    net = create_backbone("resnet18", zero_init_residual=True)
    assert all(block.last_bn().weight.abs().sum() == 0 for stage in net.stages for block in stage)


def test_cnn_widths_and_feature_dim():
    net = create_backbone("cnn", 1, 8, widths=(8, 16), feature_dim=10)
    assert net.feature_dim == 10
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_vit_forward_tokens_subset_and_full():
    torch.manual_seed(0)
    vit = create_backbone("vit-tiny", 3, 32, depth=2).eval()
    assert vit.num_patches == 64 and vit.dim == 192
    x = torch.randn(2, 3, 32, 32)
    keep = torch.stack([torch.randperm(64)[:16] for _ in range(2)])
    assert vit.forward_tokens(x, keep).shape == (2, 17, 192)
    assert vit.patch_embed_tokens(x).shape == (2, 64, 192)
    full = vit.forward_tokens(x)
    assert full.shape == (2, 65, 192)
    all_idx = torch.arange(64).expand(2, -1)
    torch.testing.assert_close(vit.forward_tokens(x, all_idx), full)
    torch.testing.assert_close(vit(x), full[:, 0])


def test_vit_mean_pool_and_sincos():
    vit = create_backbone("vit-small", 1, 16, depth=1, patch_size=4, pool="mean", pos_embed="sincos")
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(vit(x), vit.forward_tokens(x)[:, 1:].mean(1))
    assert vit.feature_dim == 384 and vit.num_patches == 16


def test_vit_default_patch_size():
    assert create_backbone("vit-tiny", 3, 32, depth=1).num_patches == 64  # patch 4
    assert create_backbone("vit-tiny", 3, 64, depth=1).num_patches == 16  # patch 16


def test_vit_patch_size_must_divide_image_size():
    with pytest.raises(ReprlearnError, match="divisible"):
        create_backbone("vit-tiny", 3, 32, patch_size=5)


def test_unknown_backbone_lists_available():
    with pytest.raises(ReprlearnError) as info:
        create_backbone("resnet19")
    message = str(info.value)
    assert "resnet19" in message and "resnet18" in message and "vit-tiny" in message
    assert "\n" not in message


def test_unknown_option_names_option_and_backbone():
    with pytest.raises(ReprlearnError) as info:
        create_backbone("cnn", widthz=(8,))
    assert "widthz" in str(info.value) and "cnn" in str(info.value)


def test_mlp_head_shapes():
    head = MLPHead(64, 128, 32, num_layers=3, last_bn=True)
    assert head(torch.randn(4, 64)).shape == (4, 32)
    assert projection_head(64)(torch.randn(4, 64)).shape == (4, 128)
    assert MLPHead(8, 16, 4, num_layers=1)(torch.randn(2, 8)).shape == (2, 4)


def test_vit_parameter_counts_match_timm_without_head():
    # timm vit_tiny/small_patch16_224 minus their 1000-class head.
    assert _count(create_backbone("vit-tiny", 3, 224)) == 5_524_416
    assert _count(create_backbone("vit-small", 3, 224)) == 21_665_664


def test_vit_positions_are_the_table_on_its_grid_and_resized_on_others():
    vit = create_backbone("vit-micro", in_channels=1, image_size=8)  # a 4x4 grid of 2x2 patches
    assert torch.equal(vit.patch_pos_embed(4, 4), vit.pos_embed[:, 1:])
    with torch.no_grad():
        vit.pos_embed[:, 1:] = 0.7  # a constant table stays constant at any size
    torch.testing.assert_close(vit.patch_pos_embed(2, 3), torch.full((1, 6, vit.dim), 0.7))
    assert vit(torch.rand(3, 1, 4, 4)).shape == (3, vit.dim)  # a 4 px crop: 2x2 patches
