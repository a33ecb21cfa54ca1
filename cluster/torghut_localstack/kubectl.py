"""kubectl as a subprocess with a kubeconfig and a timeout; failures carry kubectl's stderr."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubectlError(RuntimeError):
    """kubectl failed or timed out."""

    def __init__(self, args: Sequence[str], detail: str, returncode: int | None = None) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed: {detail}")
        self.args_ = list(args)
        self.returncode = returncode
        self.detail = detail


@dataclass(frozen=True)
class Kubectl:
    """`kubectl(*args)` runs the binary against `kubeconfig` and returns its stdout."""

    binary: Path
    kubeconfig: Path
    timeout: float = 60.0

    def env(self) -> dict[str, str]:
        """The environment for other subprocesses that should reach the same cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def __call__(self, *args: str, stdin: str | None = None, timeout: float | None = None) -> str:
        limit = self.timeout if timeout is None else timeout
        argv = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=limit, env=self.env(), check=False
            )
        except subprocess.TimeoutExpired as error:
            raise KubectlError(args, f"timed out after {limit:.0f}s") from error
        if done.returncode != 0:
            raise KubectlError(args, f"exit {done.returncode}: {done.stderr.strip()}", done.returncode)
        return done.stdout

    def json(self, *args: str, timeout: float | None = None) -> Any:
        """`kubectl ARGS -o json`, parsed."""
        return json.loads(self(*args, "-o", "json", timeout=timeout))

    def get(self, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        """One object, or None if it doesn't exist."""
        scope = ["-n", namespace] if namespace else []
        output = self("get", kind, name, *scope, "--ignore-not-found", "-o", "json")
        return json.loads(output) if output.strip() else None

    def apply(self, *manifests: Mapping[str, Any], namespace: str | None = None) -> str:
        """`kubectl apply` the given objects (server-side validation, client-side apply)."""
        document = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        scope = ["-n", namespace] if namespace else []
        return self("apply", *scope, "-f", "-", stdin=json.dumps(document))
