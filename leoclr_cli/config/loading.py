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
from .catalog import closest, find_protocol, merge, read_tree, safe_yaml
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


def format_validation_error(err: ValidationError, source: str, model: Optional[type[Strict]] = None,
                            sets: tuple[str, ...] = ()) -> str:
    """The first error as one sentence: field path, the rule broken, the value given. An unknown field
    names where it came from (``--set`` when it is one of ``sets``, else ``source``) and the closest known
    field of ``model``."""
    first = err.errors()[0]
    loc = excerpt(".".join(str(p) for p in first["loc"] if not isinstance(p, int)), 120).strip("'\"")
    msg = first["msg"] if len(first["msg"]) <= 400 else first["msg"][:397] + "..."
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        near = closest(model, loc) if model is not None else None
        where = f"--set {loc}" if any(loc == s or loc.startswith(s + ".") for s in sets) else source
        return f"{where}: unknown field '{loc}'" + (f"; did you mean '{near}'?" if near else "")
    given = first.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {excerpt(given)})"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if not loc:  # a rule across fields: its message names them
        return f"{source}: {msg}{more}"
    return f"{source}: field '{loc}': {msg}{shown}{more}"


def load_protocol(kind: str, path: Optional[Path] = None, overrides: Optional[dict[str, Any]] = None,
                  defaults: Optional[dict[str, Any]] = None) -> Any:
    """Validate a protocol made of, in rising precedence: the model's defaults, dotted ``defaults``
    (e.g. derived from the pretraining run being evaluated), the file ``path`` (or the installed protocol
    of that name: :func:`~.catalog.find_protocol`), dotted ``overrides``."""
    model = PROTOCOLS[kind]
    path = find_protocol(path)[0] if path is not None else None
    tree: dict[str, Any] = read_tree(path) if path is not None else {}
    file_kind = tree.get("kind")
    if file_kind is not None and file_kind != kind:
        raise UserError(f"protocol file {path} is a '{file_kind}' protocol, not a '{kind}' one")
    base: dict[str, Any] = {}
    for dotted, value in (defaults or {}).items():
        if value is not None:
            set_dotted(base, dotted, value)
    tree = merge(base, tree)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise UserError(format_validation_error(e, str(path) if path else f"{kind} protocol", model,
                                                tuple(overrides or ()))) from None


#: protocol fields that set how fast a run goes or where it is watched, not what it computes: a resume may
#: change them. Where and on how many threads a run goes on is not part of what it computes: a run
#: checkpointed on a GPU may be resumed on a CPU and the reverse (the weights load bit-exactly; the steps
#: after differ by the devices' float arithmetic).
RUNTIME_FIELDS = ("threads", "device", "log")


def without_runtime(protocol: Any) -> Any:
    return {k: v for k, v in protocol.items() if k not in RUNTIME_FIELDS} if isinstance(protocol, dict) else protocol


def comparable(protocol: Any) -> Any:
    """A protocol's JSON tree as this version's schema reads it, runtime fields aside: a field added since the
    tree was written takes its default, so a checkpoint of an earlier version resumes (or is reused) when
    nothing it computed with has changed."""
    if isinstance(protocol, dict) and protocol.get("kind") in PROTOCOLS:
        try:
            protocol = PROTOCOLS[protocol["kind"]].model_validate(protocol).model_dump(mode="json")
        except ValidationError:
            pass
    return without_runtime(protocol)


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
