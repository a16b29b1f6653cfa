import numpy as np
import pytest
import torch

from edgesdk.zoo import backbones

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_imagenet_weights_are_real_a_cat_is_a_cat():
    import cv2
    import skimage.data

    net = backbones.efficientnet_lite0("imagenet")
    img = cv2.resize(skimage.data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (img - np.float32(backbones.PIXEL_MEAN_RGB)) / np.float32(backbones.PIXEL_STD_RGB)
    with torch.no_grad():
        p = net(torch.from_numpy(x).permute(2, 0, 1)[None]).softmax(-1)[0]
    assert int(p.argmax()) in CAT_CLASSES
    assert float(p[list(CAT_CLASSES)].sum()) > 0.8


def test_random_weights_do_not_recognise_the_cat():
    # Guards the test above: it must be the weights, not the input, that make it pass.
    import cv2
    import skimage.data

    torch.manual_seed(0)
    net = backbones.efficientnet_lite0(None)
    img = cv2.resize(skimage.data.chelsea(), (224, 224)).astype(np.float32) / 127.5 - 1
    with torch.no_grad():
        p = net(torch.from_numpy(img).permute(2, 0, 1)[None]).softmax(-1)[0]
    assert float(p[list(CAT_CLASSES)].sum()) < 0.5


def test_feature_taps_shapes_and_strides():
    net = backbones.efficientnet_lite0(None)
    feats = net.features(torch.zeros(1, 3, 256, 256), (2, 4, 10))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 64, 64), (40, 32, 32), (112, 16, 16)]
    assert [net.block_info[i] for i in (2, 4, 10)] == [(24, 4), (40, 8), (112, 16)]


def test_wrong_weights_file_is_refused_with_its_path(tmp_path):
    bad = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="resnet.pt.*do not match"):
        backbones.efficientnet_lite0(str(bad))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        backbones.efficientnet_lite0(str(junk))


# torchvision's published parameter counts (weights, BatchNorm running statistics excluded).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "wide_resnet50_2": 68_883_240}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_resnets_have_torchvisions_parameters_and_names(name, tmp_path):
    net = backbones.build_backbone(name, None)
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[name]
    sd = net.state_dict()
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.weight",
        "fc.weight",
        "fc.bias",
    } <= set(sd)
    # A torchvision-style checkpoint (no num_batches_tracked, as its older files) loads strictly.
    ckpt = tmp_path / f"{name}.pth"
    torch.save({k: v.clone() + 1 for k, v in sd.items() if not k.endswith("num_batches_tracked")}, ckpt)
    loaded = backbones.build_backbone(name, str(ckpt))
    assert torch.equal(loaded.state_dict()["conv1.weight"], sd["conv1.weight"] + 1)
    feats = loaded.features(torch.zeros(1, 3, 128, 128), (1, 2))
    assert [tuple(f.shape[1:]) for f in feats] == [(net.tap_info[1][0], 16, 16), (net.tap_info[2][0], 8, 8)]


def test_backbone_without_shipped_weights_is_refused_never_random():
    with pytest.raises(ValueError, match="resnet18 has no weights shipped.*--backbone-weights"):
        backbones.build_backbone("resnet18", "imagenet")
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        backbones.build_backbone("vgg16", "imagenet")


def test_mismatched_checkpoint_lists_what_differs(tmp_path):
    sd = backbones.build_backbone("resnet18", None).state_dict()
    bad = {k: v for k, v in sd.items() if not k.startswith("layer4.1.")}
    bad["fc.weight"] = torch.zeros(10, 512)
    bad["head.bias"] = torch.zeros(3)
    f = tmp_path / "bad.pth"
    torch.save(bad, f)
    with pytest.raises(
        ValueError,
        match=r"bad\.pth: weights do not match resnet18: \d+ missing: layer4\.1\."
        r".*1 unexpected: head\.bias; 1 wrong shape: fc\.weight: file \(10, 512\)",
    ):
        backbones.build_backbone("resnet18", str(f))


def test_models_train_on_a_user_backbone(tmp_path, tiny_data):
    """The whole fit path works on a ResNet-18 with the user's weights file (here: re-saved random)."""
    from edgesdk.train import load_run, train

    ckpt = tmp_path / "resnet18.pth"
    torch.save(backbones.build_backbone("resnet18", None).state_dict(), ckpt)
    run = train(
        tiny_data / "brick",
        tmp_path / "run",
        "patchcore",
        quiet=True,
        backbone_weights=str(ckpt),
        config={"input_size": [64, 64], "backbone": "resnet18", "coreset_ratio": 0.05},
    )
    net, meta = load_run(run)
    assert meta["config"]["backbone"] == "resnet18" and meta["backbone_weights"] == str(ckpt.resolve())
    assert net(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))[1].shape == (1, 64, 64)
