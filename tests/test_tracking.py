"""Experiment tracking: what TensorBoard, MLflow and W&B (offline) hold after a tiny pretraining run,
read back with each tool's own reader, equals the run's metrics.jsonl; a missing package is one line."""

import json
import struct
import sys

import pytest

from cliutil import error_line, run
from leoclr_cli.core.engine import read_metrics

STEPS, EPOCHS = 4, 2
TINY = ["pretrain", "--source", "builtin", "--arch", "resnet18", "--epochs", str(EPOCHS), "--batch-size", "8",
        "--device", "cpu", "--quiet", "--set", f"data.builtin_train={8 * STEPS}", "--set", "data.builtin_test=16",
        "--set", "augment.size=16", "--set", "augment.normalize=builtin", "--set", "model.dim=8",
        "--set", "model.bn_splits=2", "--set", "method.queue_size=32", "--set", "monitor.knn_every=1",
        "--set", "monitor.k=4", "--set", "monitor.linear_every=1"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.raises(SystemExit) as exc:
        from leoclr_cli.cli import main

        main([*TINY, "--out", str(out), "--set", "log.tensorboard=true", "--set", "log.mlflow=true",
              "--set", "log.wandb=offline"])
    assert exc.value.code in (0, None)
    return out, read_metrics(out / "metrics.jsonl")


def check_steps(steps, values, metrics):
    """Per-step losses: global steps 1..8, and each epoch's mean is that epoch's metrics.jsonl loss."""
    assert steps == list(range(1, STEPS * EPOCHS + 1))
    for e, m in enumerate(metrics):
        assert sum(values[e * STEPS:(e + 1) * STEPS]) / STEPS == pytest.approx(m["loss"], rel=1e-5)


def test_tensorboard_event_files_hold_steps_epochs_and_the_views(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, metrics = tracked
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    loss = acc.Scalars("step/loss")
    check_steps([e.step for e in loss], [e.value for e in loss], metrics)
    assert [e.value for e in acc.Scalars("step/lr")] == pytest.approx([metrics[0]["lr"]] * STEPS
                                                                     + [metrics[1]["lr"]] * STEPS)
    for key in ("samples_per_s", "knn_top1", "linear_top1", "linear_loss", "loss"):
        got = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in got] == [STEPS, 2 * STEPS]
        assert [e.value for e in got] == pytest.approx([m[key] for m in metrics], rel=1e-5)
    (image,) = acc.Images("views")
    assert image.width == 4 + 4 * (64 + 4) and image.height > 8 * 64  # 8 rows of image, original, crop, crop


def test_mlflow_file_store_holds_the_run(tracked):
    import mlflow

    out, metrics = tracked
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.params["optim.epochs"] == str(EPOCHS)
    assert r.data.params["method.name"] == "leoclr"
    loss = sorted(client.get_metric_history(run_id, "step_loss"), key=lambda m: m.step)
    check_steps([m.step for m in loss], [m.value for m in loss], metrics)
    knn = sorted(client.get_metric_history(run_id, "knn_top1"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in knn] == [(STEPS * (e + 1), pytest.approx(m["knn_top1"]))
                                                for e, m in enumerate(metrics)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["views.png"]


def wandb_records(path):
    """The records of a W&B offline ``.wandb`` file (a LevelDB-style log: 7-byte file header, 32 KiB
    blocks of chunks with a 7-byte header: CRC32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pieces = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one record complete
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pieces)
            pieces = b""
            yield rec


def test_wandb_offline_run_directory_holds_the_history(tracked):
    out, metrics = tracked
    (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    rows = {}
    for rec in wandb_records(path):
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            rows.setdefault(items["_step"], {}).update(items)
    steps = sorted(s for s, r in rows.items() if "step/loss" in r)
    check_steps(steps, [rows[s]["step/loss"] for s in steps], metrics)
    assert [rows[STEPS * (e + 1)]["epoch/knn_top1"] for e in range(EPOCHS)] == \
        pytest.approx([m["knn_top1"] for m in metrics])
    assert rows[0]["views/_type"] == "image-file" and rows[0]["views/width"] == 4 + 4 * (64 + 4)


@pytest.mark.parametrize("field, value, package", [("tensorboard", "true", "torch.utils.tensorboard"),
                                                    ("mlflow", "true", "mlflow"), ("wandb", "offline", "wandb")])
def test_a_missing_package_names_the_extra(field, value, package, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import -> ImportError
    code, _, err = run([*TINY, "--out", str(tmp_path / "r"), "--set", f"log.{field}={value}"], capsys)
    line = error_line(code, err)
    assert f"log.{field}" in line and "leoclr[tracking]" in line
    assert not (tmp_path / "r").exists()


def test_a_bad_wandb_mode_is_one_line(tmp_path, capsys):
    code, _, err = run([*TINY, "--out", str(tmp_path / "r"), "--set", "log.wandb=sometimes"], capsys)
    assert "log.wandb" in error_line(code, err)


def test_linear_eval_logs_to_tensorboard(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cliutil import run

    out = tmp_path / "lin"
    code, _, err = run(["linear-eval", "random:resnet18", "--train-augment", "none", "--epochs", "2",
                        "--set", "data.builtin_train=64", "--set", "data.builtin_test=32", "--set", "transform.size=32",
                        "--set", "transform.resize=32", "--set", "transform.test=none", "--set", "eval_every=1",
                        "--set", "log.tensorboard=true", "--threads", "1", "--quiet", "-o", str(out)], capsys)
    assert code in (0, None), err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    got = events.Scalars("epoch/test_top1")
    assert [e.value for e in got] == pytest.approx([m["test_top1"] for m in metrics])
    assert len(events.Scalars("step/loss")) >= 2


# --------------------------------------------------------------------------- every command logs (issue 21, item 7)

EVAL = ["--device", "cpu", "--threads", "1", "--quiet", "--set", "log.tensorboard=true"]


def tensorboard_scalars(path):
    """{tag: [(step, value), ...]} of the TensorBoard event files under ``path``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def result_of(out):
    return json.loads((out / "result.json").read_text())


def test_knn_logs_its_result(random_backbone, tmp_path, capsys):
    out = tmp_path / "knn"
    code, _, err = run(["knn", str(random_backbone), "--k", "5", "-o", str(out), *EVAL], capsys)
    assert code in (0, None), err
    tags, result = tensorboard_scalars(out / "tensorboard"), result_of(out)
    assert tags["result/top1"] == [(0, pytest.approx(result["top1"]))]
    assert tags["result/top5"] == [(0, pytest.approx(result["top5"]))]
    assert tags["result/k"] == [(0, 5.0)]
    assert not [t for t in tags if t.startswith(("step/", "epoch/"))]  # kNN trains nothing


def test_finetune_logs_its_steps_epochs_and_result(random_backbone, tmp_path, capsys):
    out = tmp_path / "ft"
    # 50 of the 100 built-in train images, batch 16: 4 steps an epoch (the last one of 2 images)
    code, _, err = run(["finetune", str(random_backbone), "--labels", "50", "--epochs", "2", "--batch-size", "16",
                        "-o", str(out), *EVAL], capsys)
    assert code in (0, None), err
    tags, result = tensorboard_scalars(out / "tensorboard"), result_of(out)
    metrics = read_metrics(out / "metrics.jsonl")
    assert [s for s, _ in tags["step/loss"]] == list(range(1, 9))
    assert tags["epoch/loss"] == [(4, pytest.approx(metrics[0]["loss"], rel=1e-5)),
                                  (8, pytest.approx(metrics[1]["loss"], rel=1e-5))]
    assert tags["result/top1"] == [(0, pytest.approx(result["top1"]))]
    assert tags["result/num_labelled"] == [(0, 50.0)]


@pytest.fixture(scope="module")
def cars(tmp_path_factory):
    from fakedata import make_stanford_cars

    return make_stanford_cars(tmp_path_factory.mktemp("cars") / "cars", classes=3, n_train=12, n_test=6, size=24)


@pytest.mark.parametrize("mode, grid, column, values", [
    ("linear", ["--set", "cs=[0.001,1.0,100.0]", "--set", "lbfgs_max_iter=30"], "c", [0.001, 1.0, 100.0]),
    ("finetune", ["--set", "lrs=[0.01,0.1]", "--set", "wds=[0]", "--set", "steps=1"], "lr", [0.01, 0.1]),
])
def test_transfer_logs_its_grid_and_result(mode, grid, column, values, cars, random_backbone, tmp_path, capsys):
    out = tmp_path / mode
    code, _, err = run(["transfer", str(random_backbone), "cars", "--data", str(cars), "--mode", mode, "--batch-size",
                        "8", "--set", "transform.size=32", "--set", "transform.resize=32", "--set",
                        "transform.test=none", *grid, "-o", str(out), *EVAL], capsys)
    assert code in (0, None), err
    tags, result = tensorboard_scalars(out / "tensorboard"), result_of(out)
    cells = json.loads((out / "grid.json").read_text())["cells"]
    assert tags[f"grid/{column}"] == [(i, pytest.approx(v)) for i, v in enumerate(values)]
    assert tags["grid/val"] == [(i, pytest.approx(c["val"])) for i, c in enumerate(cells)]
    assert tags["result/value"] == [(0, pytest.approx(result["value"]))]
    assert tags["result/top1"] == [(0, pytest.approx(result["top1"]))]


@pytest.fixture(scope="module")
def with_artifacts(tmp_path_factory):
    """A tiny pretraining run and an L-BFGS linear-eval of it, both logged to one MLflow file store in the
    temporary directory with log.artifacts; the linear-eval also to W&B offline."""
    from leoclr_cli.cli import main

    base = tmp_path_factory.mktemp("artifacts")
    store, pre = base / "mlruns", base / "pre"
    logged = ["--set", f"log.mlflow={store.as_uri()}", "--set", "log.artifacts=true"]
    with pytest.raises(SystemExit) as exc:
        main([*TINY[:-4], "--set", "monitor.knn_every=0", "--out", str(pre), *logged])
    assert exc.value.code in (0, None)
    with pytest.raises(SystemExit) as exc:
        main(["linear-eval", str(pre), "--probe", "lbfgs", "--train-augment", "none", "--set", "cs=[0.01,1.0]",
              "--set", "lbfgs_max_iter=20", "--set", "transform.test=none", "--set", "log.wandb=offline",
              "--device", "cpu", "--quiet", *logged])
    assert exc.value.code in (0, None)
    return store, pre, pre / "linear-eval"


def mlflow_run(store, run_dir):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    return client, json.loads((run_dir / "tracking.json").read_text())["mlflow"]


def test_mlflow_holds_the_backbone_and_the_linear_head_as_artifacts(with_artifacts, tmp_path):
    store, pre, lin = with_artifacts
    for run_dir, name, others in ((pre, "backbone.safetensors", {"views.png"}), (lin, "linear.safetensors", set())):
        client, run_id = mlflow_run(store, run_dir)
        assert {a.path for a in client.list_artifacts(run_id)} == {name} | others
        got = client.download_artifacts(run_id, name, str(tmp_path))
        assert open(got, "rb").read() == (run_dir / name).read_bytes()
    client, run_id = mlflow_run(store, pre)
    assert client.get_metric_history(run_id, "result_final_loss")[0].value == \
        pytest.approx(result_of(pre)["final_loss"])


def test_lbfgs_linear_eval_logs_its_sweep_and_result(with_artifacts):
    store, _, lin = with_artifacts
    client, run_id = mlflow_run(store, lin)
    cells = json.loads((lin / "grid.json").read_text())["cells"]
    sweep = sorted(client.get_metric_history(run_id, "sweep_c"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in sweep] == [(0, pytest.approx(0.01)), (1, pytest.approx(1.0))]
    val = sorted(client.get_metric_history(run_id, "sweep_val"), key=lambda m: m.step)
    assert [m.value for m in val] == pytest.approx([c["val"] for c in cells])
    (top1,) = client.get_metric_history(run_id, "result_top1")
    assert top1.value == pytest.approx(result_of(lin)["top1"])


def test_wandb_offline_holds_the_result_and_the_linear_head(with_artifacts):
    _, _, lin = with_artifacts
    (path,) = (lin / "wandb").glob("offline-run-*/run-*.wandb")
    summary, artifacts = {}, []
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "artifact":
            artifacts.append((rec.artifact.name, rec.artifact.type))
    assert summary["result/top1"] == pytest.approx(result_of(lin)["top1"])
    assert artifacts == [("linear", "model")]
