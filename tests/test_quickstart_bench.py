"""`leoclr quickstart` and `leoclr bench` end to end (small settings)."""

import json

import pytest

from leoclr_cli.cli import main


def test_quickstart_table_and_reuse(tmp_path, capsys):
    out = tmp_path / "qs"
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--epochs", "1", "--out", str(out), "--quiet"])
    assert exc.value.code in (0, None)
    table = capsys.readouterr().out
    rows = json.loads((out / "quickstart.json").read_text())["rows"]
    # captured stdout is not a terminal: a Markdown table, one unwrapped line per row
    assert "| backbone | top-1 % | top-5 % | wall time |" in table.splitlines()
    for r in rows:
        assert f"| {r['name']} | {r['top1']:.1f} | {r['top5']:.1f} | {r['wall_s']:.0f} s |" in table.splitlines()
    assert [r["name"] for r in rows] == ["leoclr, 1 epochs", "random init"]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    assert (out / "pretrain" / "backbone.safetensors").is_file()
    # a second call reuses the finished runs and reports the same numbers
    with pytest.raises(SystemExit):
        main(["quickstart", "--epochs", "1", "--out", str(out), "--quiet"])
    again = json.loads((out / "quickstart.json").read_text())["rows"]
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]


def test_bench_reports_both_methods(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cpu", "--size", "16", "--view-size", "16", "-b", "8", "--steps", "1",
              "--images", "4", "--json", str(tmp_path / "b.json")])
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
    assert all(r["peak_gib"] is None and r["gpu_util"] is None for r in rows[6:])  # blank on the CPU
    assert ratio == pytest.approx(rows[6]["mocov2"] / rows[6]["leoclr"])
    # the tensor backend's two parts in series: slower than either alone
    assert rows[5]["leoclr"] < min(rows[3]["leoclr"], rows[4]["leoclr"])
