"""Backbone files load into stock torchvision models; metadata and training state round-trip."""

import json

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.errors import UserError
from leoclr_cli.methods import LeOCLR
from leoclr_cli.config import MethodConfig, ModelConfig


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_backbone_loads_into_stock_torchvision_resnet(tmp_path, arch):
    torch.manual_seed(0)
    m = LeOCLR(ModelConfig(arch=arch, dim=16, bn_splits=4), MethodConfig(queue_size=32))
    path = tmp_path / "backbone.safetensors"
    ckpt.save_backbone(path, m.backbone, arch=arch, cifar_stem=False, method="leoclr", epoch=7,
                       protocol_json=json.dumps({"a": 1}))
    stock = getattr(torchvision.models, arch)(weights=None)
    missing, unexpected = stock.load_state_dict(load_file(path), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []
    torch.testing.assert_close(stock.layer1[0].bn1.running_var, m.backbone.layer1[0].bn1.running_var)
    loaded, meta = ckpt.load_backbone(path)
    assert meta["arch"] == arch and meta["method"] == "leoclr" and meta["epoch"] == "7"
    assert json.loads(meta["protocol"]) == {"a": 1} and meta["kind"] == "backbone"
    x = torch.randn(2, 3, 64, 64)
    m.backbone.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), m.backbone(x))


def test_cifar_stem_round_trips(tmp_path):
    m = LeOCLR(ModelConfig(arch="resnet18", cifar_stem=True, dim=8, bn_splits=1), MethodConfig(queue_size=8))
    path = tmp_path / "b.safetensors"
    ckpt.save_backbone(path, m.backbone, arch="resnet18", cifar_stem=True, method="leoclr", epoch=1, protocol_json="{}")
    loaded, meta = ckpt.load_backbone(path)
    assert loaded.conv1.kernel_size == (3, 3) and isinstance(loaded.maxpool, torch.nn.Identity)


def test_foreign_and_wrong_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not written by leoclr"):
        ckpt.load_backbone(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match="not a readable safetensors"):
        ckpt.load_backbone(junk)
    good = tmp_path / "good.safetensors"
    m = LeOCLR(ModelConfig(arch="resnet18", dim=8, bn_splits=1), MethodConfig(queue_size=8))
    ckpt.save_backbone(good, m.backbone, arch="resnet18", cifar_stem=False, method="leoclr", epoch=1, protocol_json="{}")
    with pytest.raises(UserError, match="resnet18 backbone, but resnet50"):
        ckpt.load_backbone(good, expect_arch="resnet50")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=str(truncated)):
        ckpt.load_backbone(truncated)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.safetensors"
    ckpt.save_tensors(path, {"a": torch.ones(2)}, {"kind": "backbone"})
    with pytest.raises(Exception):
        ckpt.save_tensors(path, {"a": "not a tensor"}, {"kind": "backbone"})  # type: ignore[dict-item]
    t, _ = ckpt.load_tensors(path)
    assert torch.equal(t["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left


def test_train_state_round_trip_restores_optimizer_and_rngs(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "s.safetensors"
    ckpt.save_train_state(path, model=model, optimizer=opt, epoch=3, protocol_json='{"p": 1}')
    expected_next = torch.rand(3)
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    epoch, _ = ckpt.load_train_state(path, model=model2, optimizer=opt2, protocol_json='{"p": 1}')
    assert epoch == 3
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored to the save point
    torch.testing.assert_close(model2.weight, model.weight)
    assert opt2.param_groups[0]["lr"] == 0.1
    torch.testing.assert_close(opt2.state[opt2.param_groups[0]["params"][0]]["momentum_buffer"],
                               opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"])
    with pytest.raises(UserError, match="field 'p' differs.*start the run over with --force"):
        ckpt.load_train_state(path, model=model2, optimizer=opt2, protocol_json='{"p": 2}')
