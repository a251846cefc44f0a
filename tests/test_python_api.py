"""docs/python-api.md runs as written: its Python blocks, in order, in one namespace, on tiny built-in data
and a folder of photos (the page's ``photos``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fakedata import make_photos

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_python_api_page_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos", n=8, size=32)
    code = blocks()
    assert len(code) >= 4
    namespace: dict = {}
    for block in code:
        exec(compile(block, str(PAGE), "exec"), namespace)
    out = capsys.readouterr().out
    assert "own-data recipe" in out and "8 images embedded" in out
    assert re.search(r"linear top-1 \d+\.\d%, kNN top-1 \d+\.\d%", out)
    # what the page's calls wrote: the same files the commands write
    assert json.loads((tmp_path / "runs/api/result.json").read_text())["epochs"] == 1
    assert (tmp_path / "runs/api/linear-eval/linear.safetensors").is_file()
    assert namespace["features"].shape == (8, 512) and namespace["labels"].tolist() == [-1] * 8
    assert namespace["mine"].data.source == "folder" and namespace["mine"].method.queue_size == 16  # tiny's


def test_the_api_module_names_every_function_the_page_uses():
    import leoclr_cli.api as api

    used = set(re.findall(r"from leoclr_cli\.api import ([\w, ]+)", PAGE.read_text()))
    names = {n.strip() for group in used for n in group.split(",")}
    assert names and names <= set(api.__all__) and all(callable(getattr(api, n)) for n in api.__all__)
