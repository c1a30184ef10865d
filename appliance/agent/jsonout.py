"""Model output as JSON: find it, and check it against the schema it was asked for.

Backends without constrained decoding (the Hailo-10H, Ollama) return free
text. :func:`extract_json` takes the first complete JSON object out of it
(after any ``<think>`` block, inside or outside a code fence), and
:func:`validate` checks it against the subset of JSON Schema the planner
emits (type, properties, required, additionalProperties, enum, const,
pattern, anyOf, items, minItems, maxItems, minLength, maxLength), returning
readable errors that the one repair prompt quotes back to the model.

Written here rather than depending on ``jsonschema``: the subset is small,
the agent's image stays small, and the errors are phrased for a model.
"""

from __future__ import annotations

import json
import re
from typing import Any

_THINK = re.compile(r"<think>.*?</think>", re.S)
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class NoJson(ValueError):
    """The text holds no complete JSON object."""


def extract_json(text: str) -> Any:
    """The first complete JSON object in a model's free text."""
    text = _THINK.sub("", text)
    if "</think>" in text:  # the template opened the thought; the answer follows it
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:  # an unfinished thought: the answer is not there
        text = text.split("<think>", 1)[0]
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError as e:
            if e.pos >= len(text.rstrip()) - 1:
                # It runs to the end of the text: cut off (out of tokens). An
                # object nested inside it is not the answer.
                raise NoJson("the answer stops before its JSON object is complete") from None
            continue
        return value
    raise NoJson("the answer contains no complete JSON object")


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "number" and isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Errors of ``value`` against ``schema`` (empty when it conforms)."""
    errors: list[str] = []
    if "anyOf" in schema:
        branches = [validate(value, s, where) for s in schema["anyOf"]]
        if all(branches):
            best = min(branches, key=len)
            errors.append(f"{where} matches none of the allowed shapes; closest: {best[0]}")
        return errors
    if "const" in schema and value != schema["const"]:
        return [f"{where} must be {json.dumps(schema['const'])}"]
    if "enum" in schema and value not in schema["enum"]:
        shown = ", ".join(json.dumps(v) for v in schema["enum"][:12])
        more = " ..." if len(schema["enum"]) > 12 else ""
        return [f"{where} is {json.dumps(value)}, which is not one of: {shown}{more}"]
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_type_ok(value, k) for k in kinds):
            return [f"{where} must be of type {' or '.join(kinds)}"]
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where} is shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where} is longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where} is {json.dumps(value)}, which does not match the allowed form")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where} needs at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where} has more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors.extend(validate(item, schema["items"], f"{where}[{i}]"))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where} lacks the field {json.dumps(name)}")
        if schema.get("additionalProperties") is False:
            for name in value:
                if name not in props:
                    errors.append(f"{where} has a field {json.dumps(name)} that is not allowed")
        for name, sub in props.items():
            if name in value:
                errors.extend(validate(value[name], sub, f"{where}.{name}"))
    return errors
