"""leoclr report: paper tables with our numbers in the right rows, gaps for missing runs, PNG figures."""

import json
import types
import typing

import numpy as np
import pytest
from PIL import Image

from leoclr_cli.cli import main
from leoclr_cli.core.results import FORMER_KINDS, RESULT_KINDS

IN1K = {"dataset": "imagefolder", "num_classes": 1000}
R50 = {"arch": "resnet50", "pretrain_schedule": "cosine"}


def placeholder(annotation):
    """A value of the type ``annotation`` that no table shows: None where allowed, else zero or empty."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        return None
    origin = typing.get_origin(annotation) or annotation
    return {int: 0, float: 0.0, str: "", bool: False, list: [], dict: {}}[origin]


#: what a run writes for the fields the report checks a protocol by (MoCo's linear protocol)
AS_RUN = {"probe": "sgd", "selected_on": "val"}


def complete(result):
    """A result with the fields a table does not read filled in and the keys its kind never writes left out, so
    that it is a valid record of its kind (the report reads result.json through the result models)."""
    model = RESULT_KINDS.get(FORMER_KINDS.get(result.get("kind"), result.get("kind")))
    if model is None:
        return result
    filled = {name: AS_RUN.get(name, placeholder(info.annotation)) for name, info in model.model_fields.items()
              if info.is_required()}
    return {**filled, **{k: v for k, v in result.items() if k in model.model_fields}}  # as the model writes it


def put(root, rel, result, protocol=None):
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(json.dumps(complete(result)))
    if protocol is not None:
        (d / "protocol.yaml").write_text(protocol)
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    put(root, "in1k-leoclr/linear-eval", {"kind": "linear-eval", "method": "leoclr", **IN1K, **R50, "pretrain_epoch": 800,
                                          "pretrain_batch_size": 256, "probe": "sgd", "feature_norm": "none",
                                          "selected_on": "val", "top1": 12.34, "top1_last": 12.0, "top5": 30.0})
    put(root, "in1k-leoclr/linear-eval/crop-test", {"kind": "crop-test", "method": "leoclr", **IN1K, **R50,
                                                    "pretrain_epoch": 200, "center_top1": 11.11, "random_top1": 9.99,
                                                    "drop": 1.12})
    put(root, "c10-moco/linear-eval", {"kind": "linear-eval", "method": "mocov2", "dataset": "cifar10",
                                       "arch": "resnet18", "num_classes": 10, "pretrain_epoch": 10, "top1": 55.55})
    for labels, top1, top5 in ((1, 5.5, 15.0), (10, 20.25, 40.0), (50, 33.0, 60.0)):
        # a finetune result names its dataset (a required field of FinetuneResult)
        put(root, f"ft/labels_{labels}pct", {"kind": "finetune", "method": "leoclr", "labels": labels, **R50,
                                             "dataset": "imagefolder",
                                             "pretrain_epoch": 800, "fraction": labels / 100, "num_classes": 1000,
                                             "top1": top1, "top5": top5},
            protocol="kind: finetune\ndata: {source: imagefolder}\n")
    put(root, "tr/cifar10", {"kind": "transfer", "method": "leoclr", "dataset": "cifar10", "mode": "finetune", **R50,
                             "pretrain_epoch": 800, "metric": "top1", "value": 88.8})
    put(root, "tr/pets-linear", {"kind": "transfer", "method": "leoclr", "dataset": "pets", "mode": "linear", **R50,
                                 "pretrain_epoch": 800, "metric": "mean_per_class", "value": 40.0})
    put(root, "voc", {"kind": "detection", "method": "leoclr", "dataset": "voc", **R50, "pretrain_epoch": 800,
                      "solver": {"max_iter": 48000, "ims_per_batch": 8}, "AP50": 70.1, "AP": 40.2, "AP75": 45.3})
    ab = put(root, "ablate-color", {"kind": "ablate", "method": "leoclr", "dataset": "builtin", "pretrain_epochs": 5,
                                    "removed": ["color"], "top1": 20.0, "baseline_top1": 23.5, "drop": 3.5})
    # the ablation's own linear eval must not pass for a full-augmentation ImageNet run
    put(ab, "pretrain/linear-eval", {"kind": "linear-eval", "method": "leoclr", **IN1K, **R50, "pretrain_epoch": 800,
                                     "top1": 99.99})
    put(root, "odd", {"kind": "something-else"})
    return root


def section(md, title_start):
    start = md.index(f"### {title_start}")
    end = md.find("\n###", start + 1)
    return md[start:end if end > 0 else None]


def row(md, title_start, approach):
    for line in section(md, title_start).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == approach:
            return cells
    raise AssertionError(f"no row {approach!r} in {title_start}")


def call(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code or 0, capsys.readouterr().err


def test_report_tables_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "report"
    code, err = call(["report", runs, "--out", out], capsys)
    assert code == 0, err
    md = (out / "report.md").read_text()

    # Table 1: paper columns (epochs, batch, accuracy), then ours (epochs, batch, top-1), then the run
    assert row(md, "Table 1", "LeOCLR (ours)")[1:7] == ["800", "256", "76.2", "800", "256", "12.34"]
    assert row(md, "Table 1", "LeOCLR (ours)")[7].endswith("in1k-leoclr/linear-eval")
    assert row(md, "Table 1", "LeOCLR (ours)")[8] == "imagenet, resnet50, 800 ep, cosine, batch 256"
    assert row(md, "Table 1", "MoCo-v2")[1:] == ["800", "256", "71.1", "—", "—", "—", "—", "—"]  # no run: gaps
    assert "99.99" not in md  # the ablation's inner linear eval feeds nothing but the ablation
    assert row(md, "Table 2", "LeOCLR (ours)")[1:5] == ["62.8", "71.5", "5.50", "20.25"]
    t3 = row(md, "Table 3", "LeOCLR (ours)")
    assert t3[1:6] == ["98.1", "86.9", "91.6", "76.8", "92.1"] and t3[6] == "88.80"
    assert t3[7:11] == ["—"] * 4  # Pets only in linear mode: not the paper's fine-tuning protocol
    assert row(md, "Table 3", "DINO")[4] == "—"  # the paper's own gap (Birdsnap) stays a gap
    # 48000 iterations of 8 images: the 24k schedule rescaled to half the GPUs, the paper's protocol
    assert row(md, "Table 4", "LeOCLR (ours)")[1:7] == ["83.2", "57.5", "64.2", "70.10", "40.20", "45.30"]
    assert row(md, "Table 4", "LeOCLR (ours)")[8] == "voc, resnet50, 800 ep, 48000 it x 8 img"
    # 10 epochs are not Table 6's 800: a row of its own, never the paper's MoCo-v2 row
    assert row(md, "Table 6", "MoCo-v2")[3:7] == ["—"] * 4
    other = row(md, "Table 6", "MoCo-v2, another protocol: 10 pretraining epochs, not 800")
    assert other[1:7] == ["", "", "—", "—", "10", "55.55"] and other[8] == "cifar10, resnet18, 10 ep, schedule ?"
    assert row(md, "Table 7", "LeOCLR (ours)")[1:8] == ["71.7", "68.9", "81h", "200", "11.11", "9.99", "1.12"]
    assert row(md, "Table 9", "LeOCLR (ours)")[4:7] == ["—", "—", "—"]
    fig4 = section(md, "Figure 4")
    assert "| 3.50 |" in fig4 and "| 28.0 |" in fig4 and "| 25.1 |" in fig4
    assert "something-else" in md  # unrecognised files are listed, not silently dropped

    for name in ("figure3_label_fractions.png", "figure4_augmentation_drop.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            assert len(np.unique(np.asarray(im.convert("L")))) > 2  # something is drawn

    from leoclr_cli.report.report import build_report

    r = build_report([runs], tmp_path / "again")
    ours = [s for s in r["figure3"] if s["label"].startswith("ours")]
    assert [(s["panel"], s["x"], s["y"]) for s in ours] == [("top1", [1, 10, 50], [5.5, 20.25, 33.0]),
                                                            ("top5", [1, 10, 50], [15.0, 40.0, 60.0])]
    assert sorted(len(s["x"]) for s in r["figure3"] if s["label"].startswith("paper")) == [2, 2]
    assert sorted(round(b["height"], 2) for b in r["figure4"]) == [3.5, 25.1, 28.0]


def test_report_refuses_to_overwrite_and_names_missing_dirs(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert call(["report", runs, "--out", out], capsys)[0] == 0
    code, err = call(["report", runs, "--out", out], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert call(["report", runs, "--out", out, "--force"], capsys)[0] == 0
    code, err = call(["report", tmp_path / "nope", "--out", tmp_path / "r2"], capsys)
    assert code == 2 and "nope" in err and not (tmp_path / "r2").exists()


def test_report_overlays_the_training_curves_of_its_pretraining_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    series = {"leo": [{"epoch": e, "loss": 5.0 - e, "lr": 0.03 / e} for e in (1, 2, 3)],
              "moco": [{"epoch": e, "loss": 6.0 - e, "lr": 0.03, **({"knn_top1": 10.0 * e} if e % 2 else {})}
                       for e in (1, 2, 3, 4)]}
    for name, records in series.items():
        d = put(root, name, {"kind": "pretrain", "method": "leoclr" if name == "leo" else "mocov2", "epochs": 4})
        # the last line torn by a kill is ignored, as everywhere metrics.jsonl is read
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in records) + '{"epoch": 9, "lo')
    from leoclr_cli.report.report import build_report

    r = build_report([root], tmp_path / "report")
    plotted = {(s["panel"], s["label"].split(" ")[0].rsplit("/", 1)[-1]): (s["x"], s["y"]) for s in r["curves"]}
    assert plotted == {("loss", "leo"): ([1, 2, 3], [4.0, 3.0, 2.0]), ("lr", "leo"): ([1, 2, 3], [0.03, 0.015, 0.01]),
                       ("loss", "moco"): ([1, 2, 3, 4], [5.0, 4.0, 3.0, 2.0]),
                       ("lr", "moco"): ([1, 2, 3, 4], [0.03] * 4), ("knn_top1", "moco"): ([1, 3], [10.0, 30.0])}
    assert "training_curves.png" in (tmp_path / "report" / "report.md").read_text()
    with Image.open(tmp_path / "report" / "training_curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 3 * im.size[1] / 2
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # coloured lines drawn


def test_runs_off_the_papers_protocol_get_labelled_rows_of_their_own(runs, tmp_path, capsys):
    """A 4-iteration detection run, 3 epochs on the built-in data, a cached-feature probe: each is printed in a
    row that says how it differs, and the paper's "LeOCLR (ours)" row keeps only the run that follows the paper."""
    put(runs, "voc-smoke", {"kind": "detection", "method": "leoclr", "dataset": "voc", **R50, "pretrain_epoch": 800,
                            "solver": {"max_iter": 4, "ims_per_batch": 2}, "AP50": 1.5, "AP": 0.5, "AP75": 0.25})
    put(runs, "quick/linear-eval", {"kind": "linear-eval", "method": "leoclr", "dataset": "builtin",
                                    "arch": "resnet18", "num_classes": 10, "pretrain_epoch": 3, "top1": 66.6,
                                    "pretrain_schedule": "cosine", "pretrain_batch_size": 128},
        protocol="kind: linear-eval\ntrain_augment: none\n")
    put(runs, "in1k-cached/linear-eval", {"kind": "linear-eval", "method": "leoclr", **IN1K, **R50,
                                          "pretrain_epoch": 800, "probe": "sgd", "feature_norm": "bn", "top1": 77.7})
    out = tmp_path / "report"
    code, err = call(["report", runs, "--out", out], capsys)
    assert code == 0, err
    md = (out / "report.md").read_text()

    assert row(md, "Table 4", "LeOCLR (ours)")[4:7] == ["70.10", "40.20", "45.30"]  # still the full-schedule run
    smoke = row(md, "Table 4", "LeOCLR (ours), another protocol: 4 iterations of 2 images, not 24000 of 16")
    assert smoke[1:7] == ["", "", "", "1.50", "0.50", "0.25"] and smoke[7].endswith("voc-smoke")
    assert smoke[8] == "voc, resnet50, 800 ep, 4 it x 2 img"

    assert row(md, "Table 1", "LeOCLR (ours)")[6] == "12.34"
    quick = row(md, "Table 1", "LeOCLR (ours), another protocol: builtin data, not imagenet; resnet18, not resnet50; "
                               "3 pretraining epochs, not 800; sgd probe, feature_norm None, train_augment none: not "
                               "MoCo's linear protocol")
    assert quick[4:7] == ["3", "128", "66.60"] and quick[8] == "builtin, resnet18, 3 ep, cosine, batch 128"
    cached = [line for line in section(md, "Table 1").splitlines() if "in1k-cached" in line]
    assert len(cached) == 1 and "feature_norm bn" in cached[0] and "77.70" in cached[0]
    # every linear-eval row of the paper tables and of the per-kind table names dataset, arch, epochs, schedule
    per_kind = section(md, "linear-eval")
    assert "| quick/linear-eval | builtin | leoclr | resnet18 | 3 | cosine, batch 128 |" in per_kind.replace(
        str(runs.resolve()) + "/", "")
