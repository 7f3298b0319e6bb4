"""The generated modules in engine/rpc/ match engram.proto: every message,
field number, enum value and rpc of the proto is in the generated
descriptor and nothing else is (a proto edited without running
scripts/gen_proto fails here). Read from the proto's text, so the check
needs no protoc."""

from __future__ import annotations

import re
from pathlib import Path

from engine.rpc import engram_pb2 as pb

PROTO = Path(pb.__file__).with_name("engram.proto")
_BLOCK = re.compile(r"^(message|enum|service)\s+(\w+)\s*\{(.*?)^\}", re.M | re.S)
_FIELD = re.compile(r"^\s*(?:repeated\s+)?(?:map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;", re.M)
_VALUE = re.compile(r"^\s*(\w+)\s*=\s*(\d+)\s*;", re.M)
_RPC = re.compile(r"^\s*rpc\s+(\w+)\s*\(\s*(stream\s+)?(\w+)\s*\)\s*returns\s*\(\s*(stream\s+)?(\w+)\s*\)", re.M)


def declared() -> dict[tuple[str, str], dict]:
    text = re.sub(r"//[^\n]*", "", PROTO.read_text()).replace("{}", "{\n}")
    out = {}
    for kind, name, body in _BLOCK.findall(text):
        if kind == "message":
            out[(kind, name)] = {f: int(n) for f, n in _FIELD.findall(body)}
        elif kind == "enum":
            out[(kind, name)] = {v: int(n) for v, n in _VALUE.findall(body)}
        else:
            out[(kind, name)] = {m: (bool(a), i, bool(b), o) for m, a, i, b, o in _RPC.findall(body)}
    return out


def generated() -> dict[tuple[str, str], dict]:
    d = pb.DESCRIPTOR
    out = {("message", n): {f.name: f.number for f in m.fields} for n, m in d.message_types_by_name.items()}
    out.update({("enum", n): {v.name: v.number for v in e.values} for n, e in d.enum_types_by_name.items()})
    out.update({("service", n): {m.name: (m.client_streaming, m.input_type.name, m.server_streaming,
                                          m.output_type.name) for m in s.methods}
                for n, s in d.services_by_name.items()})
    return out


def test_generated_modules_match_the_proto():
    want, got = declared(), generated()
    assert ("service", "Engram") in want and ("message", "BatchAck") in want  # the parser reads the file
    assert set(want) == set(got), "run scripts/gen_proto: " + repr(set(want) ^ set(got))
    for key in want:
        assert want[key] == got[key], f"run scripts/gen_proto: {key} differs: {want[key]} != {got[key]}"
