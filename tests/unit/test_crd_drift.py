"""The CRD is the API contract users see; the pydantic models parse what it admits. This test keeps them
in step, field by field and in both directions: names (camelCase aliases), types, required-ness, enums,
bounds and patterns, defaults (spec only: they are what `kubectl get -o yaml` shows), and a description on
every CRD property so `kubectl explain` documents the whole API.

A field the status model has and the CRD lacks is silently pruned by the API server (the Kopf pitfall), so a
problem here is a real bug, not style.
"""

from __future__ import annotations

import copy
import enum
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from torghut_operator.core.api import spec as spec_api
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import TorghutRolloutStatus

pytestmark = pytest.mark.unit

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "torghutrollouts.yaml"

BOUND_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
)
_SIZE_KEYWORDS = {"array": "Items", "object": "Properties"}

CRD_ONLY_BOUNDS: dict[tuple[str, str], str] = {
    ("spec.verify.checks", "maxItems"): "the unique-names CEL rule must fit the API server's cost budget",
    ("spec.migrate.expect.checks", "maxItems"): "the unique-names CEL rule must fit the API server's cost budget",
    ("spec.presets", "maxItems"): "the preset dependency CEL rules must fit the API server's cost budget",
    ("spec.promotion.steps[].checks", "maxItems"): "the unique-names CEL rule must fit the API server's cost budget",
}
"""Bounds the CRD states although the model does not, each with the reason."""

_ABSENT = object()
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class Shape:
    """What a Python annotation means on the wire."""

    json_type: str
    model: type[BaseModel] | None = None
    items: Shape | None = None
    values: Shape | None = None
    enum: tuple[str, ...] | None = None
    bounds: dict[str, Any] = field(default_factory=dict)
    nullable: bool = False


def bounds_of(metadata: list[Any], json_type: str) -> dict[str, Any]:
    """The OpenAPI bounds that pydantic constraint metadata stands for."""
    bounds: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[str, Field(pattern=...)] inside an Optional
            bounds |= bounds_of(item.metadata, json_type)
        elif isinstance(item, annotated_types.MinLen):
            bounds["min" + _SIZE_KEYWORDS.get(json_type, "Length")] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            bounds["max" + _SIZE_KEYWORDS.get(json_type, "Length")] = item.max_length
        elif isinstance(item, annotated_types.Ge):
            bounds["minimum"] = item.ge
        elif isinstance(item, annotated_types.Le):
            bounds["maximum"] = item.le
        elif isinstance(item, annotated_types.Gt | annotated_types.Lt | annotated_types.MultipleOf):
            raise NotImplementedError(f"teach the drift test {item!r}")
        elif getattr(item, "pattern", None) is not None:
            bounds["pattern"] = item.pattern
    return bounds


