"""A migration Job that fails in a real container on the real node: its pod is kept, the last lines of its log
(secrets removed) are in status and in the failure message, and `kubectl torghut status` shows them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ClusterHandle
from tests.e2e.conftest import APP_PASSWORD, World, rollout_manifest
from torghut_localstack.realnode import REAL_NODE_LABEL, REAL_NODE_TAINT

pytestmark = pytest.mark.e2e

PLUGIN = Path(sys.executable).parent / "kubectl-torghut"
SCRIPT = 'echo "connecting to $DB_DSN"; echo "running upgrade 0006 -> 0007"; echo "ERROR: relation executions does not exist" >&2; exit 3'


def test_a_failed_migration_jobs_log_is_in_status_and_in_the_plugin(world: World, cluster: ClusterHandle) -> None:
    assert cluster.local is not None, "the migration Job runs on the local stack's real node"
    busybox = cluster.local.images["busybox"].reference
    job = {
        "image": busybox,
        "command": ["sh", "-c", SCRIPT],
        "backoffLimit": 0,
        "nodeSelector": {REAL_NODE_LABEL: REAL_NODE_TAINT["value"]},
        "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
    }
    check = {"name": "db-up", "postgres": {"query": "SELECT 1 AS value"}, "min": 1}
    verify = {"interval": "1s", "count": 1, "checks": [check]}
    world.apply(rollout_manifest("migrate-fails", world, migrate={"job": job}, verify=verify))
    failed = world.wait_phase("migrate-fails", "Failed", timeout=120)
    migration = failed["status"]["migration"]
    logs = migration["jobLogs"]
    assert "running upgrade 0006 -> 0007" in logs
    assert "ERROR: relation executions does not exist" in logs
    assert "connecting to postgresql://" in logs
    assert APP_PASSWORD not in logs, "the DSN's password reached status"
    assert "last error line: ERROR: relation executions does not exist" in failed["status"]["message"]
    # The pod is kept after the failure, so its whole log can still be read.
    pods = world.kubectl("get", "pods", "-n", world.namespace, "-l", f"job-name={migration['jobName']}", "-o", "name")
    assert pods.strip(), "the failed Job's pod was not kept"
    shown = subprocess.run(
        [str(PLUGIN), "status", "migrate-fails", "-n", world.namespace],
        env={"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin", "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "Migration Job log" in shown.stdout
    assert "ERROR: relation executions does not exist" in shown.stdout
    assert APP_PASSWORD not in shown.stdout
