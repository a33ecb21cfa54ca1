"""Renders manifests/argocd/argocd-cm.yaml from its Lua sources: the TorghutRollout health check and the resource
actions (promote, abort, retry, pause, resume), as the argocd-cm keys Argo CD reads.

    python -m torghut_localstack.argocd_cm manifests/argocd      # or: make argocd-cm

Sources (edit these, never the YAML): `health.lua`; `actions/verbs.lua` (which verbs apply, shared by every action
script), `actions/discovery.lua` and `actions/action.lua` (each appended to verbs.lua; an action script starts with
`local VERB = "<verb>"`). tests/unit/test_argocd_health.py fails when argocd-cm.yaml is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

GROUP_KIND = "torghut.proompteng.ai_TorghutRollout"
HEALTH_KEY = f"resource.customizations.health.{GROUP_KIND}"
ACTIONS_KEY = f"resource.customizations.actions.{GROUP_KIND}"
VERBS = ("abort", "retry", "promote", "pause", "resume")
"""The verbs, in the order of operator/torghut_operator/core/verbs.py's VERBS."""

HEADER = """\
# The TorghutRollout health check and resource actions for Argo CD, as the argocd-cm keys Argo CD reads.
#
# Apply it server-side, with your own field manager, onto an argocd-cm that was CREATED (Argo CD's install
# manifests, Helm, `kubectl create`), which leaves the ConfigMap's other keys alone:
#
#   kubectl apply --server-side --field-manager=torghut-rollout-operator -f manifests/argocd/argocd-cm.yaml
#
# Not onto an argocd-cm last written by client-side `kubectl apply`: server-side apply then takes over the fields
# that client-side apply owned and DELETES every other key (README "GitOps with Argo CD" says how to check and
# what to do instead).
#
# Do not edit the Lua here: edit health.lua and actions/*.lua, then `make argocd-cm`
# (tests/unit/test_argocd_health.py fails when this file is stale).
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(f"{pad}{line}" if line.strip() else "\n" for line in text.splitlines(keepends=True))


def discovery_script(directory: Path) -> str:
    """The discovery.lua Argo CD runs: verbs.lua, then discovery.lua."""
    actions = directory / "actions"
    return (actions / "verbs.lua").read_text() + (actions / "discovery.lua").read_text()


def action_script(directory: Path, verb: str) -> str:
    """The action.lua of `verb`: its name, verbs.lua, then action.lua."""
    actions = directory / "actions"
    return f'local VERB = "{verb}"\n' + (actions / "verbs.lua").read_text() + (actions / "action.lua").read_text()


def actions_yaml(directory: Path) -> str:
    """The value of the actions key: a YAML document of discovery.lua and one definition per verb."""
    parts = ["discovery.lua: |\n", _indent(discovery_script(directory), 2), "definitions:\n"]
    for verb in VERBS:
        parts += [f"  - name: {verb}\n", "    action.lua: |\n", _indent(action_script(directory, verb), 6)]
    return "".join(parts)


def render(directory: Path) -> str:
    """argocd-cm.yaml as it should be, from the Lua sources in `directory` (manifests/argocd)."""
    health = (directory / "health.lua").read_text()
    return (
        HEADER
        + f"  {HEALTH_KEY}: |\n"
        + _indent(health, 4)
        + f"  {ACTIONS_KEY}: |\n"
        + _indent(actions_yaml(directory), 4)
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m torghut_localstack.argocd_cm MANIFESTS_ARGOCD_DIR", file=sys.stderr)
        return 2
    directory = Path(args[0])
    target = directory / "argocd-cm.yaml"
    target.write_text(render(directory))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