def shape_of(annotation: Any) -> Shape:
    """The wire shape of a field annotation: Optional, Annotated, Literal, StrEnum, list, dict, models."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        inner = shape_of(base)
        return replace(inner, bounds=inner.bounds | bounds_of(metadata, inner.json_type))
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != 1:
            raise NotImplementedError(f"teach the drift test the union {annotation!r}")
        return replace(shape_of(members[0]), nullable=True)
    if origin is Literal:
        return Shape("string", enum=tuple(sorted(str(value) for value in get_args(annotation))))
    if origin is list:
        return Shape("array", items=shape_of(get_args(annotation)[0]))
    if origin is dict:
        return Shape("object", values=shape_of(get_args(annotation)[1]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Shape("object", model=annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return Shape("string", enum=tuple(sorted(str(member.value) for member in annotation)))
    if annotation in _SCALARS:
        return Shape(_SCALARS[annotation])
    raise NotImplementedError(f"teach the drift test {annotation!r}")


def wire_default(info: FieldInfo) -> Any:
    """What the CRD's `default` must be for this field: absent when the model has no default or None.

    A nested model's default is `{}`: the API server then fills in the nested defaults itself.
    """
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return {} if isinstance(value, BaseModel) else to_jsonable_python(value)
    if info.default is PydanticUndefined or info.default is None:
        return _ABSENT
    return to_jsonable_python(info.default)


def compare_element(shape: Shape, schema: dict[str, Any], path: str, defaults: bool) -> Iterator[str]:
    """A list item or map value: None inside a container must be stored as null (`nullable`), not pruned."""
    if shape.nullable != bool(schema.get("nullable", False)):
        yield f"{path}: nullable is {shape.nullable} in the model, {schema.get('nullable', False)} in the CRD"
    yield from compare_shape(shape, schema, path, defaults)


def compare_shape(shape: Shape, schema: dict[str, Any], path: str, defaults: bool) -> Iterator[str]:
    if schema.get("type") != shape.json_type:
        yield f"{path}: the model says type {shape.json_type}, the CRD {schema.get('type')}"
        return
    crd_enum = schema.get("enum")
    if (shape.enum is not None or crd_enum is not None) and (crd_enum is None or shape.enum != tuple(sorted(crd_enum))):
        yield f"{path}: the model's enum is {shape.enum}, the CRD's {crd_enum}"
    for keyword in BOUND_KEYWORDS:
        want, have = shape.bounds.get(keyword, _ABSENT), schema.get(keyword, _ABSENT)
        if want is _ABSENT and have is not _ABSENT and (path, keyword) not in CRD_ONLY_BOUNDS:
            yield f"{path}: the CRD has {keyword}={have!r}, the model has no such bound"
        elif want is not _ABSENT and have != want:
            shown = "nothing" if have is _ABSENT else repr(have)
            yield f"{path}: the model has {keyword}={want!r}, the CRD {shown}"
    if shape.model is not None:
        yield from compare_model(shape.model, schema, path, defaults)
    elif shape.items is not None:
        yield from compare_element(shape.items, schema.get("items", {}), f"{path}[]", defaults)
    elif shape.values is not None:
        values = schema.get("additionalProperties")
        if not isinstance(values, dict):
            yield f"{path}: the model has a map, the CRD has no additionalProperties schema"
        else:
            yield from compare_element(shape.values, values, f"{path}{{}}", defaults)


def compare_model(model: type[BaseModel], schema: dict[str, Any], path: str, defaults: bool) -> Iterator[str]:
    """Problems between a model and its CRD schema; `defaults` also compares defaults."""
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    properties: dict[str, Any] = schema.get("properties", {})
    for name in sorted(fields.keys() - properties.keys()):
        yield f"{path}.{name}: in {model.__name__}, missing from the CRD (the API server would prune it)"
    for name in sorted(properties.keys() - fields.keys()):
        yield f"{path}.{name}: in the CRD, missing from {model.__name__}"
    required = {name for name, info in fields.items() if info.is_required()}
    crd_required = set(schema.get("required", []))
    for name in sorted(required - crd_required):
        yield f"{path}.{name}: required in {model.__name__} (no default), optional in the CRD"
    for name in sorted(crd_required - required):
        yield f"{path}.{name}: required in the CRD, has a default in {model.__name__}"
    for name in sorted(fields.keys() & properties.keys()):
        info, prop, field_path = fields[name], properties[name], f"{path}.{name}"
        shape = shape_of(info.annotation)
        shape = replace(shape, bounds=shape.bounds | bounds_of(info.metadata, shape.json_type))
        if prop.get("nullable") and not shape.nullable:
            yield f"{field_path}: nullable in the CRD, never None in {model.__name__}"
        if defaults:
            want, have = wire_default(info), prop.get("default", _ABSENT)
            if want != have:
                shown = {id(_ABSENT): "none"}
                yield (
                    f"{field_path}: default in the model {shown.get(id(want), repr(want))}, "
                    f"in the CRD {shown.get(id(have), repr(have))}"
                )
        yield from compare_shape(shape, prop, field_path, defaults)


def undocumented(schema: dict[str, Any], path: str) -> Iterator[str]:
    """CRD properties without a description, at any depth."""
    for name, prop in schema.get("properties", {}).items():
        if not str(prop.get("description", "")).strip():
            yield f"{path}.{name}"
        yield from undocumented(prop, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), dict):
            yield from undocumented(schema[key], path + suffix)


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def drift(root: dict[str, Any]) -> list[str]:
    properties = root["properties"]
    return [
        *compare_model(TorghutRolloutSpec, properties["spec"], "spec", defaults=True),
        # Status defaults are the operator's business; it writes every field it means.
        *compare_model(TorghutRolloutStatus, properties["status"], "status", defaults=False),
        *(f"{path}: no description" for part in ("spec", "status") for path in undocumented(properties[part], part)),
    ]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd()


def test_crd_and_models_agree(crd: dict[str, Any]) -> None:
    assert drift(root_schema(crd)) == []


def test_crd_names_the_models_resource(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    (version,) = crd["spec"]["versions"]
    assert (crd["spec"]["group"], version["name"], names["kind"], names["plural"]) == (
        spec_api.GROUP,
        spec_api.VERSION,
        spec_api.KIND,
        spec_api.PLURAL,
    )
    assert crd["metadata"]["name"] == f"{spec_api.PLURAL}.{spec_api.GROUP}"
    assert root_schema(crd)["required"] == ["spec"]
    assert version["subresources"] == {"status": {}}


def test_status_keeps_every_field(crd: dict[str, Any]) -> None:
    """Nothing in status may opt out of the schema: an unknown field would hide a pruned one."""

    def preserving(schema: dict[str, Any], path: str) -> Iterator[str]:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            yield path
        for name, prop in schema.get("properties", {}).items():
            yield from preserving(prop, f"{path}.{name}")
        if isinstance(schema.get("items"), dict):
            yield from preserving(schema["items"], f"{path}[]")

    assert list(preserving(root_schema(crd)["properties"]["status"], "status")) == []


def _schema_at(root: dict[str, Any], path: str) -> dict[str, Any]:
    node = root
    for part in path.split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    return node


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda node: node["properties"].pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda node: node.__setitem__(key, value)


@pytest.mark.parametrize(
    ("where", "mutate", "reported"),
    [
        ("spec.verify.checks[]", _drop("successCondition"), "spec.verify.checks[].successCondition: in Check"),
        (
            "spec.target",
            lambda n: n["properties"].__setitem__("namespace", {"type": "string", "description": "x"}),
            "spec.target.namespace: in the CRD, missing from Target",
        ),
        (
            "status.checks[].measurements[]",
            _drop("samples"),
            "status.checks[].measurements[].samples: in Measurement, missing from the CRD",
        ),
        ("spec.target", _set("required", ["name", "container"]), "spec.target.image: required in Target"),
        ("spec.target.kind", _set("enum", ["Deployment"]), "spec.target.kind: the model's enum"),
        ("status.phase", _set("enum", ["Pending", "Succeeded"]), "status.phase: the model's enum"),
        ("spec.verify.interval", _set("default", "1m"), "spec.verify.interval: default in the model '30s'"),
        ("spec.verify.count", _set("minimum", 0), "spec.verify.count: the model has minimum=1, the CRD 0"),
        ("spec.verify.checks[].name", lambda n: n.pop("pattern"), "spec.verify.checks[].name: the model has pattern"),
        ("spec.migrate.job.command", _set("maxItems", 3), "spec.migrate.job.command: the CRD has maxItems=3"),
        ("spec.verify.checks[].min", _set("type", "integer"), "spec.verify.checks[].min: the model says type number"),
        ("status.lastAction.verb", lambda n: n.pop("description"), "status.lastAction.verb: no description"),
        (
            "spec.promotion.steps[].env",
            _set("minProperties", 2),
            "spec.promotion.steps[].env: the model has minProperties=1",
        ),
    ],
)
def test_drift_is_reported(
    crd: dict[str, Any], where: str, mutate: Callable[[dict[str, Any]], None], reported: str
) -> None:
    """The comparison itself can fail: each kind of drift yields a problem naming the field."""
    root = copy.deepcopy(root_schema(crd))
    mutate(_schema_at(root, where))
    problems = drift(root)
    assert any(problem.startswith(reported) for problem in problems), problems
