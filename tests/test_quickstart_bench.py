"""`leoclr quickstart` and `leoclr bench` end to end (small settings)."""

import json
import shutil

import pytest

from leoclr_cli.cli import main
from leoclr_cli.config import load_protocol
from leoclr_cli.core.rundir import RunDir
from leoclr_cli.evaluate.linear import finished_probe


SMALL = ["--epochs", "1", "--set", "data.builtin_train=192", "--set", "data.builtin_test=64",
         "--set", "optim.batch_size=32", "--set", "method.queue_size=64", "--set", "data.num_workers=0", "--quiet"]


def test_quickstart_compares_methods_over_seeds_and_reuses_runs(tmp_path, capsys, small_probe, monkeypatch):
    out = tmp_path / "qs"
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--seeds", "2", "--out", str(out), *SMALL])
    assert exc.value.code in (0, None)
    table = capsys.readouterr().out
    assert "| backbone | top-1 % | SE | top-5 % |" in table
    assert "leoclr, 1 epochs" in table and "mocov2, 1 epochs" in table and "random init" in table
    result = json.loads((out / "quickstart.json").read_text())
    runs, summary = result["runs"], result["summary"]
    assert [(r["method"], r["seed"]) for r in runs] == [(m, s) for s in (0, 1) for m in ("leoclr", "mocov2", "random-init")]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in runs)
    # the standard error of each top-1 follows from the 64 test images it was measured on
    assert all(r["top1_se"] == pytest.approx(100 * (r["top1"] / 100 * (1 - r["top1"] / 100) / 64) ** 0.5) for r in runs)
    assert set(result["crop_coverage"]) == {"miss", "cut", "hold"}
    assert sum(result["crop_coverage"].values()) == pytest.approx(100)
    assert [row["name"] for row in summary] == ["leoclr, 1 epochs", "mocov2, 1 epochs", "random init"]
    for row in summary:
        per_seed = [r["top1"] for r in runs if r["name"] == row["name"]]
        assert row["top1_per_seed"] == per_seed and row["top1"] == pytest.approx(sum(per_seed) / 2)
        # captured stdout is not a terminal: a Markdown table, one unwrapped line per row
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {row['name']} |"))
        assert f"| {row['top1']:.1f} ± {row['top1_std']:.1f} |" in line
    for s in (0, 1):
        for d in ("leoclr", "mocov2"):
            assert (out / f"seed-{s}" / d / "backbone.safetensors").is_file()
        lin = json.loads((out / f"seed-{s}" / "random-init" / "linear-eval" / "result.json").read_text())
        assert lin["method"] == "random-init"
    # the seeds give different runs, each method of a seed the same data and probe
    assert runs[0]["top1"] != runs[3]["top1"] or runs[1]["top1"] != runs[4]["top1"]
    # a second call reuses the finished runs and reports the same numbers, without extracting a feature again,
    # and so does a call on a copy of the runs elsewhere
    def no_features(*args, **kwargs):
        raise AssertionError("a finished probe extracted features again")

    monkeypatch.setattr("leoclr_cli.evaluate.linear.extract", no_features)
    copy = tmp_path / "copied"
    shutil.copytree(out, copy)
    for where in (out, copy):
        with pytest.raises(SystemExit) as exc:
            main(["quickstart", "--seeds", "2", "--out", str(where), *SMALL])
        assert exc.value.code in (0, None)
        again = json.loads((where / "quickstart.json").read_text())["runs"]
        assert [r["top1"] for r in again] == [r["top1"] for r in runs]
    # another backbone, or another probe protocol, is not that finished probe
    probe_run = RunDir(copy / "seed-0" / "leoclr" / "linear-eval")
    lin = load_protocol("linear-eval", probe_run.protocol_file)
    assert finished_probe(lin, copy / "seed-0" / "leoclr" / "backbone.safetensors", probe_run)["top1"] == runs[0]["top1"]
    assert finished_probe(lin, copy / "seed-0" / "mocov2" / "backbone.safetensors", probe_run) is None
    assert finished_probe(lin.model_copy(update={"epochs": lin.epochs + 1}),
                          copy / "seed-0" / "leoclr" / "backbone.safetensors", probe_run) is None


