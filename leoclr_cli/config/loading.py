"""Protocols from files and flags: YAML reading, the ``--set`` parser, the one-sentence validation
error, and the protocol written into a run directory (YAML) or a checkpoint header (JSON).

A protocol is a YAML file (see ``protocols/``) plus CLI overrides. :func:`load_protocol` merges
them, validates the result and turns any validation error into one :class:`UserError` sentence
that names the field and the rule.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from ..core.atomic import atomic_write_text
from ..errors import UserError
from .common import Strict
from .detection import DetectProtocol
from .evaluation import CropTestProtocol, FinetuneProtocol, KnnProtocol, LinearEvalProtocol, TransferProtocol
from .pretrain import AblateProtocol, PretrainProtocol

PROTOCOLS: dict[str, type[Strict]] = {
    "pretrain": PretrainProtocol,
    "linear-eval": LinearEvalProtocol,
    "knn": KnnProtocol,
    "detect": DetectProtocol,
    "finetune": FinetuneProtocol,
    "transfer": TransferProtocol,
    "crop-test": CropTestProtocol,
    "ablate": AblateProtocol,
}


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


def _read_yaml(path: Path) -> dict[str, Any]:
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


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating mappings on the way."""
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set a.b=VALUE`` items to a dotted mapping; VALUE is parsed as YAML (numbers, lists, bools)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {excerpt(item)} must look like field.path=value")
        key, raw = item.split("=", 1)
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise UserError(f"--set {excerpt(item)} must look like field.path=value")
        try:
            out[key.strip()] = safe_yaml(raw)
        except yaml.YAMLError as e:
            if type(e) is yaml.YAMLError:  # a bound, not a syntax error: the raw text would hide it
                raise UserError(f"--set {excerpt(key)}: the value is refused: {e}") from None
            out[key.strip()] = raw
    return out


_EXCERPT = reprlib.Repr()
_EXCERPT.maxlevel, _EXCERPT.maxlist, _EXCERPT.maxtuple, _EXCERPT.maxdict = 2, 4, 4, 4
_EXCERPT.maxstring, _EXCERPT.maxother, _EXCERPT.maxlong = 60, 60, 40


def excerpt(value: Any, limit: int = 80) -> str:
    """A short ``repr`` of ``value`` for a message: bounded in length however large or deep ``value`` is."""
    text = _EXCERPT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first error as one sentence: field path, the rule broken, the value given."""
    first = err.errors()[0]
    loc = excerpt(".".join(str(p) for p in first["loc"] if not isinstance(p, int)), 120).strip("'\"")
    msg = first["msg"] if len(first["msg"]) <= 400 else first["msg"][:397] + "..."
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown field '{loc}'"
    given = first.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {excerpt(given)})"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if not loc:  # a rule across fields: its message names them
        return f"{source}: {msg}{more}"
    return f"{source}: field '{loc}': {msg}{shown}{more}"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_protocol(kind: str, path: Optional[Path] = None, overrides: Optional[dict[str, Any]] = None,
                  defaults: Optional[dict[str, Any]] = None) -> Any:
    """Validate a protocol made of, in rising precedence: the model's defaults, dotted ``defaults``
    (e.g. derived from the pretraining run being evaluated), the file ``path``, dotted ``overrides``."""
    model = PROTOCOLS[kind]
    tree: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    file_kind = tree.get("kind")
    if file_kind is not None and file_kind != kind:
        raise UserError(f"protocol file {path} is a '{file_kind}' protocol, not a '{kind}' one")
    base: dict[str, Any] = {}
    for dotted, value in (defaults or {}).items():
        if value is not None:
            set_dotted(base, dotted, value)
    tree = _merge(base, tree)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise UserError(format_validation_error(e, str(path) if path else f"{kind} protocol")) from None


#: protocol fields that set how fast a run goes, not what it computes: a resume may change them
# Where and on how many threads a run goes on is not part of what it computes: a run checkpointed on a
# GPU may be resumed on a CPU and the reverse (the weights load bit-exactly; the steps after differ by
# the devices' float arithmetic).
RUNTIME_FIELDS = ("threads", "device")


def without_runtime(protocol: Any) -> Any:
    return {k: v for k, v in protocol.items() if k not in RUNTIME_FIELDS} if isinstance(protocol, dict) else protocol


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(root)"


def protocol_json(protocol: BaseModel) -> str:
    return json.dumps(protocol.model_dump(mode="json"), sort_keys=True)


def write_protocol(protocol: BaseModel, path: Path) -> None:

    atomic_write_text(path, yaml.safe_dump(protocol.model_dump(mode="json"), sort_keys=False))
