import numpy as np
import pytest
import torch

from edgesdk.zoo import backbones

CAT_CLASSES = range(281, 286)   # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


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
    import skimage.data
    import cv2

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
