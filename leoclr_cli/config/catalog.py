"""Protocols by name and their fields on demand: the protocols installed with leoclr (the repository's
``protocols/``, installed as ``leoclr_cli.protocols``), finding one from any directory (``-p quickstart``,
``-p protocols/quickstart.yaml``), each one's purpose, its fields resolved against the model's defaults,
and the closest known field to a misspelt one."""

from __future__ import annotations

import difflib
import re
import types
import typing
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel

from ..errors import UserError
from .common import Strict

#: the installed protocols' package (the repository's protocols/ directory)
PACKAGE = "leoclr_cli.protocols"
SUFFIXES = (".yaml", ".yml")
#: the longest purpose ``leoclr protocols`` shows (a longer first sentence is cut at a comma)
PURPOSE_WIDTH = 100


def installed_dir() -> Path:
    return Path(str(files(PACKAGE)))


def installed(name: str) -> Path:
    """The installed protocol file of ``name`` (``quickstart`` or ``quickstart.yaml``); it may not exist."""
    return installed_dir() / (name if name.endswith(SUFFIXES) else f"{name}.yaml")


def installed_names() -> list[str]:
    return sorted(p.stem for p in installed_dir().glob("*.yaml"))


def find_protocol(given: Path | str) -> tuple[Path, Optional[str]]:
    """The file ``-p GIVEN`` means, and a note to print when it is not the path as given.

    An existing file is itself. A bare name (``quickstart``) is the installed protocol of that name. A
    relative path that does not exist here (``protocols/quickstart.yaml`` outside the checkout) falls back
    to the installed protocol of its file name, and the note says so."""
    path = Path(given).expanduser()
    if path.is_file():
        return path, None
    bare = len(path.parts) == 1 and not path.name.endswith(SUFFIXES)
    candidate = installed(path.name)
    if candidate.is_file() and (bare or not path.is_absolute()):
        note = None if bare else f"{given} does not exist here; using the installed protocol {candidate.stem}"
        return candidate, note
    if bare:
        near = difflib.get_close_matches(path.name, installed_names(), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UserError(f"protocol '{given}' is neither a file nor an installed protocol; {hint}(leoclr protocols "
                        "lists them)")
    raise UserError(f"protocol file {given} does not exist")


#: the most nodes a YAML document may stand for once its aliases are expanded (a protocol has a few hundred;
#: an "alias bomb" of nested references stands for billions in a few lines)
MAX_YAML_NODES = 100_000
#: the deepest nesting of a YAML document (a protocol nests 3 deep)
MAX_YAML_DEPTH = 50
#: the longest protocol file read (a protocol is a few kB)
MAX_YAML_BYTES = 1 << 20


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses, before building anything, a document nested deeper than
    :data:`MAX_YAML_DEPTH` or standing for more than :data:`MAX_YAML_NODES` nodes with its aliases expanded."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"it nests deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {})
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes ``node`` stands for, aliases expanded (each shared node counted once per reference, computed once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    if n > MAX_YAML_NODES:
        raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_NODES} values")
    sizes[id(node)] = n
    return n


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` within bounds: a yaml.YAMLError for a document too deep, too long or whose aliases
    expand past :data:`MAX_YAML_NODES`."""
    if len(text) > MAX_YAML_BYTES:
        raise yaml.YAMLError(f"it is longer than {MAX_YAML_BYTES} characters")
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise yaml.YAMLError("it nests too deep") from None
    finally:
        loader.dispose()


def read_tree(path: Path) -> dict[str, Any]:
    """A protocol file as a mapping (one sentence when it is missing, unreadable, not a YAML mapping or past
    the bounds of :func:`safe_yaml`)."""
    if not path.is_file():
        raise UserError(f"protocol file {path} does not exist")
    try:
        data = safe_yaml(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"protocol file {path} is not text (not UTF-8)") from None
    except OSError as e:
        raise UserError(f"protocol file {path} could not be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else (f": {e}" if type(e) is yaml.YAMLError else "")
        raise UserError(f"protocol file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"protocol file {path} must hold a mapping of fields, not a {type(data).__name__}")
    return data


def purpose(path: Path) -> str:
    """A protocol's one-line purpose: the first sentence of the comment that opens its file."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    m = re.match(r"(.+?[.!?])(?=\s+[A-Z]|$)", text)
    first = (m.group(1) if m else text) or "(no leading comment)"
    if len(first) <= PURPOSE_WIDTH:
        return first
    cut = max(first.rfind(sep, 0, PURPOSE_WIDTH) for sep in (", ", "; ", " ("))
    return first[:cut if cut > 0 else PURPOSE_WIDTH].rstrip(" ,;") + " ..."


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mapping by mapping."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Every field of ``model`` with its default, in the model's order (a required field: None)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        sub = submodel(info.annotation)
        if sub is not None:
            out[name] = defaults(sub)
        elif info.is_required():
            out[name] = None
        else:
            value = info.get_default(call_default_factory=True)
            out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def submodel(annotation: Any) -> Optional[type[BaseModel]]:
    """The protocol section a field holds (a nested model), if it is one."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def resolved(model: type[BaseModel], path: Optional[Path]) -> dict[str, Any]:
    """The protocol ``path`` (or the model's defaults alone) with every field present: the defaults with
    the file on top, unvalidated (a dataset path the file leaves to ``--data`` stays empty)."""
    tree = defaults(model)
    return merge(tree, read_tree(path)) if path is not None else tree


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: ``int``, ``a / b`` (one of), ``(float, float)``, ``optional str``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " / ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        name = " or ".join(type_name(a) for a in rest)
        return f"optional {name}" if len(rest) < len(args) else name
    if origin is tuple:
        return "(" + ", ".join(type_name(a) for a in args) + ")"
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def field_rows(model: type[BaseModel], tree: dict[str, Any], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted field, type, value in ``tree``, description) of every field of ``model``, sections flattened."""
    rows = []
    for name, info in model.model_fields.items():
        sub = submodel(info.annotation)
        value = tree.get(name) if isinstance(tree, dict) else None
        if sub is not None:
            rows += field_rows(sub, value if isinstance(value, dict) else {}, f"{prefix}{name}.")
        else:
            rows.append((prefix + name, type_name(info.annotation), value, info.description or ""))
    return rows


def known_fields(model: type[BaseModel]) -> list[str]:
    return [row[0] for row in field_rows(model, {})]


def value_at(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def closest(model: type[Strict], dotted: str) -> Optional[str]:
    """The known field of ``model`` closest to the unknown ``dotted`` one (difflib), if any is close."""
    found = difflib.get_close_matches(dotted, known_fields(model), n=1, cutoff=0.6)
    return found[0] if found else None


def listing() -> list[tuple[str, str, str]]:
    """(name, kind, purpose) of every installed protocol."""
    return [(name, str(read_tree(installed(name)).get("kind", "")), purpose(installed(name)))
            for name in installed_names()]


def describe(name: str, models: dict[str, type[Strict]]) -> tuple[type[Strict], Optional[Path], dict[str, Any]]:
    """(model, file, every field resolved) of ``name``: an installed protocol or a file (its ``kind`` names
    its model), or a kind of ``models`` (``pretrain``, ``linear-eval``, ...: its defaults alone)."""
    if name in models and not Path(name).is_file():
        return models[name], None, resolved(models[name], None)
    path = find_protocol(name)[0]
    kind = read_tree(path).get("kind")
    if kind not in models:
        raise UserError(f"protocol file {path} names no kind of protocol (kind: {', '.join(models)})")
    return models[kind], path, resolved(models[kind], path)


def dump(tree: dict[str, Any]) -> str:
    """A protocol mapping as YAML, in its fields' order."""
    return yaml.safe_dump(tree, sort_keys=False)
