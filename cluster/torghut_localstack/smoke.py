"""The smoke check of a running cluster: a Deployment becomes Available, a Job completes (on the kwok node), and,
with a real node, a Job runs a real command there whose output `kubectl logs` shows."""

from __future__ import annotations

import time
from collections.abc import Callable

from torghut_localstack import workloads
from torghut_localstack.kubectl import Kubectl, KubectlError


def run_smoke(
    kubectl: Kubectl, *, log: Callable[[str], None] = print, timeout: float = 90.0, real_node_image: str | None = None
) -> dict[str, float]:
    """Run the check in a fresh namespace (deleted afterwards); returns seconds per step. `real_node_image`: a
    busybox image imported into the real node (`images.busybox_image`), to run a Job there too."""
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

    def real_job_complete() -> None:
        assert real_node_image is not None
        job = workloads.job("smoke-real", image=real_node_image)
        job["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "echo smoke on $(hostname)"]
        kubectl.apply(workloads.on_real_node(job), namespace=ns)
        workloads.wait_for_condition(kubectl, "job", "smoke-real", namespace=ns, type_="Complete", timeout=timeout)
        logs = kubectl("logs", "job/smoke-real", "-n", ns)
        if "smoke on smoke-real-" not in logs:
            raise AssertionError(f"the real node's Job printed {logs!r}")

    try:
        step(f"namespace {ns} with its default ServiceAccount", create_namespace)
        step("Deployment Available (2 replicas)", deployment_available)
        step("Job Complete", job_complete)
        if real_node_image is not None:
            step("Job Complete on the real node, its output in kubectl logs", real_job_complete)
    finally:
        try:
            kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")
        except KubectlError as error:
            log(f"could not delete namespace {ns}: {error}")
    return timings
