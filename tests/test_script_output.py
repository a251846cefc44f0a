"""Output a script can read: result lines never wrapped, --json prints result.json and nothing else."""

import json

from cliutil import run
from leoclr_cli.console import out

KNN = ["--set", "data.builtin_train=64", "--set", "data.builtin_test=32", "--set", "transform.size=32",
       "--set", "transform.resize=32", "--set", "transform.test=none", "--k", "5", "--threads", "1", "--quiet"]


def test_knn_json_is_the_result_file_and_the_line_is_never_wrapped(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setattr(out, "_width", 40)  # a narrow console: a long line would be wrapped without soft wrap
    run_dir = tmp_path / ("a-long-directory-name-so-the-line-is-wider-than-the-console" * 2)
    code, stdout, _ = run(["knn", "random:resnet18", *KNN, "-o", str(run_dir), "--json"], capsys)
    assert code in (0, None)
    written = (run_dir / "result.json").read_text()
    assert stdout == written and json.loads(stdout)["kind"] == "knn"  # only the JSON on stdout
    code, stdout, _ = run(["knn", "random:resnet18", *KNN, "-o", str(run_dir), "--force"], capsys)
    lines = stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) > 40, stdout
    top1 = json.loads((run_dir / "result.json").read_text())["top1"]
    assert f"top-1 {top1:.2f}%, top-5" in lines[0]
