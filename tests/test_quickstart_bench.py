"""`leoclr quickstart` and `leoclr bench` end to end (small settings)."""

import json

import pytest

from leoclr_cli.bench import run_bench
from leoclr_cli.cli import main


def test_quickstart_table_and_reuse(tmp_path, capsys):
    out = tmp_path / "qs"
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--epochs", "1", "--out", str(out), "--quiet"])
    assert exc.value.code in (0, None)
    table = capsys.readouterr().out
    assert "leoclr, 1 epochs" in table and "random init" in table
    rows = json.loads((out / "quickstart.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["leoclr, 1 epochs", "random init"]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    assert (out / "pretrain" / "backbone.safetensors").is_file()
    # a second call reuses the finished runs and reports the same numbers
    with pytest.raises(SystemExit):
        main(["quickstart", "--epochs", "1", "--out", str(out), "--quiet"])
    again = json.loads((out / "quickstart.json").read_text())["rows"]
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]


def test_bench_reports_both_methods(tmp_path):
    rows, ratio = run_bench(device="cpu", arch="resnet18", size=16, batch_size=8, steps=1, images=4)
    assert [r["what"].split(" ")[0] for r in rows] == ["view", "train", "end"]
    assert all(r["mocov2"] > 0 and r["leoclr"] > 0 for r in rows)
    assert ratio == pytest.approx(rows[1]["mocov2"] / rows[1]["leoclr"])
