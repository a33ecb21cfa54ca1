"""Built-in check packs. A check in spec.verify.checks with the same name as a preset's check replaces it, so
every default is overridable."""

from __future__ import annotations

from torghut_operator.api.spec import Check, TorghutRolloutSpec

PRESETS: dict[str, list[Check]] = {"torghut-completion": []}


def effective_checks(spec: TorghutRolloutSpec) -> list[Check]:
    """The verify checks of ``spec``: presets first, in order, then the spec's own; same name, the spec wins."""
    own = {c.name: c for c in spec.verify.checks}
    merged: dict[str, Check] = {}
    for preset in spec.presets:
        for check in PRESETS[preset]:
            merged[check.name] = own.get(check.name, check)
    for check in spec.verify.checks:
        merged.setdefault(check.name, check)
    return list(merged.values())
