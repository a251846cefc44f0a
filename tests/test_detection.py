"""Detection transfer: the Detectron2 export, the VOC/COCO readers and metrics, both backends on tiny
generated VOC and COCO copies, the rescale rule, and one clear line for bad inputs."""

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fakedata
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.detection import detectron2_backend as d2b
from leoclr_cli.detection.datasets import DetectionTrainSet, read_coco, read_voc
from leoclr_cli.detection.export import detectron2_name, to_detectron2
from leoclr_cli.detection.metrics import coco_ap, voc_ap
from leoclr_cli.detection.torchvision_r50c4 import warmup_multistep
from leoclr_cli.core.nets import build_backbone
from leoclr_cli.config import DetectProtocol
from cliutil import error_line, run

HAS_D2 = d2b.import_error() is None
needs_d2 = pytest.mark.skipif(not HAS_D2, reason="Detectron2 is not installed (tools/install-detectron2)")

# tiny budgets: ~64 px images, a few RoIs, 2 iterations, no rescale
TINY = ["--set", "min_size_train=[64,72]", "--set", "max_size_train=96", "--set", "min_size_test=64",
        "--set", "max_size_test=96", "--set", "rpn_pre_nms_topk_train=64", "--set", "rpn_post_nms_topk_train=16",
        "--set", "rpn_pre_nms_topk_test=64", "--set", "rpn_post_nms_topk_test=8",
        "--set", "rpn_batch_size_per_image=32", "--set", "roi_batch_size_per_image=4", "--set", "max_iter=2",
        "--set", "steps=[1]", "--set", "warmup_iters=1", "--set", "ims_per_batch=2", "--set", "rescale=false",
        "--set", "precise_bn_iters=1", "--set", "num_workers=0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    path = tmp_path_factory.mktemp("bb") / "backbone.safetensors"
    torch.manual_seed(0)
    ckpt.save_backbone(path, build_backbone("resnet50"), arch="resnet50", cifar_stem=False, method="leoclr",
                       epoch=1, protocol_json="{}")
    return path


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return fakedata.make_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return fakedata.make_coco(tmp_path_factory.mktemp("coco"))


# --------------------------------------------------------------------------- export


def expected_detectron2_names() -> set[str]:
    """Detectron2's R50 names, written out from its module structure (not from the renaming rules)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{b}" for b in bn}
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for i in range(blocks):
            for c in (1, 2, 3):
                names |= {f"res{stage}.{i}.conv{c}.weight"} | {f"res{stage}.{i}.conv{c}.norm.{b}" for b in bn}
        names |= {f"res{stage}.0.shortcut.weight"} | {f"res{stage}.0.shortcut.norm.{b}" for b in bn}
    return names


def test_every_resnet50_key_maps_to_its_detectron2_name():
    import torchvision

    state = torchvision.models.resnet50().state_dict()
    renamed = to_detectron2(state)
    assert set(renamed) == expected_detectron2_names()  # fc dropped, nothing else lost or invented
    assert len(renamed) == len(state) - 2
    assert detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert detectron2_name("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert detectron2_name("layer4.2.bn3.bias") == "res5.2.conv3.norm.bias"
    np.testing.assert_array_equal(renamed["res3.1.conv2.weight"], state["layer2.1.conv2.weight"].numpy())


def test_export_cli_writes_moco_pickle(r50, tmp_path, capsys):
    out = tmp_path / "r50.pkl"
    code, text, _ = run(["export", str(r50), "--to", "detectron2", "--out", str(out)], capsys)
    assert code in (0, None) and "r50.pkl" in text
    obj = pickle.loads(out.read_bytes())  # our own file, just written
    assert obj["matching_heuristics"] is True and obj["__author__"] == "leoclr"
    assert set(obj["model"]) == expected_detectron2_names()
    np.testing.assert_array_equal(obj["model"]["stem.conv1.weight"], load_file(r50)["conv1.weight"].numpy())


def test_export_refuses_a_basic_block_backbone(tmp_path, capsys):
    bb = tmp_path / "r18.safetensors"
    ckpt.save_backbone(bb, build_backbone("resnet18"), arch="resnet18", cifar_stem=False, method="leoclr", epoch=1,
                       protocol_json="{}")
    code, _, err = run(["export", str(bb), "--out", str(tmp_path / "x.pkl")], capsys)
    assert "resnet18" in error_line(code, err)
    assert not (tmp_path / "x.pkl").exists()


@needs_d2
def test_export_loads_into_detectron2_r50c4_with_no_backbone_weight_unmatched(r50):
    from detectron2.modeling import build_model

    d2b.register_extra_norm()
    p = DetectProtocol(root="x", rpn_pre_nms_topk_test=8)
    cfg = d2b.build_config(p, p.solver(8), 3, "a", "b", "/tmp", "cpu", 0)
    model = build_model(cfg)
    state = {k: v for k, v in load_file(r50).items()}
    incompatible = d2b.load_backbone_into(model, state)
    assert incompatible.unexpected_keys == []  # every exported tensor found its place
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["backbone.stem.conv1.weight"], state["conv1.weight"])
    torch.testing.assert_close(loaded["roi_heads.res5.2.conv3.norm.running_var"], state["layer4.2.bn3.running_var"])
    missing = set(incompatible.missing_keys)
    assert not any(k.startswith(("backbone.stem", "backbone.res", "roi_heads.res5.0", "roi_heads.res5.1",
                                 "roi_heads.res5.2")) for k in missing), sorted(missing)[:5]
    assert any(k.startswith("roi_heads.res5.norm") for k in missing)  # MoCo's extra norm is new


# --------------------------------------------------------------------------- metrics


def test_voc_metric_matches_a_hand_computed_case():
    box = [0.0, 0.0, 10.0, 10.0]
    gts = [{"boxes": torch.tensor([box, [20.0, 20, 30, 30]]), "labels": torch.tensor([0, 0]),
            "difficult": torch.tensor([False, True])},
           {"boxes": torch.tensor([box]), "labels": torch.tensor([0]), "difficult": torch.tensor([False])}]
    dets = [{"boxes": torch.tensor([box, [20.0, 20, 30, 30], box, [50.0, 50, 60, 60]]),
             "scores": torch.tensor([0.9, 0.85, 0.8, 0.5]), "labels": torch.tensor([0, 0, 0, 1])},
            {"boxes": torch.tensor([[0.0, 0, 10, 7.2]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}]
    # class 0, npos 2; order: TP (0.9), difficult match ignored (0.85), duplicate FP (0.8), IoU 0.72 (0.7).
    # IoU thresholds <= 0.70: TP FP TP -> rec .5 .5 1, prec 1 .5 2/3 -> 11-point AP = (6 + 5 * 2/3) / 11 = 28/33
    # thresholds >= 0.75: TP FP FP -> rec .5, prec 1 .5 1/3 -> AP = 6/11. Class 1 has no ground truth: left out.
    r = voc_ap(gts, dets, num_classes=2)
    assert r["AP50"] == pytest.approx(100 * 28 / 33)
    assert r["AP75"] == pytest.approx(100 * 6 / 11)
    assert r["AP_per_iou"]["0.70"] == pytest.approx(100 * 28 / 33)
    assert r["AP"] == pytest.approx(100 * (5 * 28 / 33 + 5 * 18 / 33) / 10)


def test_voc_reader_gives_detectron2_boxes_and_flags(voc_root):
    train = read_voc(voc_root, "2007-trainval") + read_voc(voc_root, "2012-trainval")
    test = read_voc(voc_root.parent, "2007-test")  # the parent of VOCdevkit works too
    assert len(train) == 5 and len(test) == 2
    rec = test[0]
    image, objects = fakedata.detection_scene(fakedata.zlib.crc32(rec["image_id"].encode()), 96, 72,
                                              fakedata.VOC_FAKE_CLASSES)
    assert (rec["width"], rec["height"]) == (96, 72)
    assert [a["bbox"] for a in rec["annotations"]] == [[float(v) for v in o[1:]] for o in objects]
    assert [fakedata.VOC_FAKE_CLASSES[0:3].index(o[0]) for o in objects] == \
        [["cat", "dog", "car"].index(read_voc.__globals__["VOC_CLASSES"][a["category_id"]]) for a in rec["annotations"]]
    assert [a["difficult"] for a in rec["annotations"]] == [0] * (len(objects) - 1) + [int(len(objects) > 1)]
    sample_image, target = DetectionTrainSet(train, flip=False)[0]
    assert sample_image.shape == (3, 72, 96) and 0 <= sample_image.min() and sample_image.max() <= 1
    assert (target["labels"] >= 1).all()


def test_coco_reader_and_pycocotools_metric(coco_root):
    records, names, cat_ids = read_coco(coco_root, "val2017")
    assert names == ["car", "cat", "dog"] and cat_ids == [3, 17, 18]
    perfect = [{"boxes": torch.tensor([a["bbox"] for a in r["annotations"]]),
                "scores": torch.ones(len(r["annotations"])),
                "labels": torch.tensor([a["category_id"] for a in r["annotations"]])} for r in records]
    ann = coco_root / "annotations" / "instances_val2017.json"
    assert coco_ap(ann, records, perfect, cat_ids) == {"AP": pytest.approx(100), "AP50": pytest.approx(100),
                                                      "AP75": pytest.approx(100)}
    shifted = [{**d, "boxes": d["boxes"] + torch.tensor([30.0, 0, 30, 0])} for d in perfect]
    assert coco_ap(ann, records, shifted, cat_ids)["AP50"] < 100


# --------------------------------------------------------------------------- schedule and rescale


def test_rescale_rule_halves_batch_and_lr_and_doubles_the_schedule():
    p = DetectProtocol(root="x")
    assert p.solver(8) == {"ims_per_batch": 16, "base_lr": 0.02, "max_iter": 24000, "steps": [18000, 22000],
                           "warmup_iters": 100, "scale": 1.0}
    four = p.solver(4)
    assert (four["ims_per_batch"], four["max_iter"], four["steps"], four["warmup_iters"]) == (8, 48000, [36000, 44000],
                                                                                               200)
    assert four["base_lr"] == pytest.approx(0.01)
    coco = DetectProtocol(root="x", dataset="coco", schedule="2x").solver(8)
    assert (coco["max_iter"], coco["steps"]) == (180000, [120000, 160000])
    lr = warmup_multistep(0.02, [18000, 22000], 0.1, 100, 0.001)
    assert lr(0) == pytest.approx(0.00002) and lr(50) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert lr(100) == pytest.approx(0.02) and lr(18000) == pytest.approx(0.002) and lr(23999) == pytest.approx(0.0002)


# --------------------------------------------------------------------------- end to end


def check_run(out, dataset, backend, trials=1):
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "detect" and result["dataset"] == dataset and result["backend"] == backend
    for key in ("AP", "AP50", "AP75"):
        assert 0 <= result[key] <= 100
    assert len(result["per_trial"]) == trials
    assert (out / "protocol.yaml").is_file()
    for t in range(trials):
        metrics = [json.loads(line) for line in (out / f"trial-{t}" / "metrics.jsonl").read_text().splitlines()]
        assert metrics and all(np.isfinite(m.get("loss", m.get("total_loss", 0.0))) for m in metrics)
        model = load_file(out / f"trial-{t}" / "model.safetensors")
        assert len(model) > 300
    return result


def test_detect_voc_torchvision_two_trials_learns_nothing_broken(r50, voc_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(d2b, "import_error", lambda: "ModuleNotFoundError: No module named 'detectron2'")
    out = tmp_path / "voc"
    code, text, err = run(["detect", "voc", str(r50), "--data", str(voc_root), "--out", str(out), "--trials", "2",
                           *TINY], capsys)
    assert code in (0, None), err
    assert "Detectron2 is not importable" in err and "torchvision R50-C4" in err  # the automatic fallback, stated
    assert "solver for 1 GPU" in err
    result = check_run(out, "voc", "torchvision", trials=2)
    assert [t["seed"] for t in result["per_trial"]] == [0, 1]
    assert "AP50" in text and "±" in text
    trained = load_file(out / "trial-0" / "model.safetensors")
    initial = load_file(r50)
    assert not torch.equal(trained["backbone.body.0.weight"], initial["conv1.weight"])  # it trained
    metrics = [json.loads(line) for line in (out / "trial-0" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 2 and {"loss_classifier", "loss_objectness"} <= set(metrics[-1])


def test_detect_coco_torchvision_and_its_tracker(r50, coco_root, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "coco"
    code, _, err = run(["detect", "coco", str(r50), "--data", str(coco_root), "--out", str(out), "--backend",
                        "torchvision", "--set", "log.tensorboard=true", *TINY], capsys)
    assert code in (0, None), err
    result = check_run(out, "coco", "torchvision")
    # log.*: each trial's steps, its metrics records and its AP, in trial-N/tensorboard
    events = EventAccumulator(str(out / "trial-0" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("step/loss")] == [1, 2]
    metrics = [json.loads(line) for line in (out / "trial-0" / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("epoch/loss_classifier")] == \
        pytest.approx([m["loss_classifier"] for m in metrics], rel=1e-5)
    assert [e.value for e in events.Scalars("result/AP")] == pytest.approx([result["per_trial"][0]["AP"]])


@needs_d2
@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_detect_detectron2(dataset, r50, voc_root, coco_root, tmp_path, capsys):
    out = tmp_path / dataset
    root = voc_root if dataset == "voc" else coco_root
    code, _, err = run(["detect", dataset, str(r50), "--data", str(root), "--out", str(out), "--backend",
                        "detectron2", *TINY], capsys)
    assert code in (0, None), err
    check_run(out, dataset, "detectron2")
    model = load_file(out / "trial-0" / "model.safetensors")
    assert "roi_heads.res5.norm.weight" in model and "backbone.res4.5.conv3.norm.running_mean" in model


# --------------------------------------------------------------------------- interruptions and --resume


def without_times(path):
    return [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "samples_per_s")}
            for line in path.read_text().splitlines()]


def test_torchvision_sigterm_in_a_trial_then_resume_auto_ends_as_an_uninterrupted_run(r50, voc_root, tmp_path,
                                                                                       capsys):
    from test_reliability import cli, signal_at_call, tagged_env

    from leoclr_cli.errors import EXIT_PREEMPTED

    argv = ["detect", "voc", str(r50), "--data", str(voc_root), "--backend", "torchvision", "--trials", "2", *TINY]
    straight, out = tmp_path / "straight", tmp_path / "run"
    code, _, err = run([*argv, "--out", str(straight)], capsys)
    assert code in (0, None), err
    # two steps a trial: the third is the second trial's first
    env = {**tagged_env()[0], "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same sums as in here
    proc = cli([*argv, "--out", str(out)], env,
               prelude=signal_at_call("leoclr_cli.detection.torchvision_r50c4:DetectionTask.forward", 3))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_PREEMPTED, err
    state = out / "trial-1" / "checkpoints" / "state_e0000_s000001.safetensors"
    assert err.strip().splitlines()[-1] == (f"stopped: SIGTERM at epoch 1, step 1; checkpoint {state} written; "
                                            "continue with --resume auto")
    assert (out / "trial-0" / "result.json").is_file() and not (out / "trial-0" / "checkpoints").exists()
    assert not (out / "result.json").exists()

    code, _, err = run([*argv, "--out", str(out), "--set", "max_iter=3", "--resume", "auto"], capsys)
    assert "field 'max_iter' differs" in error_line(code, err)
    assert state.is_file()
    finished = (out / "trial-0" / "model.safetensors").stat().st_mtime_ns
    code, _, err = run([*argv, "--out", str(out), "--resume", "auto"], capsys)
    assert code in (0, None), err
    assert (out / "result.json").read_text() == (straight / "result.json").read_text()
    assert (out / "trial-0" / "model.safetensors").stat().st_mtime_ns == finished  # kept, not trained again
    for name in ("model.safetensors", "result.json"):  # the interrupted trial ends bit-identical
        assert (out / "trial-1" / name).read_bytes() == (straight / "trial-1" / name).read_bytes(), name
    assert without_times(out / "trial-1" / "metrics.jsonl") == without_times(straight / "trial-1" / "metrics.jsonl")
    assert not (out / "trial-1" / "checkpoints").exists()


@needs_d2
def test_detectron2_stops_within_an_iteration_and_resumes(r50, voc_root, tmp_path):
    """SIGTERM in Detectron2's training loop: a checkpoint after that iteration, exit 75 and our sentence;
    --resume auto continues from it. A signal in the test pass keeps the state after the last iteration,
    from which the next resume only tests."""
    from test_reliability import cli, signal_at_call, tagged_env

    from leoclr_cli.errors import EXIT_PREEMPTED

    out = tmp_path / "d2"
    argv = ["detect", "voc", str(r50), "--data", str(voc_root), "--backend", "detectron2", *TINY,
            "--set", "max_iter=3", "--out", str(out)]
    env = tagged_env()[0]

    def leoclr(*extra, prelude=""):
        proc = cli([*argv, *extra], env, prelude=prelude)
        stdout, stderr = proc.communicate(timeout=600)
        return proc.returncode, stdout, stderr

    code, stdout, err = leoclr(prelude=signal_at_call("detectron2.engine.train_loop:SimpleTrainer.run_step", 2))
    assert code == EXIT_PREEMPTED, err
    state = out / "trial-0" / "checkpoints" / "state_e0000_s000002.safetensors"
    assert err.strip().splitlines()[-1] == (f"stopped: SIGTERM at iteration 2 of 3; checkpoint {state} written; "
                                            "continue with --resume auto")
    assert "Traceback" not in stdout + err and sorted(state.parent.iterdir()) == [state]

    code, stdout, err = leoclr("--resume", "auto",
                               prelude=signal_at_call("detectron2.evaluation:inference_on_dataset", 1))
    assert code == EXIT_PREEMPTED, err
    assert "Starting training from iteration 2" in stdout
    assert err.strip().splitlines()[-1].startswith("stopped: SIGTERM during detection on the test split")
    assert [s.name for s in state.parent.iterdir()] == ["state_e0000_s000003.safetensors"]

    code, stdout, err = leoclr("--resume", "auto")
    assert code == 0, err
    assert "Starting training" not in stdout  # resumed after the last iteration: only PreciseBN and the test
    check_run(out, "voc", "detectron2")
    iterations = [json.loads(line)["iteration"]
                  for line in (out / "trial-0" / "metrics.jsonl").read_text().splitlines()]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 2
    assert not (out / "trial-0" / "checkpoints").exists()


# --------------------------------------------------------------------------- bad inputs


def test_missing_vocdevkit_is_one_line(r50, tmp_path, capsys):
    code, _, err = run(["detect", "voc", str(r50), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
                       capsys)
    assert "nope" in error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_missing_voc2012_is_one_line(r50, tmp_path, capsys):
    root = fakedata.make_voc(tmp_path / "d", per_split={"2007-trainval": 1, "2007-test": 1})
    code, _, err = run(["detect", "voc", str(r50), "--data", str(root), "--out", str(tmp_path / "r")], capsys)
    assert "VOC2012" in error_line(code, err)


@pytest.mark.parametrize("argv, needle", [
    (["detect", "pascal"], "pascal"),
    (["detect", "voc", "--schedule", "2x"], "schedule"),
    (["detect", "voc", "--backend", "mmdet"], "backend"),
])
def test_bad_detect_arguments(argv, needle, r50, voc_root, tmp_path, capsys):
    argv = argv[:2] + [str(r50), "--data", str(voc_root), "--out", str(tmp_path / "r")] + argv[2:]
    code, _, err = run(argv, capsys)
    assert needle in error_line(code, err)


def test_wrong_arch_backbone_is_one_line(voc_root, tmp_path, capsys):
    bb = tmp_path / "r18.safetensors"
    ckpt.save_backbone(bb, build_backbone("resnet18"), arch="resnet18", cifar_stem=False, method="leoclr", epoch=1,
                       protocol_json="{}")
    code, _, err = run(["detect", "voc", str(bb), "--data", str(voc_root), "--out", str(tmp_path / "r")], capsys)
    assert "resnet18" in error_line(code, err)


def test_detectron2_backend_asked_but_missing(r50, voc_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(d2b, "import_error", lambda: "ModuleNotFoundError: No module named 'detectron2'")
    code, _, err = run(["detect", "voc", str(r50), "--data", str(voc_root), "--backend", "detectron2", "--out",
                        str(tmp_path / "r")], capsys)
    assert "Detectron2 cannot be imported" in error_line(code, err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name, iters, steps, dataset", [("detect_voc_r50c4_24k", 24000, [18000, 22000], "voc"),
                                                         ("detect_coco_r50c4_1x", 90000, [60000, 80000], "coco"),
                                                         ("detect_coco_r50c4_2x", 180000, [120000, 160000], "coco")])
def test_shipped_detection_protocols(name, iters, steps, dataset):
    from leoclr_cli.config.catalog import installed as protocol_file
    from leoclr_cli.config import load_protocol

    p = load_protocol("detect", protocol_file(name + ".yaml"), {"root": "x"})
    assert p.dataset == dataset and p.norm == "naiveSyncBN" and p.extra_norm and p.freeze_at == 0 and p.precise_bn
    assert p.pixel_mean == (123.675, 116.28, 103.53) and p.pixel_std == (58.395, 57.12, 57.375)
    s = p.solver(8)
    assert (s["ims_per_batch"], s["base_lr"], s["max_iter"], s["steps"]) == (16, 0.02, iters, steps)
    assert p.train_sizes()[0] == (480 if dataset == "voc" else 640) and p.train_sizes()[-1] == p.min_size_test == 800


def noisy_detections(records, num_classes, seed=0):
    """Per record: each ground-truth box shifted a little (some far off), a false positive of another
    class, distinct scores with 3 decimals and boxes with 1 decimal (what Detectron2's VOC evaluator writes)."""
    rng = np.random.default_rng(seed)
    dets, used = [], set()
    for r in records:
        boxes, scores, labels = [], [], []
        for a in r["annotations"]:
            shift = rng.choice([0.0, 1.0, 3.0, 12.0])
            boxes.append([round(v + shift * rng.uniform(-1, 1), 1) for v in a["bbox"]])
            labels.append(a["category_id"])
            boxes.append([5.0, 5.0, 30.0, 25.0])
            labels.append((a["category_id"] + 1) % num_classes)
        for _ in boxes:
            k = int(rng.integers(1, 1000))
            while k in used:
                k = int(rng.integers(1, 1000))
            used.add(k)
            scores.append(k / 1000)
        dets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
                     "labels": torch.tensor(labels, dtype=torch.int64)})
    return dets


