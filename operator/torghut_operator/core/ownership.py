"""Who owns the target's image and trading env: server-side apply field ownership, read and written.

The operator writes the target container's image and the env variables its steps set as one server-side apply
configuration under its own field manager (:data:`FIELD_MANAGER`). Git (Argo CD) keeps owning the rest of the
object, and an Argo CD Application can ignore exactly the operator's fields by manager
(``ignoreDifferences[].managedFieldsManagers``), so self-heal never puts the old image back mid-rollout.

Server-side apply treats an apply configuration as *everything* the manager wants to own: a field the manager
owned and leaves out is released (and removed when nobody else owns it). So every write re-states what the
operator already owns (:func:`container_apply`), and a variable is removed only by leaving it out on purpose.

:func:`field_owners` reads ``metadata.managedFields`` back, so a drift can say who changed the image or a
variable (``kubectl edit``, ``argocd-controller``, ...). Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FIELD_MANAGER = "torghut-rollout-operator"
"""The field manager of every write the operator makes to a target (also what Argo CD is told to ignore)."""


@dataclass(frozen=True)
class Owned:
    """What one manager owns in one container through server-side apply."""

    image: bool = False
    env: frozenset[str] = frozenset()


def _key(name: str) -> str:
    """The managedFields key of a list-map entry keyed by name (``k:{"name":"web"}``)."""
    return "k:" + json.dumps({"name": name}, separators=(",", ":"))


def _containers_node(fields: dict[str, Any]) -> dict[str, Any] | None:
    node: Any = fields
    for step in ("f:spec", "f:template", "f:spec", "f:containers"):
        if not isinstance(node, dict) or step not in node:
            return None
        node = node[step]
    return node if isinstance(node, dict) else None


def _container_fields(entry: dict[str, Any], container: str) -> dict[str, Any] | None:
    """The manager's fields of ``container``; ``{"*": {}}`` when it owns the whole (atomic) containers list, as
    for a Knative Service, whose schema keeps ``containers`` atomic."""
    containers = _containers_node(entry.get("fieldsV1") or {})
    if containers is None:
        return None
    if not containers:  # an atomic list: owned as a whole
        return {"*": {}}
    node = containers.get(_key(container))
    return node if isinstance(node, dict) else None


def _env_values(fields: dict[str, Any]) -> list[str]:
    """The variables whose *value* these container fields own (sharing an entry's key says nothing about who set
    its value: a manager that applied the same entry keeps the key after another took the value)."""
    names = []
    for key, node in (fields.get("f:env") or {}).items():
        if key.startswith("k:") and isinstance(node, dict) and "f:value" in node:
            names.append(str(json.loads(key[2:]).get("name")))
    return names


def owned_by(obj: dict[str, Any], container: str, manager: str = FIELD_MANAGER) -> Owned:
    """What ``manager`` owns by server-side *apply* in ``container`` (update-owned fields don't count: an apply
    that leaves them out would not release them, so there is nothing to re-state)."""
    image = False
    env: set[str] = set()
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        fields = _container_fields(entry, container)
        if fields is None or "*" in fields:
            continue
        image = image or "f:image" in fields
        env.update(_env_values(fields))
    return Owned(image=image, env=frozenset(env))


def field_owners(obj: dict[str, Any], container: str) -> dict[str, tuple[str, ...]]:
    """Every manager of the container's ``image`` and of each ``env:<NAME>``, as ``"<manager> (<operation>
    <time>)"``, in managedFields order. A manager of the whole atomic containers list owns all of them."""
    owners: dict[str, list[str]] = {}
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        fields = _container_fields(entry, container)
        if fields is None:
            continue
        label = f"{entry.get('manager', '?')} ({entry.get('operation', '?')} {entry.get('time', '?')})"
        if "*" in fields:
            owners.setdefault("*", []).append(label)
            continue
        if "f:image" in fields:
            owners.setdefault("image", []).append(label)
        for name in _env_values(fields):
            owners.setdefault(f"env:{name}", []).append(label)
    return {field: tuple(labels) for field, labels in owners.items()}


def container_apply(
    obj: dict[str, Any],
    container: str,
    *,
    image: str | None = None,
    env: dict[str, str | None] | None = None,
    manager: str = FIELD_MANAGER,
) -> dict[str, Any]:
    """The server-side apply configuration of a Deployment that sets ``image`` and/or ``env`` (None removes a
    variable) of ``container``, re-stating what ``manager`` already owns there so nothing is released by
    accident. ``metadata.resourceVersion`` makes it apply only to the version read (a conflict otherwise)."""
    meta = obj.get("metadata") or {}
    template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    live = next((c for c in template.get("containers") or [] if c.get("name") == container), None)
    if live is None:
        raise ValueError(f"no container {container}")
    owned = owned_by(obj, container, manager)
    entry: dict[str, Any] = {"name": container}
    if image is not None:
        entry["image"] = image
    elif owned.image and live.get("image"):
        entry["image"] = live["image"]
    values = {e["name"]: e.get("value", "") for e in live.get("env") or [] if "valueFrom" not in e}
    wanted = {name: values[name] for name in owned.env if name in values}
    for name, value in (env or {}).items():
        if value is None:
            wanted.pop(name, None)
        else:
            wanted[name] = value
    if wanted:  # left out, the variables it owned are released: removed unless another manager owns them too
        entry["env"] = [{"name": name, "value": value} for name, value in sorted(wanted.items())]
    return {
        "apiVersion": obj.get("apiVersion", "apps/v1"),
        "kind": obj.get("kind", "Deployment"),
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "spec": {"template": {"spec": {"containers": [entry]}}},
    }
