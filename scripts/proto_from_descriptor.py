"""Print the .proto source of a generated ``*_pb2.py``, from the FileDescriptorProto it carries.

protos/inference/grpc_predict_v2.proto (the Open Inference Protocol, KServe v2) was made with
it from the kserve wheel on PyPI, whose Python SDK ships the generated module but not the
.proto; compiling the result gives the same messages, fields and numbers as the wheel's:

    pip download kserve==0.21.0 --no-deps -d /tmp/kserve && unzip -o -d /tmp/kserve /tmp/kserve/*.whl
    python scripts/proto_from_descriptor.py /tmp/kserve/kserve/protocol/grpc/grpc_predict_v2_pb2.py

It only parses the module's serialized bytes (nothing is imported). A descriptor keeps no
comments; docs/serving.md documents what latentserve serves. Covers what that file uses:
messages (nested), enums, oneofs, maps, repeated fields, proto3 optional and services.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2 as d

F = d.FieldDescriptorProto
SCALARS = {
    F.TYPE_DOUBLE: "double",
    F.TYPE_FLOAT: "float",
    F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64",
    F.TYPE_INT32: "int32",
    F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32",
    F.TYPE_BOOL: "bool",
    F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes",
    F.TYPE_UINT32: "uint32",
    F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64",
    F.TYPE_SINT32: "sint32",
    F.TYPE_SINT64: "sint64",
}


def file_descriptor(generated: Path) -> d.FileDescriptorProto:
    found = re.search(r"AddSerializedFile\(\s*(b'.*?')\s*\)", generated.read_text(), re.S)
    if found is None:
        raise SystemExit(f"{generated}: no AddSerializedFile(b'...') in it")
    return d.FileDescriptorProto.FromString(ast.literal_eval(found.group(1)))


class Printer:
    def __init__(self, fd: d.FileDescriptorProto) -> None:
        self.fd = fd
        self.lines: list[str] = []

    def type_name(self, full: str, scope: str = "") -> str:
        """`.inference.Foo.Bar` as written inside `scope` (e.g. `inference.Foo.` gives `Bar`)."""
        name = full.lstrip(".")
        for prefix in (scope, self.fd.package + "."):
            if prefix and name.startswith(prefix):
                return name[len(prefix) :]
        return name

    def field_type(self, f: d.FieldDescriptorProto, scope: str) -> str:
        return SCALARS.get(f.type) or self.type_name(f.type_name, scope)

    def enum(self, e: d.EnumDescriptorProto, indent: str) -> None:
        self.lines.append(f"{indent}enum {e.name} {{")
        self.lines += [f"{indent}  {v.name} = {v.number};" for v in e.value]
        self.lines.append(f"{indent}}}")

    def message(self, m: d.DescriptorProto, indent: str, scope: str) -> None:
        inner = f"{scope}{m.name}."
        self.lines.append(f"{indent}message {m.name} {{")
        maps = {n.name: n for n in m.nested_type if n.options.map_entry}
        for nested in m.nested_type:
            if not nested.options.map_entry:
                self.message(nested, indent + "  ", inner)
        for e in m.enum_type:
            self.enum(e, indent + "  ")
        printed_oneofs: set[int] = set()
        for f in m.field:
            if f.HasField("oneof_index") and not f.proto3_optional:
                if f.oneof_index not in printed_oneofs:
                    printed_oneofs.add(f.oneof_index)
                    self.oneof(m, f.oneof_index, indent + "  ", inner)
                continue
            entry = maps.get(f.type_name.rsplit(".", 1)[-1]) if f.type == F.TYPE_MESSAGE else None
            if f.label == F.LABEL_REPEATED and entry is not None:
                key, value = entry.field
                kv = f"{self.field_type(key, inner)}, {self.field_type(value, inner)}"
                self.lines.append(f"{indent}  map<{kv}> {f.name} = {f.number};")
                continue
            label = "repeated " if f.label == F.LABEL_REPEATED else ""
            label = "optional " if f.proto3_optional else label
            self.lines.append(
                f"{indent}  {label}{self.field_type(f, inner)} {f.name} = {f.number};"
            )
        self.lines.append(f"{indent}}}")

    def oneof(self, m: d.DescriptorProto, index: int, indent: str, scope: str) -> None:
        self.lines.append(f"{indent}oneof {m.oneof_decl[index].name} {{")
        for f in m.field:
            if f.HasField("oneof_index") and f.oneof_index == index:
                self.lines.append(f"{indent}  {self.field_type(f, scope)} {f.name} = {f.number};")
        self.lines.append(f"{indent}}}")

    def service(self, s: d.ServiceDescriptorProto) -> None:
        self.lines.append(f"service {s.name} {{")
        for rpc in s.method:
            request, response = self.type_name(rpc.input_type), self.type_name(rpc.output_type)
            self.lines.append(f"  rpc {rpc.name}({request}) returns ({response}) {{}}")
        self.lines += ["}", ""]

    def render(self) -> str:
        self.lines += [
            f'syntax = "{self.fd.syntax or "proto2"}";',
            "",
            f"package {self.fd.package};",
            "",
        ]
        for s in self.fd.service:
            self.service(s)
        for e in self.fd.enum_type:
            self.enum(e, "")
            self.lines.append("")
        for m in self.fd.message_type:
            self.message(m, "", self.fd.package + ".")
            self.lines.append("")
        return "\n".join(self.lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(Printer(file_descriptor(Path(sys.argv[1]))).render())
