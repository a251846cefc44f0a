"""Protocols by name from any directory, `leoclr protocols` (list, show, --fields), the closest known field
for an unknown one, and each flag's --help naming its protocol field and default."""

import yaml

from cliutil import error_line, run
from leoclr_cli.config import PROTOCOLS, installed, installed_dir, known_fields, load_protocol


def test_a_protocol_by_name_is_found_from_any_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["pretrain", "-p", "quickstart", "--set", "optim.lr=-1", "--out", "r"], capsys)
    line = error_line(code, err)
    assert str(installed("quickstart")) in line and "optim.lr" in line  # the installed file was read
    assert not (tmp_path / "r").exists()


def test_a_relative_path_missing_here_falls_back_to_the_installed_file_and_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["pretrain", "-p", "protocols/quickstart.yaml", "--set", "optim.lr=-1"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == ("note: protocols/quickstart.yaml does not exist here; using the installed protocol "
                        "quickstart")
    assert lines[1].startswith(f"error: {installed('quickstart')}: field 'optim.lr'")


def test_a_file_here_wins_over_the_installed_protocol_of_its_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "quickstart.yaml").write_text("optim: {lr: -2}\n")
    code, _, err = run(["pretrain", "-p", "protocols/quickstart.yaml"], capsys)
    assert "protocols/quickstart.yaml: field 'optim.lr'" in error_line(code, err) and "-2" in err


def test_an_unknown_name_lists_the_installed_ones(capsys):
    code, _, err = run(["pretrain", "-p", "quickstrat"], capsys)
    line = error_line(code, err)
    assert line == ("error: protocol 'quickstrat' is neither a file nor an installed protocol; did you mean "
                    "'quickstart'? (leoclr protocols lists them)")


def test_protocols_lists_every_installed_file_with_its_kind_and_purpose(capsys):
    code, out, _ = run(["protocols"], capsys)
    assert code in (0, None)
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = sorted(p.stem for p in installed_dir().glob("*.yaml"))
    assert [r[0].lstrip("| ") for r in rows] == names and len(names) >= 20
    kinds = {r[0].lstrip("| "): r[1] for r in rows}
    assert kinds["quickstart"] == "pretrain" and kinds["linear_cifar10"] == "linear-eval"
    purpose = {r[0].lstrip("| "): r[2].rstrip(" |") for r in rows}
    assert purpose["cifar10_r18_leoclr"] == "Table 6: CIFAR-10, ResNet-18 (CIFAR stem), 800 epochs, leoclr."


def test_protocols_show_prints_every_field_resolved(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["protocols", "show", "quickstart"], capsys)
    assert code in (0, None) and out.startswith(f"# quickstart: {installed('quickstart')}\n")
    tree = yaml.safe_load(out)
    expected = load_protocol("pretrain", installed("quickstart")).model_dump(mode="json")
    assert PROTOCOLS["pretrain"].model_validate(tree).model_dump(mode="json") == expected
    assert tree["optim"]["epochs"] == expected["optim"]["epochs"] and "log" in tree  # defaults filled in


def test_protocols_show_fields_lists_each_field_with_type_value_and_description(capsys):
    code, out, _ = run(["protocols", "show", "quickstart", "--fields"], capsys)
    assert code in (0, None)
    rows = {r[0].strip("| "): [c.strip() for c in r] for r in
            (line.split(" | ") for line in out.splitlines() if line.startswith("| "))}
    assert set(known_fields(PROTOCOLS["pretrain"])) <= set(rows)
    epochs = load_protocol("pretrain", installed("quickstart")).optim.epochs
    assert rows["optim.epochs"][1:3] == ["int", str(epochs)]
    assert rows["device"][1] == "auto / cpu / cuda"
    assert rows["checkpoint_every"][3].startswith("epochs between resumable checkpoints")
    assert rows["log.tensorboard"][1:3] == ["bool", "False"]


def test_protocols_show_a_kind_gives_its_built_in_defaults(capsys):
    code, out, _ = run(["protocols", "show", "knn"], capsys)
    assert code in (0, None) and out.startswith("# the built-in defaults of a knn protocol")
    assert yaml.safe_load(out)["k"] == PROTOCOLS["knn"].model_fields["k"].default


def test_an_unknown_field_from_set_names_set_and_the_closest_field(capsys, tmp_path):
    code, _, err = run(["pretrain", "--set", "log.tensorbord=true", "--out", str(tmp_path / "r")], capsys)
    assert error_line(code, err) == ("error: --set log.tensorbord: unknown field 'log.tensorbord'; did you mean "
                                     "'log.tensorboard'?")


def test_an_unknown_field_from_the_file_names_the_file(capsys, tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("optim:\n  epochs: 3\n  lrr: 0.1\n")
    code, _, err = run(["pretrain", "-p", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert error_line(code, err) == f"error: {bad}: unknown field 'optim.lrr'; did you mean 'optim.lr'?"


def test_an_unknown_field_far_from_any_suggests_nothing(capsys, tmp_path):
    code, _, err = run(["pretrain", "--set", "zzzz=1", "--out", str(tmp_path / "r")], capsys)
    assert error_line(code, err) == "error: --set zzzz: unknown field 'zzzz'"


def test_help_names_the_protocol_field_and_its_default_or_the_given_protocols_value(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run(["pretrain", "--help"], capsys)
    default = PROTOCOLS["pretrain"]().optim.epochs
    assert f"training epochs (protocol field optim.epochs, default {default})" in out
    _, out, _ = run(["pretrain", "-p", "quickstart", "--help"], capsys)
    epochs = load_protocol("pretrain", installed("quickstart")).optim.epochs
    assert epochs != default and f"(protocol field optim.epochs, {epochs} in quickstart)" in out
    _, out, _ = run(["quickstart", "--help"], capsys)  # it always reads quickstart.yaml: its values, not the model's
    assert f"(protocol field optim.epochs, {epochs} in quickstart)" in out
    _, out, _ = run(["linear-eval", "--help"], capsys)
    assert "(protocol field epochs, default 100)" in out and "(protocol field optim.epochs" not in out
