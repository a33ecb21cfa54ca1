"""The smoke check of a running cluster: a Deployment becomes Available, a Job completes."""

from __future__ import annotations

import time
from collections.abc import Callable

from torghut_localstack import workloads
from torghut_localstack.kubectl import Kubectl, KubectlError


def run_smoke(kubectl: Kubectl, *, log: Callable[[str], None] = print, timeout: float = 90.0) -> dict[str, float]:
    """Run the check in a fresh namespace (deleted afterwards); returns seconds per step."""
    timings: dict[str, float] = {}
    ns = workloads.unique_name("torghut-smoke")

    def step(what: str, action: Callable[[], object]) -> None:
        started = time.monotonic()
        action()
        timings[what] = time.monotonic() - started
        log(f"{what}: {timings[what]:.1f}s")

    def create_namespace() -> None:
        kubectl.apply(workloads.namespace(ns))
        workloads.wait_for_service_account(kubectl, ns, timeout=timeout)

    def deployment_available() -> None:
        kubectl.apply(workloads.deployment("smoke", replicas=2), namespace=ns)
        workloads.wait_for_rollout(kubectl, "smoke", namespace=ns, timeout=timeout)

    def job_complete() -> None:
        kubectl.apply(workloads.job("smoke"), namespace=ns)
        workloads.wait_for_condition(kubectl, "job", "smoke", namespace=ns, type_="Complete", timeout=timeout)

    try:
        step(f"namespace {ns} with its default ServiceAccount", create_namespace)
        step("Deployment Available (2 replicas)", deployment_available)
        step("Job Complete", job_complete)
    finally:
        try:
            kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")
        except KubectlError as error:
            log(f"could not delete namespace {ns}: {error}")
    return timings
