"""The samples users copy from manifests/samples/ parse with the operator's own models: what the docs show is
what the operator accepts. (tests/e2e/test_crd_admission.py proves the API server accepts them too.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from torghut_operator.core.api.spec import GROUP, KIND, VERSION, TargetKind, TorghutRolloutSpec

pytestmark = pytest.mark.unit

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "manifests" / "samples"
SAMPLES = sorted(SAMPLES_DIR.glob("*.yaml"))
BAD_SAMPLES = sorted((Path(__file__).resolve().parents[1] / "bad_samples").glob("*.yaml"))


def rollouts(path: Path) -> list[dict[str, Any]]:
    """The TorghutRollout documents of a sample file (a file may also hold e.g. the ConfigMap it uses)."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc for doc in documents if doc.get("kind") == KIND]


def all_specs() -> list[TorghutRolloutSpec]:
    return [TorghutRolloutSpec.model_validate(doc["spec"]) for path in SAMPLES for doc in rollouts(path)]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.name)
def test_sample_parses(path: Path) -> None:
    documents = rollouts(path)
    assert documents, f"{path.name} holds no {KIND}"
    for doc in documents:
        assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
        assert doc["metadata"]["namespace"] == "torghut"
        spec = TorghutRolloutSpec.model_validate(doc["spec"])
        assert "@sha256:" in spec.target.image, "samples pin the image by digest"
        if spec.database is not None:
            assert (spec.database.secret_ref.name, spec.database.secret_ref.key) == ("torghut-db-app", "uri")


def test_samples_cover_the_documented_shapes() -> None:
    """One sample each for a Job migration, a SQL migration with expectations, the preset and Knative."""
    specs = all_specs()
    job = [s for s in specs if s.migrate and s.migrate.job]
    assert any(
        s.target.kind is TargetKind.DEPLOYMENT and {c.provider for c in s.verify.checks} >= {"postgres", "prometheus"}
        for s in job
    )
    sql = [s.migrate for s in specs if s.migrate and s.migrate.sql and s.migrate.expect]
    assert any(m.sql and m.sql.config_map_ref.name == "torghut-route-grant-sql" for m in sql)
    expectations = [m.expect for m in sql if m.expect]
    assert any("0007_autonomy_permissions_backfill_routes" in e.alembic_heads for e in expectations)
    assert any(g.role == "torghut_app" and g.tables == "research_*" for e in expectations for g in e.grants)
    assert any("torghut-completion" in s.presets for s in specs)
    assert any(s.target.kind is TargetKind.KNATIVE_SERVICE and s.target.container == "user-container" for s in specs)
    assert any(s.promotion and any(step.required_promotion for step in s.promotion.steps) for s in specs)


def test_sql_sample_ships_its_configmap() -> None:
    """The SQL migration sample is complete: the ConfigMap it names is in the same file, with .sql keys."""
    (path,) = [p for p in SAMPLES if any(d["spec"].get("migrate", {}).get("sql") for d in rollouts(p))]
    config_maps = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "ConfigMap"
    }
    data = config_maps["torghut-route-grant-sql"]["data"]
    assert data
    assert all(key.endswith(".sql") for key in data)


@pytest.mark.parametrize("path", BAD_SAMPLES, ids=lambda path: path.name)
def test_bad_sample_is_refused_by_the_models_too(path: Path) -> None:
    """The API server refuses each bad sample (tests/e2e/test_crd_admission.py); the models must agree, so an
    object admitted under an older CRD is refused at the operator's edge instead of running."""
    (document,) = rollouts(path)
    with pytest.raises(ValidationError):
        TorghutRolloutSpec.model_validate(document["spec"])
