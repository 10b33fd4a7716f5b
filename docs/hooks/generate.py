"""mkdocs hook: generates the reference pages at build time, so they can never drift.

- ``reference/configuration.md`` from the config Structs (``pyfriction.config.Config`` and
  everything under it): every key, its type, default, bounds and the Struct's docstring.
- ``reference/sidecar-api.md`` from the sidecar's OpenAPI document
  (``pyfriction_server.openapi.document()``), when the sidecar is importable.

Also usable without mkdocs: ``python docs/hooks/generate.py config|sidecar`` prints a page.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import msgspec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _paths() -> None:
    """The repository (and the sidecar's source) importable: mkdocs restores sys.path after
    loading a hook, so this runs when a page is generated."""
    for p in (os.path.join(ROOT, "server"), ROOT):
        if p not in sys.path:
            sys.path.append(p)


CONFIG_PAGE = "reference/configuration.md"
SIDECAR_PAGE = "reference/sidecar-api.md"


# -- configuration ---------------------------------------------------------------------------------


def _type_name(t: msgspec.inspect.Type) -> str:
    mi = msgspec.inspect
    if isinstance(t, mi.IntType):
        return "integer"
    if isinstance(t, mi.FloatType):
        return "number"
    if isinstance(t, mi.BoolType):
        return "boolean"
    if isinstance(t, mi.StrType):
        return "string"
    if isinstance(t, mi.NoneType):
        return "none"
    if isinstance(t, mi.LiteralType):
        return " \\| ".join(json.dumps(v) for v in t.values)
    if isinstance(t, mi.ListType):
        return f"list of {_type_name(t.item_type)}"
    if isinstance(t, mi.DictType):
        return f"table of {_type_name(t.key_type)} → {_type_name(t.value_type)}"
    if isinstance(t, mi.UnionType):
        names = [_type_name(x) for x in t.types if not isinstance(x, mi.NoneType)]
        optional = any(isinstance(x, mi.NoneType) for x in t.types)
        return " or ".join(names) + (" (optional)" if optional else "")
    if isinstance(t, mi.StructType):
        return f"[{t.cls.__name__}](#{t.cls.__name__.lower()})"
    if isinstance(t, mi.AnyType):
        return "any"
    return type(t).__name__.replace("Type", "").lower()


def _bounds(t: msgspec.inspect.Type) -> str:
    mi = msgspec.inspect
    if isinstance(t, mi.UnionType):
        return "; ".join(b for b in (_bounds(x) for x in t.types) if b)
    parts = []
    for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"),
                      ("max_length", "length ≤"), ("pattern", "matches")):  # fmt: skip
        value = getattr(t, attr, None)
        if value is not None:
            parts.append(f"{sym} `{value}`")
    if isinstance(t, mi.ListType):
        inner = _bounds(t.item_type)
        if inner:
            parts.append(f"items {inner}")
    return ", ".join(parts)


def _default(field: msgspec.inspect.Field) -> str:
    if field.required:
        return "required"
    value = field.default
    if value is msgspec.NODEFAULT and field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    if isinstance(value, msgspec.Struct):
        return "(table)"
    value = msgspec.to_builtins(value)
    return "`" + json.dumps(value, ensure_ascii=False) + "`" if value is not None else "none"


def _field_docs(cls: type) -> dict[str, str]:
    """``#: comment`` lines above fields in the class source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        name = stripped.split(":", 1)[0].strip()
        if pending and name.isidentifier():
            docs[name] = " ".join(pending)
        pending = []
    return docs


def _walk(cls: type, path: str, seen: set[type]) -> Iterator[tuple[str, type]]:
    if cls in seen:
        return
    seen.add(cls)
    yield path, cls
    info = msgspec.inspect.type_info(cls)
    for field in info.fields:  # type: ignore[attr-defined]
        for t in _structs(field.type):
            yield from _walk(t, f"{path}.{field.encode_name}" if path else field.encode_name, seen)


def _structs(t: msgspec.inspect.Type) -> Iterator[type]:
    mi = msgspec.inspect
    if isinstance(t, mi.StructType):
        yield t.cls
    elif isinstance(t, mi.UnionType):
        for x in t.types:
            yield from _structs(x)
    elif isinstance(t, mi.ListType):
        yield from _structs(t.item_type)
    elif isinstance(t, mi.DictType):
        yield from _structs(t.value_type)


def _clean_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.replace(":class:", "").replace(":func:", "").replace(":meth:", "").replace("``", "`")


def config_reference() -> str:
    _paths()
    from pyfriction.config import Config

    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from pyfriction.config by docs/hooks/generate.py at build time: do not edit. -->",
        "",
        "Every key of the configuration, generated from the typed config (`pyfriction.config.Config`) ",
        "when the docs are built, so it always matches the code. A key's table is its TOML section: ",
        "`detectors.rage_click` is `[detectors.rage_click]` in a TOML file, "
        '`{"detectors": {"rage_click": {...}}}` as a dict, or `detectors={"rage_click": {...}}` '
        "as a keyword of `pyfriction.init()` / `Tracker()`. Lists of tables (`guidance.items`) are "
        "`[[guidance.items]]` in TOML.",
        "",
    ]
    for path, cls in _walk(Config, "", set()):
        title = path or "(top level)"
        out += [f"## `{title}` {{ #{cls.__name__.lower()} }}", "", f"*{cls.__name__}*. " + _clean_doc(cls), ""]
        info = msgspec.inspect.type_info(cls)
        notes = _field_docs(cls)
        out += ["| Key | Type | Default | Bounds | |", "| --- | --- | --- | --- | --- |"]
        for field in info.fields:  # type: ignore[attr-defined]
            note = notes.get(field.name, "").replace("|", "\\|").replace(":class:", "").replace("``", "`")
            out.append(f"| `{field.encode_name}` | {_type_name(field.type)} | {_default(field)} | "
                       f"{_bounds(field.type)} | {note} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


# -- sidecar API -------------------------------------------------------------------------------------


def _schema_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#schema-{name.lower()})"
    if "type" in schema:
        return f"`{schema['type']}`"
    if "oneOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["oneOf"])
    return "object"


def sidecar_document() -> dict[str, Any] | None:
    _paths()
    try:
        from pyfriction_server import openapi
    except ImportError:
        return None
    return openapi.document()  # type: ignore[no-any-return]


def sidecar_reference() -> str:
    doc = sidecar_document()
    head = ["# Sidecar HTTP API", "",
            "<!-- Generated from the sidecar's OpenAPI document by docs/hooks/generate.py: do not edit. -->", ""]  # fmt: skip
    if doc is None:
        return "\n".join(head + [
            "The sidecar (`server/pyfriction_server`) is not importable in this build, so its API "
            "reference could not be generated. Run `pyfriction-server` and read `/openapi.json`.", ""])  # fmt: skip
    info = doc.get("info", {})
    head += [f"Version {info.get('version', '?')}. {info.get('description', '')}".strip(), "",
             "Generated from `pyfriction_server.openapi.document()`, the document the server serves at "
             "`/openapi.json`.", ""]  # fmt: skip
    out = head
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            if method.startswith("x-") or not isinstance(op, dict):
                continue
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [f"**{op['summary']}**", ""]
            if op.get("description"):
                out += [op["description"], ""]
            params = op.get("parameters", [])
            if params:
                out += ["| Parameter | In | Required | Type | Description |", "| --- | --- | --- | --- | --- |"]
                for p in params:
                    if "$ref" in p:
                        p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[-1]]
                    desc = str(p.get("description", "")).replace("\n", " ").replace("|", "\\|")
                    out.append(f"| `{p.get('name')}` | {p.get('in')} | {'yes' if p.get('required') else 'no'} | "
                               f"{_schema_name(p.get('schema'))} | {desc} |")  # fmt: skip
                out.append("")
            body = op.get("requestBody")
            if body:
                types = ", ".join(
                    f"`{ct}` {_schema_name(c.get('schema'))}" for ct, c in body.get("content", {}).items()
                )
                out += [f"Request body: {types}", ""]
            out += ["| Status | Meaning | Body |", "| --- | --- | --- |"]
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                schema = next(iter(content.values()), {}).get("schema") if content else None
                desc = str(resp.get("description", "")).replace("\n", " ").replace("|", "\\|")
                out.append(f"| {status} | {desc} | {_schema_name(schema)} |")
            out.append("")
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            out += [f"### `{name}` {{ #schema-{name.lower()} }}", ""]
            if schema.get("description"):
                out += [schema["description"], ""]
            props = schema.get("properties", {})
            if props:
                required = set(schema.get("required", []))
                out += ["| Field | Type | Required | Description |", "| --- | --- | --- | --- |"]
                for field, fs in props.items():
                    desc = str(fs.get("description", "")).replace("\n", " ").replace("|", "\\|")
                    out.append(
                        f"| `{field}` | {_schema_name(fs) or 'object'} | {'yes' if field in required else 'no'} | {desc} |"
                    )
                out.append("")
            else:
                out += ["```json", json.dumps(schema, indent=2)[:2000], "```", ""]
    return "\n".join(out)


# -- mkdocs ---------------------------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, make in ((CONFIG_PAGE, config_reference), (SIDECAR_PAGE, sidecar_reference)):
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=make()))
    return files


if __name__ == "__main__":
    print(config_reference() if sys.argv[1:] == ["config"] else sidecar_reference())
