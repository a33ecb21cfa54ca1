"""What simulated pods do on the local cluster (kwok stages), and the labels that steer them.

kwok plays the kubelet: it moves pods through "stages" instead of running containers.
`kwok-stages.yaml` (passed with `--config`) keeps kwok's default behaviour and adds two
failure modes that tests select with a label on the **pod template**:

- default: a pod gets an IP and becomes Ready and Running about at once, so a Deployment
  becomes Available; a Running pod owned by a Job then exits 0 (phase Succeeded), so the Job
  completes; a deleted pod goes away.
- `pod-container-running-failed.stage.kwok.x-k8s.io: "true"` (`FAIL_LABEL`, kwok's own chaos
  stage): about 1-2 s after the pod runs, its containers terminate with exit code 1 and the pod
  becomes Failed, so a Job with `backoffLimit: 0` fails. Annotations
  `pod-container-running-failed.stage.kwok.x-k8s.io/exit-code`, `/reason` and `/message`
  override the exit code, reason and message.
- `torghut.proompteng.ai/sim-never-ready: "true"` (`NEVER_READY_LABEL`, ours): the pod gets an
  IP and runs but never becomes Ready, so a Deployment misses `progressDeadlineSeconds`
  (condition Progressing=False, reason ProgressDeadlineExceeded).

On a real cluster (kind) these labels do nothing; `torghut_localstack.workloads` builds
manifests that fail the same way there (a failing command, a failing readiness probe).
"""

from __future__ import annotations

from importlib import resources

FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
NEVER_READY_LABEL = "torghut.proompteng.ai/sim-never-ready"


def stages_yaml() -> str:
    """The kwok `--config` document: kwok's default pod stages plus the two above."""
    return resources.files("torghut_localstack").joinpath("kwok-stages.yaml").read_text()
