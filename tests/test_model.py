import functools
import hashlib
import http.server
import json
import threading

import pytest
import torch
from conftest import load_artifact

from imgclf.artifact import network
from imgclf.artifact.card import Agreement, ModelCard, ModelError, ServingFormat, load_card, write_card
from imgclf.train import backbone
from imgclf.artifact.images import EvalSettings


def card(arch="resnet18", classes=("a", "b", "c")):
    return ModelCard(arch=arch, classes=tuple(classes), eval=EvalSettings.for_image_size(32))


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_head_matches_number_of_classes(arch):
    net = network.create_model(arch, 7).eval()
    assert network.head(net).out_features == 7
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


def test_unknown_arch_lists_the_choices():
    with pytest.raises(ModelError, match="resnet50.*efficientnet_lite0"):
        network.create_model("vgg16", 3)


def test_load_backbone_keeps_fresh_head(tmp_path):
    imagenet = network.create_model("resnet18", 1000)
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    net = network.create_model("resnet18", 5)
    head_before = net.fc.weight.clone()
    backbone.load_backbone(net, tmp_path / "resnet18.pth")
    assert torch.equal(net.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(net.fc.weight, head_before)


def test_load_backbone_rejects_weights_of_another_network(tmp_path):
    torch.save(network.create_model("resnet34", 1000).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelError, match="does not fit"):
        backbone.load_backbone(network.create_model("resnet18", 5), tmp_path / "w.pth")


def test_packaged_efficientnet_weights_are_found_and_fit():
    weights = backbone.find_imagenet_weights("efficientnet_lite0", None)
    assert weights is not None and weights.is_file()
    backbone.load_backbone(network.create_model("efficientnet_lite0", 4), weights)


def test_pretrained_channel_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv(backbone.WEIGHTS_DIR_ENV, str(tmp_path / "baked"))
    (tmp_path / "baked").mkdir()
    (tmp_path / "baked" / "resnet50.pth").write_bytes(b"")
    channel = tmp_path / "pretrained"
    channel.mkdir()
    assert backbone.find_imagenet_weights("resnet50", channel) == tmp_path / "baked" / "resnet50.pth"
    (channel / "anything.pth").write_bytes(b"")
    assert backbone.find_imagenet_weights("resnet50", channel) == channel / "anything.pth"
    (channel / "other.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="none is named resnet50.pth"):
        backbone.find_imagenet_weights("resnet50", channel)
    (channel / "resnet50.pth").write_bytes(b"")
    assert backbone.find_imagenet_weights("resnet50", channel) == channel / "resnet50.pth"
    assert backbone.find_imagenet_weights("resnet18", None) is None


def test_freeze_trains_head_only_and_fixes_batchnorm_stats():
    net = network.create_model("resnet18", 3)
    backbone.freeze_backbone(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    backbone.train_mode(net)
    assert net.training and net.fc.training and not net.bn1.training
    stats = net.bn1.running_mean.clone()
    net(torch.randn(4, 3, 32, 32))
    assert torch.equal(net.bn1.running_mean, stats)


def test_artifact_round_trip_gives_same_predictions(tmp_path):
    net = network.create_model("resnet18", 3).eval()
    network.save_artifact(tmp_path, net, card())
    loaded, loaded_card = load_artifact(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert loaded_card == card()
    assert not loaded.training
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__
    torch.load(tmp_path / "model.pt", weights_only=True)  # plain tensors, nothing to unpickle


def test_missing_or_future_artifact_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not a model artifact"):
        load_card(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**card().to_dict(), "format_version": 99}))
    with pytest.raises(ModelError, match="format_version"):
        load_card(tmp_path)


@pytest.fixture
def weights_server(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (a free port): stands in for torchvision's download site."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_missing_weights_are_downloaded_once_and_checked(tmp_path, monkeypatch, weights_server):
    """Neither channel nor image has resnet18's weights: torchvision's file is downloaded into torch's
    hub cache (its name's hash checked), then found there without the network."""
    site, url = weights_server
    monkeypatch.setenv(backbone.WEIGHTS_DIR_ENV, str(tmp_path / "baked-none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    imagenet = network.create_model("resnet18", 1000).state_dict()
    torch.save(imagenet, site / "weights.pth")
    name = f"resnet18-{hashlib.sha256((site / 'weights.pth').read_bytes()).hexdigest()[:8]}.pth"
    (site / "weights.pth").rename(site / name)
    (site / "resnet18-00000000.pth").write_bytes(b"not the file its name promises")

    monkeypatch.setattr(backbone, "weights_url", lambda arch: f"{url}/resnet18-00000000.pth")
    assert backbone.find_imagenet_weights("resnet18", None) is None  # a wrong hash is no weights
    assert not list((tmp_path / "torch").rglob("*.pth*"))

    monkeypatch.setattr(backbone, "weights_url", lambda arch: f"{url}/{name}")
    found = backbone.find_imagenet_weights("resnet18", None)
    assert found == tmp_path / "torch" / "hub" / "checkpoints" / name
    net = network.create_model("resnet18", 3)
    backbone.load_backbone(net, found)
    assert torch.equal(net.conv1.weight, imagenet["conv1.weight"])
    (site / name).unlink()  # gone from the site: the cached file is enough
    assert backbone.find_imagenet_weights("resnet18", None) == found


def test_unreachable_download_gives_no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(backbone.WEIGHTS_DIR_ENV, str(tmp_path / "baked-none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(backbone, "weights_url", lambda arch: "http://127.0.0.1:9/resnet50-0123abcd.pth")
    assert backbone.find_imagenet_weights("resnet50", None) is None


def test_card_carries_serving_formats_and_reads_cards_without_them(tmp_path):
    agreement = Agreement(images=50, top1_agreement=0.98, accuracy=0.9, fp32_accuracy=0.92)
    vnni = Agreement(images=50, top1_agreement=1.0, accuracy=0.92, fp32_accuracy=0.92)
    int8 = ServingFormat("model_int8.xml", "int8", agreement, calibration_images=300,
                                by_kernels={"vnni": vnni, "avx2": agreement})
    with_formats = ModelCard(card().arch, card().classes, card().eval, formats={"openvino_int8": int8})
    write_card(tmp_path, with_formats)
    loaded = load_card(tmp_path)
    assert loaded.formats["openvino_int8"] == int8
    assert loaded.formats["openvino_int8"].agreement.accuracy_drop == pytest.approx(0.02)
    assert loaded.formats["openvino_int8"].agreement_on("vnni") == vnni
    assert loaded.formats["openvino_int8"].agreement_on("aarch64") == agreement  # not measured: the lowest
    older = with_formats.to_dict()
    del older["formats"]["openvino_int8"]["agreement_by_kernels"]  # a card written before kernels were told
    (tmp_path / "model.json").write_text(json.dumps(older))
    assert load_card(tmp_path).formats["openvino_int8"].agreement_on("vnni") == agreement
    older = with_formats.to_dict()
    del older["formats"]  # a card written before formats existed
    (tmp_path / "model.json").write_text(json.dumps(older))
    assert load_card(tmp_path).formats == {}


def test_freeze_bn_stats_keeps_running_statistics_while_the_backbone_trains():
    net = network.create_model("resnet18", 3)
    backbone.train_mode(net, freeze_bn_stats=True)
    assert net.training and net.layer1[0].conv1.weight.requires_grad and not net.bn1.training
    stats = net.bn1.running_mean.clone()
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(net.bn1.running_mean, stats) and net.bn1.weight.grad is not None
    backbone.train_mode(net)
    net(torch.randn(4, 3, 32, 32))
    assert not torch.equal(net.bn1.running_mean, stats)  # without it, the batch's statistics move them
