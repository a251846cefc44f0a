"""The CLI end to end on tiny built-in data, and one clear line with exit 2 for every bad input."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cliutil import error_line, run

TINY = ["--set", "augment.size=32", "--set", "augment.normalize=builtin", "--set", "data.builtin_train=64", "--set", "data.builtin_test=32", "--set", "method.queue_size=32",
        "--set", "model.dim=16", "--set", "model.bn_splits=2", "--arch", "resnet18", "--batch-size", "16",
        "--quiet"]


@pytest.mark.parametrize("argv, needle", [
    (["pretrain", "--set", "optim.lr=-1"], "optim.lr"),
    (["pretrain", "--method", "simclr-typo"], "method.name"),
    (["pretrain", "--set", "optim.bogus=1"], "unknown field 'optim.bogus'"),
    (["pretrain", "--set", "model.arch=resnet9"], "resnet9"),
    (["pretrain", "--set", "augment.crop_scale=[0.9,0.2]"], "augment.crop_scale"),
    (["pretrain", "--set", "optim.batch_size=12", "--set", "model.bn_splits=8"], "bn_splits"),
    (["pretrain", "--source", "cifar10"], "needs a path"),
    (["pretrain", "--protocol", "/nonexistent/p.yaml"], "/nonexistent/p.yaml"),
])
def test_bad_protocol_values_give_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    code, _, err = run(argv + ["--out", str(tmp_path / "r")], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_rule_across_fields_is_stated_without_a_field_prefix(capsys, tmp_path):
    code, _, err = run(["pretrain", "--set", "optim.batch_size=12", "--set", "model.bn_splits=8",
                        "--out", str(tmp_path / "r")], capsys)
    line = error_line(code, err)
    assert "field '" not in line and "optim.batch_size (12)" in line and "model.bn_splits (8)" in line


def test_missing_data_path_names_it(capsys, tmp_path):
    missing = tmp_path / "nope"
    code, _, err = run(["pretrain", "--source", "cifar10", "--data", str(missing), "--out", str(tmp_path / "r")], capsys)
    assert str(missing) in error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_invalid_yaml_protocol(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    code, _, err = run(["pretrain", "--protocol", str(bad)], capsys)
    assert "not valid YAML" in error_line(code, err)


def test_pretrain_linear_eval_knn_end_to_end(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, out, _ = run(["pretrain", "--out", str(run_dir), *TINY, "--epochs", "2"], capsys)
    assert code in (0, None), out
    # the resolved protocol is in the run directory, with the overrides applied
    proto = yaml.safe_load((run_dir / "protocol.yaml").read_text())
    assert proto["optim"]["epochs"] == 2 and proto["method"]["queue_size"] == 32
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(m["loss"] > 0 for m in metrics)
    weights = load_file(run_dir / "backbone.safetensors")
    assert "conv1.weight" in weights and not any(k.startswith("fc.") for k in weights)

    # an existing run directory is not overwritten
    code, _, err = run(["pretrain", "--out", str(run_dir), *TINY, "--epochs", "2"], capsys)
    assert "already exists" in error_line(code, err)

    code, out, _ = run(["linear-eval", str(run_dir), "--train-augment", "none", "--epochs", "3", "--quiet"], capsys)
    assert code in (0, None)
    result = json.loads((run_dir / "linear-eval" / "result.json").read_text())
    assert 0 <= result["top1_last"] <= 100 and result["top5"] >= result["top1"]
    assert result["selected_on"] == "val" and 1 <= result["selected_epoch"] <= 3 and result["feature_norm"] == "bn"
    assert result["num_val"] + result["num_fit"] == 64 and result["top1_test_best"] >= result["top1"]
    assert result["backbone_unchanged"] is True and result["num_classes"] == 10
    lin = load_file(run_dir / "linear-eval" / "linear.safetensors")
    assert lin["fc.weight"].shape == (10, 512) and lin["norm.running_var"].shape == (512,)

    code, out, _ = run(["knn", str(run_dir), "--k", "5"], capsys)
    assert code in (0, None)
    knn = json.loads((run_dir / "knn" / "result.json").read_text())
    assert knn["k"] == 5 and knn["bank"] == 64 and knn["test"] == 32 and 0 <= knn["top1"] <= 100


def test_linear_eval_with_augmentation_keeps_backbone_frozen(capsys, tmp_path):
    """The paper's protocol (random-resized-crop through the frozen backbone): BN stats must not move."""
    run_dir = tmp_path / "run"
    assert run(["pretrain", "--out", str(run_dir), *TINY, "--epochs", "1"], capsys)[0] in (0, None)
    before = load_file(run_dir / "backbone.safetensors")
    code, _, _ = run(["linear-eval", str(run_dir), "--epochs", "2", "--batch-size", "16", "--quiet",
                      "--out", str(tmp_path / "lin")], capsys)
    assert code in (0, None)
    assert json.loads((tmp_path / "lin" / "result.json").read_text())["backbone_unchanged"] is True
    after = load_file(run_dir / "backbone.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_info_shows_metadata(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert run(["pretrain", "--out", str(run_dir), *TINY, "--epochs", "1"], capsys)[0] in (0, None)
    code, out, _ = run(["info", str(run_dir / "backbone.safetensors")], capsys)
    assert "arch: resnet18" in out and "method: leoclr" in out


def test_pretrain_and_knn_on_a_cifar10_copy(capsys, tmp_path):
    from fakedata import make_cifar10

    root = make_cifar10(tmp_path / "data", n_train=20, n_test=10)
    run_dir = tmp_path / "run"
    code, _, err = run(["pretrain", "--source", "cifar10", "--data", str(root), "--set", "data.verify_checksums=false",
                        "--out", str(run_dir), *TINY, "--epochs", "1"], capsys)
    assert code in (0, None), err
    # the evaluation takes source, path and checksum policy from the pretraining run
    code, _, err = run(["knn", str(run_dir), "--k", "3"], capsys)
    assert code in (0, None), err
    knn = json.loads((run_dir / "knn" / "result.json").read_text())
    assert knn["bank"] == 20 and knn["test"] == 10  # every train image votes, every test image is scored


def test_data_without_source_reads_the_layout_of_the_directory(capsys, tmp_path):
    """--data DIR without --source: the source comes from DIR's layout and is said on stderr, never the
    built-in data; a directory it cannot place stops with one sentence and writes nothing."""
    from fakedata import make_cifar10, make_stl10

    from leoclr_cli.config.catalog import installed as protocol_file

    root = make_cifar10(tmp_path / "data", n_train=20, n_test=10)
    run_dir = tmp_path / "run"
    code, _, err = run(["pretrain", "--data", str(root), "--set", "data.verify_checksums=false",
                        "--out", str(run_dir), *TINY, "--epochs", "1"], capsys)
    assert code in (0, None), err
    assert f"--data {root}: cifar-10-batches-py/: reading it as --source cifar10" in err.replace("\n", "")
    proto = yaml.safe_load((run_dir / "protocol.yaml").read_text())
    assert proto["data"]["source"] == "cifar10" and proto["data"]["root"] == str(root)

    (tmp_path / "empty").mkdir()
    stl = make_stl10(tmp_path / "stl")
    for argv, needle in (
        (["--data", str(tmp_path / "empty")], "holds none of the layouts"),
        (["--data", str(stl), "--protocol", str(protocol_file("cifar10_r18_leoclr.yaml"))], "not the cifar10 data"),
        (["--data", str(root), "--set", "data.source=stl10"], "not the stl10 data"),
    ):
        code, _, err = run(["pretrain", *argv, "--out", str(tmp_path / "r")], capsys)
        assert needle in error_line(code, err)
        assert not (tmp_path / "r").exists()
