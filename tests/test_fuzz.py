"""Property-based fuzzing (hypothesis) of what a user hands leoclr: protocol files and ``--set`` (random YAML,
field paths and values) and weight files (random headers, offsets, dtypes, metadata). Every case must
either succeed or be refused with one :class:`UserError` sentence: never another exception (a traceback),
never a long wait. The cases are derandomized (the same ones every run, so CI is reproducible); about a
minute in all on 2 cores. Set ``LEOCLR_FUZZ_EXAMPLES`` to run more."""

import json
import os
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from leoclr_cli.config import PROTOCOLS, load_protocol, parse_set  # noqa: E402
from leoclr_cli.core import checkpoint as ckpt  # noqa: E402
from leoclr_cli.core.tensorfile import DTYPE_BYTES, save_tensors  # noqa: E402
from leoclr_cli.errors import UserError  # noqa: E402

EXAMPLES = int(os.environ.get("LEOCLR_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])



def field_paths(model, prefix=()):
    """Every dotted field path of a protocol model (nested sections included)."""
    for name, field in model.model_fields.items():
        yield ".".join(prefix + (name,))
        if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            yield from field_paths(field.annotation, prefix + (name,))


#: every field path of every protocol, so the fuzz reaches real fields as well as unknown ones
FIELDS = sorted({path for model in PROTOCOLS.values() for path in field_paths(model)})

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from([2**32, -1, 0, 2**63, 1e308, -1e308, "nan", ".inf", "1e999", "", "~"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
paths = st.one_of(st.sampled_from(FIELDS), st.text(alphabet="abcdefgh_.", min_size=0, max_size=16))
yaml_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda tree: json.dumps(tree), st.dictionaries(st.sampled_from(FIELDS + ["x", "kind"]), values,
                                                             max_size=5)),
    st.builds(lambda n, k: "name: [&a [x]" + "".join(f", &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * k)}]"
                                                     for i in range(n)) + "]", st.integers(1, 12), st.integers(2, 9)),
    st.builds(lambda d: "name: " + "[" * d + "]" * d, st.integers(1, 5000)),
)

counts = {"protocol": [0, 0], "set": [0, 0], "weights": [0, 0]}


def outcome(kind: str, fn, *args):
    """Run ``fn``: returns (True, its result) on success, (False, the UserError sentence) on a refusal, both
    counted; anything else (another exception) propagates and fails the test."""
    try:
        result = fn(*args)
        counts[kind][0] += 1
        return True, result
    except UserError as e:
        counts[kind][1] += 1
        return False, str(e)


def one_sentence(text: str) -> bool:
    return bool(text) and "\n" not in text and len(text) < 1200


@FUZZ
@given(text=yaml_text, kind=st.sampled_from(sorted(PROTOCOLS)))
def test_any_protocol_file_is_loaded_or_refused_in_one_sentence(tmp_path_factory, text, kind):
    path = tmp_path_factory.mktemp("p") / "p.yaml"
    path.write_text(text)
    ok, result = outcome("protocol", load_protocol, kind, path)
    assert isinstance(result, PROTOCOLS[kind]) if ok else one_sentence(result), result


@FUZZ
@given(items=st.lists(st.one_of(st.builds(lambda p, v: f"{p}={json.dumps(v)}", paths, values),
                                st.builds(lambda p, v: f"{p}={v}", paths, st.text(max_size=30)),
                                st.text(max_size=30)), max_size=4),
       kind=st.sampled_from(sorted(PROTOCOLS)))
def test_any_set_is_applied_or_refused_in_one_sentence(items, kind):
    ok, result = outcome("set", lambda: load_protocol(kind, overrides=parse_set(items)))
    if ok:  # an accepted --set gives a protocol of that kind, the same one each time it is applied
        assert isinstance(result, PROTOCOLS[kind]) and result == load_protocol(kind, overrides=parse_set(items))
    else:
        assert one_sentence(result), result


# --------------------------------------------------------------------------- weight files

dtypes = st.one_of(st.sampled_from(sorted(DTYPE_BYTES)), st.text(max_size=6), st.integers(), st.none())
shapes = st.one_of(st.lists(st.integers(0, 4), max_size=3), st.lists(st.integers(), max_size=3), st.integers(),
                   st.text(max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
offsets = st.one_of(st.lists(st.integers(0, 64), min_size=2, max_size=2), st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.integers(), st.none())
entries = st.one_of(st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets}), values)
meta_values = st.one_of(st.text(max_size=12), st.sampled_from(["-1e999", "1", "true", "{", "[]", '{"kind": "pretrain"}',
                                                              '{"kind": "pretrain", "seed": -1}', "resnet18"]))
metadata = st.one_of(st.dictionaries(st.sampled_from(["format_version", "kind", "arch", "cifar_stem", "epoch", "step",
                                                      "protocol", "sha256", "x"]), meta_values, max_size=6),
                     values)
headers = st.one_of(
    st.builds(lambda tensors, meta: json.dumps({**tensors, "__metadata__": meta}).encode(),
              st.dictionaries(st.text(max_size=6), entries, max_size=3), metadata),
    st.binary(max_size=64),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(1, 100_000)),
)


@FUZZ
@given(header=headers, length=st.one_of(st.none(), st.integers(0, 2**64 - 1)), data=st.binary(max_size=64))
def test_any_safetensors_header_is_read_or_refused_in_one_sentence(tmp_path_factory, header, length, data):
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    for read in (ckpt.verify, ckpt.read_metadata, ckpt.load_tensors, lambda p: ckpt.load_backbone(p)):
        ok, result = outcome("weights", read, path)
        assert ok or one_sentence(result), result


torch = pytest.importorskip("torch")
float_or_not = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int8,
                                torch.bool, torch.uint8, torch.complex64])


