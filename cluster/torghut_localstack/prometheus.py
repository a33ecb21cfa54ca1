"""A throwaway Prometheus (Debian's `prometheus` binary) scraping local endpoints every second.

    with PrometheusServer() as prom:
        prom.set_targets("torghut", ["127.0.0.1:8181"])
        prom.wait_for_targets("torghut")
        PrometheusConnect(prom.url).custom_query("up")

Targets come from `file_sd_configs` over `targets/*.json`; each file sets the `job` label, so
jobs are added, replaced or removed at runtime without a reload (Prometheus applies target
changes at most every 5 s, so a new target is scraped about 5-6 s later). Rule files are loaded from
`rules/*.yml` (`set_rules` reloads through the lifecycle API).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from torghut_localstack.ports import HOST, free_port
from torghut_localstack.procs import ManagedProcess, start_process
from torghut_localstack.server import LocalServer
from torghut_localstack.wait import WaitTimeout, wait_for

_HTTP_TIMEOUT_S = 5.0
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class PrometheusError(RuntimeError):
    """Prometheus could not be started, reloaded or queried; the message has its log."""


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits, '_', '-' and '.'")
    return name


def _write_atomically(path: Path, text: str) -> None:
    # The temp name doesn't match the *.json / *.yml globs, and rename is atomic, so
    # Prometheus never reads a half-written file.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


class PrometheusServer(LocalServer):
    """Prometheus on 127.0.0.1:`port` with `--web.enable-lifecycle`; `url` is its base URL."""

    error = PrometheusError

    def __init__(
        self,
        *,
        binary: str = "prometheus",
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        start_timeout: float = 60.0,
        die_with_parent: bool = True,
        host: str = HOST,
    ) -> None:
        """`host`: the address to listen on (the real node's IP for pods to reach it; 127.0.0.1 by default)."""
        super().__init__()
        self.host = host
        self.binary = binary
        self.scrape_interval = scrape_interval
        self.rule_files = list(rule_files)
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._require_workdir() / "prometheus.log"

    # -- targets and rules -------------------------------------------------------------------
    def set_targets(
        self,
        job: str,
        targets: Sequence[str],
        *,
        metrics_path: str = "/metrics",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Scrape `targets` ("host:port") as job `job`, replacing that job's previous targets."""
        group_labels = {**(labels or {}), "job": job, "__metrics_path__": metrics_path}
        document = [{"targets": list(targets), "labels": group_labels}]
        path = self._require_workdir() / "targets" / f"{_check_name('job', job)}.json"
        _write_atomically(path, json.dumps(document, indent=2))

    def remove_targets(self, job: str) -> None:
        (self._require_workdir() / "targets" / f"{_check_name('job', job)}.json").unlink(missing_ok=True)

    def targets(self, job: str) -> list[dict[str, Any]]:
        """The active targets of `job` as reported by /api/v1/targets."""
        response = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=_HTTP_TIMEOUT_S)
        response.raise_for_status()
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return [target for target in active if target.get("labels", {}).get("job") == job]

    def wait_for_targets(self, job: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until `job` has targets and every one of them was scraped successfully."""

        def all_up() -> list[dict[str, Any]]:
            found = self.targets(job)
            return found if found and all(target["health"] == "up" for target in found) else []

        return wait_for(all_up, timeout=timeout, what=f"all targets of job {job!r} to be up")

    def set_rules(self, name: str, content: str) -> None:
        """Install (or replace) rule file `name` and reload; a bad file raises with the reason."""
        path = self._require_workdir() / "rules" / f"{_check_name('rule file', name)}.yml"
        previous = path.read_text() if path.exists() else None
        _write_atomically(path, content)
        try:
            self.reload()
        except PrometheusError:
            if previous is None:
                path.unlink()
            else:
                _write_atomically(path, previous)
            self.reload()
            raise

    def reload(self) -> None:
        response = httpx.post(f"{self.url}/-/reload", timeout=_HTTP_TIMEOUT_S * 3)
        if response.status_code != httpx.codes.OK:
            raise PrometheusError(f"reload failed ({response.status_code}): {response.text.strip()}")

    # -- lifecycle ---------------------------------------------------------------------------
    def _config(self, workdir: Path) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": [str(workdir / "rules" / "*.yml")],
            "scrape_configs": [
                {
                    "job_name": "file_sd",
                    "file_sd_configs": [{"files": [str(workdir / "targets" / "*.json")], "refresh_interval": "1s"}],
                }
            ],
        }

    def _start(self) -> None:
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="torghut-prom-"))
        (workdir / "targets").mkdir()
        (workdir / "rules").mkdir()
        for rule_file in self.rule_files:
            shutil.copyfile(rule_file, workdir / "rules" / f"{rule_file.stem}.yml")
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(workdir), sort_keys=False))
        self.port = free_port()
        argv = [
            shutil.which(self.binary) or self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        self._process = start_process(
            "prometheus", argv, log_path=self.log_path, cwd=workdir, die_with_parent=self.die_with_parent
        )
        self._await_ready(self._process)

    def _await_ready(self, process: ManagedProcess) -> None:
        def ready() -> bool:
            if not process.running():
                raise PrometheusError(process.describe_exit())
            return httpx.get(f"{self.url}/-/ready", timeout=_HTTP_TIMEOUT_S).status_code == httpx.codes.OK

        try:
            wait_for(ready, timeout=self.start_timeout, what=f"{self.url}/-/ready", retry_on=(httpx.HTTPError,))
        except (WaitTimeout, PrometheusError) as error:
            raise PrometheusError(f"{error}\n--- last lines of {self.log_path} ---\n{process.tail()}") from error