def test_quickstart_summary_means_stds_and_whether_gaps_hold():
    from leoclr_cli.workflows.quickstart import summarise

    runs = [{"name": n, "seed": s, "top1": v, "top5": 90.0, "wall_s": 1.0}
            for s, (a, b, c) in enumerate([(60.0, 50.0, 49.0), (62.0, 51.0, 45.0), (64.0, 52.0, 47.0)])
            for n, v in (("a", a), ("b", b), ("c", c))]
    rows = summarise(runs)
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["top1"] == pytest.approx(62.0) and rows[0]["top1_std"] == pytest.approx(2.0)
    assert rows[0]["gap_to_next"] == pytest.approx(11.0) and rows[0]["gap_to_next_std"] == pytest.approx(1.0)
    assert rows[0]["gap_holds"] is True  # 11 > 2 * max(2, 1)
    assert rows[1]["gap_to_next"] == pytest.approx(4.0) and rows[1]["gap_holds"] is False  # 4 < 2 * 2
    assert "gap_to_next" not in rows[2] and "gap_to_random" not in rows[0]  # no random-init row: no floor
    single = summarise([r for r in runs if r["seed"] == 0])
    assert single[0]["top1_std"] is None and single[0]["gap_holds"] is None
    # with a random-init row, each pretrained row is compared with it, and the next pretrained row with the next
    floor = [{**r, "name": "random init" if r["name"] == "c" else r["name"]} for r in runs]
    rows = summarise(floor)
    assert rows[0]["gap_to_next"] == pytest.approx(11.0) and "gap_to_next" not in rows[1]
    assert rows[0]["gap_to_random"] == pytest.approx(15.0) and rows[0]["gap_to_random_holds"] is True  # 15 > 2 * 2
    assert rows[1]["gap_to_random"] == pytest.approx(4.0) and rows[1]["gap_to_random_holds"] is False  # 4 < 2 * 2
    assert "gap_to_random" not in rows[2]


def test_bench_reports_both_methods(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cpu", "--size", "16", "--view-size", "16", "-b", "8", "--steps", "1",
              "--images", "4", "--rounds", "1", "--json", str(tmp_path / "b.json")])
    printed = capsys.readouterr().out
    assert "LeOCLR/MoCo-v2 cost per sample" in printed
    data = json.loads((tmp_path / "b.json").read_text())
    rows, ratio = data["rows"], data["train_step_cost_ratio"]
    # a Markdown table (stdout is not a terminal): the header, then one line per row, no cell wrapped
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table[0].startswith("| what | device | mocov2 samples/s | leoclr samples/s |")
    assert len(table) == 2 + len(rows)
    assert [line.split(" | ")[0][2:] for line in table[2:]] == [r["what"] for r in rows]
    assert data["settings"]["view_size"] == 16
    kinds = [r["what"].split(":")[0].split(" (")[0] for r in rows]
    assert kinds == ["views"] * 6 + ["train step"] + ["end to end"] * 3
    assert all(r["mocov2"] > 0 and r["leoclr"] > 0 for r in rows)
    assert "MoCo's loader" in rows[0]["what"]
    assert rows[0]["vs_reference"] == 1.0 and all(r["vs_reference"] > 0 for r in rows[:6])
    # LeOCLR with 4 local crops: on our view rows and the train step (MoCo's loader and end to end: blank)
    assert "| leoclr +4 local samples/s | +4 local / leoclr cost |" in table[0]
    assert "leoclr_local" not in rows[0] and all(r["leoclr_local"] > 0 for r in rows[1:7])
    assert all("leoclr_local" not in r for r in rows[7:])
    assert all(r["peak_gib"] is None and r["gpu_util"] is None for r in rows[6:])  # blank on the CPU
    assert ratio == pytest.approx(rows[6]["mocov2"] / rows[6]["leoclr"]) == rows[6]["cost"]  # one round
    assert data["complete"] and data["settings"]["rounds"] == 1 and data["settings"]["amp"] == "off"
    assert all(r["rounds"] == 1 and r["cost_spread"] == [pytest.approx(r["cost"])] * 2 for r in rows)
    assert " (" in table[2].split(" | ")[4]  # the ratio's range beside it
    # the tensor backend's two parts in series: slower than either alone
    assert rows[5]["leoclr"] < min(rows[3]["leoclr"], rows[4]["leoclr"])