def detectron2_scores(spec, dets, tmp_path):
    """Feed ``dets`` to Detectron2's own evaluator of the spec's test records."""
    from detectron2.structures import Boxes, Instances

    name = f"leoclr_eval_{spec['dataset']}"
    d2b._register(name, spec["test"], spec["classes"])
    evaluator = d2b.test_evaluator(spec, name, tmp_path)
    evaluator.reset()
    for r, d in zip(spec["test"], dets):
        inst = Instances((r["height"], r["width"]), pred_boxes=Boxes(d["boxes"]), scores=d["scores"],
                         pred_classes=d["labels"])
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    return d2b.bbox_metrics(evaluator.evaluate())


@needs_d2
def test_detectron2_evaluators_give_our_ap_on_the_same_detections(tmp_path, monkeypatch):
    from leoclr_cli.detection.datasets import VOC_CLASSES
    from leoclr_cli.detection.run import evaluate

    # VOC: every one of the 20 classes in the test set (Detectron2 averages over all of them)
    monkeypatch.setattr(fakedata, "VOC_FAKE_CLASSES", list(VOC_CLASSES))
    voc = fakedata.make_voc(tmp_path / "voc", per_split={"2007-test": 40})
    test = read_voc(voc, "2007-test")
    assert {a["category_id"] for r in test for a in r["annotations"]} == set(range(20))
    assert any(a["difficult"] for r in test for a in r["annotations"])
    spec = {"dataset": "voc", "protocol": DetectProtocol(root=str(voc)), "test": test, "classes": list(VOC_CLASSES)}
    dets = noisy_detections(test, 20)
    ours = evaluate(spec, dets)
    theirs = detectron2_scores(spec, dets, tmp_path / "t-voc")
    assert 10 < ours["AP"] < 90 and ours["AP50"] > ours["AP75"] > 0  # neither trivial nor perfect
    assert {k: theirs[k] for k in ("AP", "AP50", "AP75")} == pytest.approx({k: ours[k] for k in theirs}, abs=1e-6)
    # only the first images tested (max_test_images): the evaluator's image list follows. Detectron2 averages
    # over all 20 classes (an absent one has AP 0), ours over the classes present
    few = {**spec, "test": test[:7]}
    present = len({a["category_id"] for r in few["test"] for a in r["annotations"] if not a["difficult"]})
    assert present < 20
    ours_few = evaluate(few, dets[:7])
    assert detectron2_scores(few, dets[:7], tmp_path / "t-few") == pytest.approx(
        {k: ours_few[k] * present / 20 for k in ("AP", "AP50", "AP75")}, abs=1e-6)

    coco = fakedata.make_coco(tmp_path / "coco", per_split={"val2017": 12})
    records, names, cat_ids = read_coco(coco, "val2017")
    spec = {"dataset": "coco", "test": records, "classes": names, "cat_ids": cat_ids,
            "ann_file": str(coco / "annotations" / "instances_val2017.json")}
    dets = noisy_detections(records, len(names), seed=1)
    ours = evaluate(spec, dets)
    theirs = detectron2_scores(spec, dets, tmp_path / "t-coco")
    assert 10 < ours["AP"] < 90
    assert theirs == pytest.approx(ours, abs=1e-6)