_STATE = {}


def resnet18_state():
    if not _STATE:
        from leoclr_cli.core.nets import build_backbone

        _STATE.update({k: v for k, v in build_backbone("resnet18").state_dict().items() if not k.startswith("fc.")})
    return {k: v.clone() for k, v in _STATE.items()}


@settings(FUZZ, max_examples=max(8, EXAMPLES // 15), deadline=15000)
@given(dtype=float_or_not, meta=st.dictionaries(st.sampled_from(["arch", "cifar_stem", "epoch", "protocol", "kind"]),
                                                meta_values, max_size=3),
       nan=st.booleans())
def test_any_signed_backbone_is_loaded_or_refused_in_one_sentence(tmp_path_factory, dtype, meta, nan):
    state = resnet18_state()
    state["conv1.weight"] = state["conv1.weight"].to(dtype)
    if nan and state["layer4.1.bn2.weight"].is_floating_point():
        state["layer4.1.bn2.weight"][0] = float("nan")
    path = tmp_path_factory.mktemp("b") / "b.safetensors"
    save_tensors(path, state, {"kind": "backbone", "arch": "resnet18", "cifar_stem": "false", "epoch": "0",
                               "protocol": "{}", **meta})
    loaded, result = outcome("weights", lambda p: ckpt.load_backbone(p), path)
    assert loaded or one_sentence(result), result
    assert not loaded or (dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and not nan)


def test_fuzz_counts_are_reported(capsys):
    """Prints how many cases were accepted and refused, and checks that the fuzz reached both outcomes of every
    kind it ran (a strategy that only ever produced refusals, or only acceptances, would test half of it)."""
    with capsys.disabled():
        print("\nfuzz cases (accepted, refused in one sentence):", counts)
    ran = {kind: c for kind, c in counts.items() if sum(c)}
    if not ran:
        pytest.skip("no fuzz case ran before this test (run the whole file)")
    assert all(accepted > 0 and refused > 0 for accepted, refused in ran.values()), ran
