"""``kubectl torghut``: the kubectl plugin for TorghutRollouts (kubectl runs ``kubectl-torghut`` from PATH).

Read: ``status`` (``--watch`` follows a Kubernetes WATCH until the rollout finishes; exit 0 on Succeeded, 1 on
Failed, RolledBack or Aborted), ``list``, ``report``, ``history``, ``why``. Every view is laid out for the
terminal's width (80 columns and up). Act: ``abort``, ``retry``, ``promote``, ``pause``,
``resume`` - each checked against the rollout's phase first (the rules of :mod:`torghut_operator.core.verbs`, the same
the operator applies), then requested through the ``torghut.proompteng.ai/action`` annotation.

Exit codes: 0 done; 1 an error, or (``status --watch``) a rollout that ended Failed, RolledBack or Aborted;
2 a verb refused (or bad usage); 3 timed out waiting.

Every failure is one line on stderr, never a traceback; nothing here prints a secret (the plugin reads no
Secret, and credentials in URLs are masked in messages).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import GROUP, KIND, PLURAL, VERSION, TorghutRolloutSpec
from torghut_operator.core.api.status import (
    BackfillStatus,
    CheckStatus,
    LastAction,
    Phase,
    TorghutRolloutStatus,
    Verdict,
)
from torghut_operator.core.manifests import ACTION_ANNOTATION, report_name
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.timefmt import parse_time, span, utcnow
from torghut_operator.core.troubleshooting import advice_for
from torghut_operator.core.verbs import APPLIES_TO, VERBS, action_value, is_refusal, parse_action, verb_applies

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_TIMEOUT = 3

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 15.0
TIMEOUT = (CONNECT_TIMEOUT, READ_TIMEOUT)
"""(connect, read) seconds of every API call: an unreachable cluster is reported in seconds, not minutes."""
WATCH_SECONDS = 60
"""Server-side timeout of one watch request; the watch is resumed from the last resourceVersion."""
REPORT_KEY = "report.md"
MEASUREMENTS_SHOWN = 3
EMPTY = "—"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

PHASE_STYLES = {
    Phase.SUCCEEDED: "bold green",
    Phase.FAILED: "bold red",
    Phase.ROLLED_BACK: "bold red",
    Phase.ABORTED: "bold red",
    Phase.ROLLING_BACK: "bold yellow",
    Phase.PAUSED: "bold yellow",
}
VERDICT_STYLES = {
    Verdict.SUCCESSFUL: "green",
    Verdict.FAILED: "red",
    Verdict.ERROR: "red",
    Verdict.INCONCLUSIVE: "yellow",
    Verdict.RUNNING: "cyan",
    Verdict.PENDING: "dim",
}


class CliError(Exception):
    """A failure the user reads as one line on stderr; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED, *, refusal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.refusal = refusal
        """A verb that does not apply: the reason is the whole line (no "error:")."""


# ---------------------------------------------------------------------------------------------------------------
# Talking to the cluster


def _mask(text: str) -> str:
    """``text`` on one line, without credentials in URLs (``scheme://user:secret@host``)."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", " ".join(str(text).split()))


def resolve_kubeconfig(explicit: str | None, env: dict[str, str] | None = None) -> str | None:
    """The kubeconfig to load: ``--kubeconfig``, else ``$KUBECONFIG`` (a path list), else ``~/.kube/config``.
    None: none exists, but the plugin runs in a pod (in-cluster config). Raises CliError when there is none."""
    environ = os.environ if env is None else env
    if explicit:
        if not Path(explicit).expanduser().is_file():
            raise CliError(f"kubeconfig {explicit} not found (--kubeconfig)")
        return explicit
    listed = environ.get("KUBECONFIG", "")
    if listed:
        paths = [p for p in listed.split(os.pathsep) if p]
        if not any(Path(p).expanduser().is_file() for p in paths):
            raise CliError(f"kubeconfig {listed} not found (KUBECONFIG)")
        return listed
    default = Path("~/.kube/config").expanduser()
    if default.is_file():
        return str(default)
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    raise CliError(f"no kubeconfig: {default} not found; set KUBECONFIG or pass --kubeconfig")


def _api_message(exc: ApiException) -> str:
    """The API server's own message (a Status body), else its HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{exc.status} {exc.reason}".strip()


def _is_missing_object(exc: ApiException) -> bool:
    """A 404 naming the object (a Status with details.name), not a 404 for an unknown resource type."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return False
    return isinstance(body, dict) and bool((body.get("details") or {}).get("name"))


def _unreachable(server: str, exc: BaseException) -> CliError:
    reason: object = getattr(exc, "reason", None) or exc
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # (a subclass of ConnectTimeoutError)
        why = str(reason).split("Failed to establish a new connection:")[-1].strip()
        why = re.sub(r"^\[Errno -?\d+\]\s*", "", why) or "connection failed"
    elif isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        why = f"no connection within {CONNECT_TIMEOUT:g}s"
    elif isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        why = f"no answer within {READ_TIMEOUT:g}s"
    elif isinstance(reason, urllib3.exceptions.SSLError):
        why = f"TLS error: {reason}"
    else:
        why = f"{type(reason).__name__}: {reason}"
    return CliError(_mask(f"cannot reach the Kubernetes API server at {server}: {why}"))


@dataclass
class Session:
    """An API client for one kubeconfig context, and the namespace commands default to."""

    api: client.ApiClient
    namespace: str
    server: str

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def error(self, exc: ApiException, what: str, *, rollout: str | None = None, crd: bool = False) -> CliError:
        """An API error as one line: unreachable server, missing rollout or CRD, rejected credentials, ..."""
        if exc.status == 0:  # the client's wrapper of a TLS failure
            return _unreachable(self.server, exc)
        if exc.status == 401:
            return CliError(f"{what}: the API server rejected the kubeconfig's credentials (401 Unauthorized)")
        if exc.status == 404 and rollout is not None and _is_missing_object(exc):
            return CliError(f'torghutrollout "{rollout}" not found in namespace "{self.namespace}"')
        if exc.status == 404 and crd:
            return CliError(
                f"the {KIND} CRD ({PLURAL}.{GROUP}, {VERSION}) is not installed in the cluster at {self.server}; "
                "apply crds/torghutrollouts.yaml"
            )
        return CliError(_mask(f"{what}: {_api_message(exc)}"))

    @contextmanager
    def calling(self, what: str, *, rollout: str | None = None, crd: bool = False) -> Iterator[None]:
        try:
            yield
        except ApiException as exc:
            raise self.error(exc, what, rollout=rollout, crd=crd) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(self.server, exc) from None

    def get_rollout(self, name: str) -> dict[str, Any]:
        with self.calling(f"get torghutrollout {name}", rollout=name, crd=True):
            found = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=TIMEOUT
            )
        return _as_dict(found)

    def list_rollouts(self, all_namespaces: bool) -> list[dict[str, Any]]:
        with self.calling("list torghutrollouts", crd=True):
            if all_namespaces:
                result = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=TIMEOUT)
            else:
                result = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, _request_timeout=TIMEOUT
                )
        return [item for item in _as_dict(result).get("items") or [] if isinstance(item, dict)]

    def patch_annotation(self, name: str, key: str, value: str) -> dict[str, Any]:
        """A merge patch of one annotation; returns the patched object."""
        body = {"metadata": {"annotations": {key: value}}}
        with self.calling(f"annotate torghutrollout {name}", rollout=name, crd=True):
            result = self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                body,
                _content_type="application/merge-patch+json",
                _request_timeout=TIMEOUT,
            )
        return _as_dict(result)

    def get_report(self, name: str, uid: str) -> str | None:
        """The operator's evidence report, if it published one for this very rollout (owned by ``uid``)."""
        what = f"get configmap {report_name(name)}"
        try:
            with self.calling(what):
                try:
                    found = self.core.read_namespaced_config_map(
                        report_name(name), self.namespace, _request_timeout=TIMEOUT
                    )
                except ApiException as exc:
                    if exc.status == 404:
                        return None
                    raise
        except CliError as exc:
            if "forbidden" in exc.message:  # may read rollouts but not ConfigMaps: render from status instead
                return None
            raise
        cm = _as_dict(self.api.sanitize_for_serialization(found))  # type: ignore[no-untyped-call]
        owners = (cm.get("metadata") or {}).get("ownerReferences") or []
        if uid and not any(isinstance(o, dict) and o.get("uid") == uid for o in owners):
            return None  # left over from an earlier rollout of the same name
        text = (cm.get("data") or {}).get(REPORT_KEY)
        return text if isinstance(text, str) and text.strip() else None

    def list_events(self, name: str, uid: str | None) -> list[dict[str, Any]]:
        selector = f"involvedObject.name={name},involvedObject.kind={KIND}"
        if uid:
            selector += f",involvedObject.uid={uid}"
        with self.calling(f"list events of torghutrollout {name}"):
            found = self.core.list_namespaced_event(self.namespace, field_selector=selector, _request_timeout=TIMEOUT)
        items = _as_dict(self.api.sanitize_for_serialization(found)).get("items") or []  # type: ignore[no-untyped-call]
        return [e for e in items if isinstance(e, dict)]

    def watch_rollout(self, name: str, resource_version: str, deadline: float | None) -> Iterator[dict[str, Any]]:
        """Every new version of the rollout after ``resource_version``, from a Kubernetes WATCH (resumed from the
        last version seen when a watch request ends); returns at ``deadline`` (time.monotonic()), if given."""
        version = resource_version
        while True:
            seconds = WATCH_SECONDS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                seconds = max(1, min(WATCH_SECONDS, math.ceil(remaining)))
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                with self.calling(f"watch torghutrollout {name}", rollout=name, crd=True):
                    try:
                        for event in stream.stream(  # type: ignore[no-untyped-call]
                            self.custom.list_namespaced_custom_object,
                            GROUP,
                            VERSION,
                            self.namespace,
                            PLURAL,
                            field_selector=f"metadata.name={name}",
                            resource_version=version,
                            allow_watch_bookmarks=True,
                            timeout_seconds=seconds,
                            _request_timeout=(CONNECT_TIMEOUT, seconds + READ_TIMEOUT),
                        ):
                            obj = event.get("raw_object")
                            if not isinstance(obj, dict):
                                continue
                            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                            if event.get("type") == "DELETED":
                                raise CliError(f'torghutrollout "{name}" was deleted')
                            if event.get("type") in ("ADDED", "MODIFIED"):
                                yield obj
                    except ApiException as exc:
                        if exc.status != 410:
                            raise
                        # The watch fell behind (410 Gone): read the object afresh and watch on from there.
                        obj = self.get_rollout(name)
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                        yield obj
            finally:
                stream.stop()  # type: ignore[no-untyped-call]


def _first_error(exc: Exception) -> str:
    """The first problem a pydantic error names, on one line, with where it is."""
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return " ".join(str(exc).split())


def _as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CliError(f"unexpected answer from the API server: {type(value).__name__}")
    return value


def _kube_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig context (``--context`` or the current one), else ``default``."""
    if kubeconfig is None:
        try:
            return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
        except OSError:
            return "default"
    contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    chosen = current
    if context is not None:
        chosen = next((c for c in contexts or [] if c.get("name") == context), None)
        if chosen is None:
            raise CliError(f"context {context!r} not found in kubeconfig {kubeconfig}")
    if not isinstance(chosen, dict):
        return "default"
    return str((chosen.get("context") or {}).get("namespace") or "default")


def connect(namespace: str | None, kubeconfig: str | None, context: str | None) -> Session:
    """A session for the options given; raises CliError (one line) for a missing or broken kubeconfig."""
    path = resolve_kubeconfig(kubeconfig)
    configuration = client.Configuration()
    try:
        default_namespace = _kube_namespace(path, context)
        if path is None:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
    except CliError:
        raise
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise CliError(f"kubeconfig {path} is not valid YAML: {problem}") from None
    except ConfigException as exc:
        where = path or "in-cluster config"
        raise CliError(_mask(f"kubeconfig {where} is not usable: {exc}")) from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        where = path or "in-cluster config"
        raise CliError(_mask(f"kubeconfig {where} is not usable: {type(exc).__name__}: {exc}")) from None
    configuration.retries = 1
    return Session(client.ApiClient(configuration), namespace or default_namespace, _mask(configuration.host))


# ---------------------------------------------------------------------------------------------------------------
# Reading a rollout


@dataclass(frozen=True)
class Rollout:
    """A TorghutRollout as read from the API server, its spec and status parsed."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    created: str | None
    raw: dict[str, Any]
    spec: TorghutRolloutSpec | None
    status: TorghutRolloutStatus
    annotations: dict[str, str]
    spec_error: str | None = None
    """Why the spec does not parse (the operator then fails the rollout and applies no verb)."""

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Rollout:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        try:
            status = TorghutRolloutStatus.model_validate(obj.get("status") or {})
        except ValidationError as exc:
            raise CliError(
                f'the status of torghutrollout "{name}" is not readable by this plugin (status.{_first_error(exc)}); '
                "is the plugin older than the operator?"
            ) from None
        spec: TorghutRolloutSpec | None = None
        spec_error = None
        try:
            spec = TorghutRolloutSpec.model_validate(obj.get("spec") or {})
            effective_checks(spec)  # what the operator validates too (presets)
        except (ValidationError, ValueError) as exc:
            spec, spec_error = None, _first_error(exc)
        return cls(
            name=name,
            namespace=str(meta.get("namespace") or ""),
            uid=str(meta.get("uid") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
            created=meta.get("creationTimestamp"),
            raw=obj,
            spec=spec,
            status=status,
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
            spec_error=spec_error,
        )

    @property
    def raw_spec(self) -> dict[str, Any]:
        spec = self.raw.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def spec_paused(self) -> bool:
        return bool(self.raw_spec.get("paused"))

    @property
    def pending_action(self) -> str | None:
        return self.annotations.get(ACTION_ANNOTATION)

    def status_for_verbs(self) -> TorghutRolloutStatus:
        """The status the operator applies a verb to: a spec it has not seen yet starts a new run (Pending)."""
        if self.spec is not None and self.status.spec_hash != self.spec.spec_hash():
            return TorghutRolloutStatus()
        return self.status

    def refusal(self, verb: str) -> str | None:
        """Why ``verb`` does not apply to this rollout now (the operator's rules), or None."""
        if verb in VERBS and self.spec is None:
            return f"{verb} does not apply: the spec of {self.name} is invalid ({self.spec_error}); fix the spec first"
        return verb_applies(verb, self.status_for_verbs(), spec_paused=self.spec_paused, subject=self.name)

    def applicable_verbs(self) -> list[str]:
        return [v for v in VERBS if self.refusal(v) is None]


# ---------------------------------------------------------------------------------------------------------------
# Rendering (pure: tested with a recording console)


def _t(value: object, style: str = "") -> Text:
    """Plain text (never rich markup: messages may contain [brackets])."""
    return Text(EMPTY if value is None or value == "" else str(value), style=style)


def age(since: str | None, now: datetime) -> str:
    """kubectl's short ages: 45s, 3m20s, 17m, 5h, 3d."""
    if not since:
        return EMPTY
    try:
        seconds = max(0, int((now - parse_time(since)).total_seconds()))
    except ValueError:
        return EMPTY
    return span(seconds)


def when(moment: str | None, now: datetime) -> str:
    if not moment:
        return EMPTY
    try:
        text = parse_time(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return moment
    return f"{text} ({age(moment, now)} ago)"


def _phase_text(phase: Phase | str | None) -> Text:
    if not phase:
        return _t(None)
    try:
        style = PHASE_STYLES.get(Phase(phase), "bold cyan")
    except ValueError:
        style = "bold"
    return Text(str(phase), style=style)


def _verdict_text(check: CheckStatus) -> Text:
    text = Text(check.phase.value, style=VERDICT_STYLES.get(check.phase, ""))
    if check.phase is Verdict.INCONCLUSIVE and check.approved:
        text.append(" (approved)")
    if check.dry_run:
        text.append(" (dry run)", style="dim")
    return text


def _section(title: str) -> Text:
    return Text(f"\n{title}", style="bold underline")


WIDE = 160
"""At this width and more every view shows every column; below it, the narrow layouts."""
NARROW = 100
"""Below this width tables drop their least needed columns."""
LABEL_WIDTH = 19
"""The label column of the status and why views ("Awaiting approval" and its padding)."""
DIGEST_SHOWN = 12


def short_image(image: str | None) -> str | None:
    """``registry/lab/torghut@sha256:<64 hex>`` as ``torghut@<first 12 hex>``, ``registry/lab/torghut:v42`` as
    ``torghut:v42``: what tells releases apart in a narrow view (-o wide and -o json show it whole)."""
    if not image:
        return image
    name, at, digest = image.partition("@")
    repository = name.rsplit("/", 1)[-1]
    if not at:
        return repository
    _, colon, hexdigits = digest.partition(":")
    return f"{repository}@{hexdigits[:DIGEST_SHOWN]}" if colon else f"{repository}@{digest[:DIGEST_SHOWN]}"


def _fitted_image(image: str | None, width: int, *, wide: bool) -> str | None:
    """The whole image when it fits on the line (or -o wide asks for it), else the short form."""
    if wide or image is None or len(image) <= width - LABEL_WIDTH:
        return image
    return short_image(image)


def ready_text(s: TorghutRolloutStatus) -> str:
    """The Ready condition as ``False (AwaitingApproval)``; ``—`` before the operator has set it."""
    ready = next((c for c in s.conditions if c.type == "Ready"), None)
    if ready is None:
        return EMPTY
    return f"{ready.status} ({ready.reason})" if ready.reason else ready.status


def _ready_style(s: TorghutRolloutStatus) -> str:
    ready = next((c for c in s.conditions if c.type == "Ready"), None)
    if ready is None:
        return "dim"
    if ready.status == "True":
        return "green"
    return "yellow" if ready.reason in _PROGRESS_REASONS else "red"


def _target_image(r: Rollout) -> str | None:
    s = r.status
    found = s.image or (r.spec.target.image if r.spec is not None else (r.raw_spec.get("target") or {}).get("image"))
    return str(found) if found else None


def _header(r: Rollout, now: datetime, width: int, wide: bool) -> Table:
    s = r.status
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("Name", _t(f"{r.namespace}/{r.name}"))
    grid.add_row("Phase", _phase_text(s.phase))
    grid.add_row("Stage", _t(s.stage))
    grid.add_row("Ready", _t(ready_text(s), _ready_style(s)))
    grid.add_row("Age", _t(age(r.created, now)))
    grid.add_row("Image", _t(_fitted_image(_target_image(r), width, wide=wide)))
    grid.add_row("Previous image", _t(_fitted_image(s.previous_image, width, wide=wide)))
    grid.add_row("Attempt", _t(s.attempt))
    grid.add_row("Message", _t(s.message))
    backfill = s.migration.backfill if s.migration is not None else None
    if backfill is not None:
        grid.add_row("Backfill", backfill_bar(backfill, width))
    if s.failed_stage:
        grid.add_row("Failed stage", _t(s.failed_stage, "red"))
    grid.add_row("Blocked by", _t(f"TorghutRollout {s.blocked_by}" if s.blocked_by else None))
    if s.awaiting_approval:
        approval = Text("yes", style="bold yellow")
        approval.append(f": kubectl torghut promote {r.name} -n {r.namespace}  (or abort)", style="")
    else:
        approval = Text("no")
    grid.add_row("Awaiting approval", approval)
    if s.phase is Phase.PAUSED:
        by = "spec.paused" if s.paused_by == "spec" else "the pause verb"
        grid.add_row("Paused", _t(f"in {s.paused_from.value if s.paused_from else EMPTY} by {by}"))
    grid.add_row("Started", _t(when(s.started_at, now)))
    if s.completed_at:
        grid.add_row("Completed", _t(when(s.completed_at, now)))
    if s.next_measurement_at and not s.phase.terminal:
        grid.add_row("Next measurement", _t(when(s.next_measurement_at, now).replace(" ago)", ")")))
    if r.pending_action:
        verb, _ = parse_action(r.pending_action)
        grid.add_row("Pending action", _t(f"{verb} (requested; the operator has not handled it yet)", "yellow"))
    verbs = r.applicable_verbs()
    grid.add_row("Verbs now", _t(", ".join(verbs) if verbs else "none (finished)"))
    return grid


BAR_CELLS = 30
"""Cells of the backfill bar at 100 columns and more (20 below)."""


def backfill_bar(backfill: BackfillStatus, width: int) -> Text:
    """Three lines: the file and its table; ``█████░░░░░  45%  450,000 / 1,000,000 rows``; rate, ETA, batch size
    and what throttles it (once finished: the figures of the whole pass)."""
    cells = BAR_CELLS if width >= NARROW else 20
    filled = cells * backfill.percent // 100
    text = Text(f"{backfill.file} on {backfill.table}\n")
    text.append("█" * filled, style="green" if backfill.finished else "cyan")
    text.append("░" * (cells - filled), style="dim")
    text.append(f" {backfill.percent:>3}%", style="bold")
    text.append(f"  {backfill.rows_done:,} / {backfill.rows_total:,} rows\n")
    rate = f"{backfill.rows_per_second:,.0f} rows/s"
    if backfill.finished:
        text.append(f"done in {backfill.batches:,} batches, {rate}", style="green")
        return text
    text.append(rate)
    text.append(f", ETA {span(backfill.eta_seconds)}" if backfill.eta_seconds is not None else ", ETA unknown")
    text.append(f", batch {backfill.batch_size:,}")
    if backfill.throttled:
        text.append(f"; throttled: {backfill.throttled}", style="yellow")
    return text


def _conditions(s: TorghutRolloutStatus, now: datetime) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", expand=False)
    for column in ("Type", "Status", "Reason", "Message", "Since"):
        table.add_column(column, overflow="fold")
    for c in s.conditions:
        style = {"True": "green", "False": "red" if c.reason not in _PROGRESS_REASONS else "yellow"}.get(
            c.status, "dim"
        )
        table.add_row(
            _t(c.type), _t(c.status, style), _t(c.reason), _t(c.message), _t(age(c.last_transition_time, now))
        )
    return table


_PROGRESS_REASONS = frozenset(
    {"Pending", "Progressing", "Migrating", "Deploying", "Verifying", "Promoting", "AwaitingApproval", "Paused"}
)


def _counts(c: CheckStatus) -> str:
    return f"{c.successful}/{c.failed}/{c.inconclusive}/{c.errors}"


def _checks(s: TorghutRolloutStatus, width: int) -> Table:
    narrow = width < NARROW
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    table.add_column("Check", overflow="fold")
    if not narrow:
        table.add_column("Provider", no_wrap=True)
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Counts", no_wrap=True, justify="right")
    table.add_column("Last value", overflow="fold", max_width=24 if not narrow else 12)
    table.add_column("Last message", overflow="fold", min_width=30 if not narrow else 20)
    for c in s.checks:
        last = c.measurements[-1].value if c.measurements else None
        cells = [_t(c.name)] + ([] if narrow else [_t(c.provider)])
        table.add_row(*cells, _verdict_text(c), _t(_counts(c)), _t(last), _t(c.message))
    return table


def _checks_title(s: TorghutRolloutStatus) -> str:
    stages = sorted({c.stage for c in s.checks})
    where = f"stage {', '.join(stages)}; " if stages else ""
    return f"Checks ({where}counts: successful/failed/inconclusive/errors)"


def _measurements(s: TorghutRolloutStatus, now: datetime, keep: int, width: int) -> Table:
    narrow = width < NARROW
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    table.add_column("Check", overflow="fold")
    table.add_column("At", no_wrap=True)
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Value", overflow="fold", max_width=24 if not narrow else 12)
    if not narrow:
        table.add_column("Samples", no_wrap=True)
    table.add_column("Message", overflow="fold")
    for c in s.checks:
        for m in c.measurements[-keep:] if keep > 0 else []:
            cells = [
                _t(c.name),
                _t(age(m.at, now) + " ago"),
                Text(m.phase.value, style=VERDICT_STYLES.get(m.phase, "")),
                _t(m.value),
            ]
            cells += [] if narrow else [_t(m.samples)]
            table.add_row(*cells, _t(m.message))
    return table


def _steps(r: Rollout) -> Table | None:
    steps = (r.raw_spec.get("promotion") or {}).get("steps") or []
    if not steps:
        return None
    s = r.status
    promo = s.promotion
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    for column in ("#", "Step", "State", "Sets", "Gate"):
        table.add_column(column, overflow="fold")
    for i, step in enumerate(steps):
        name = str(step.get("name") or "")
        env = ", ".join(f"{k}={v}" for k, v in sorted((step.get("env") or {}).items()))
        gate = []
        if step.get("requiredPromotion"):
            gate.append(f"{step['requiredPromotion'].get('mode')} promotion row")
        if step.get("requiresApproval"):
            gate.append("approval")
        if promo is not None and name in promo.completed:
            state = Text("done", style="green")
        elif promo is not None and i == promo.step and s.phase in (Phase.PROMOTING, Phase.PAUSED):
            if promo.applied:
                detail = "applied, re-verifying"
            elif s.awaiting_approval:
                detail = "awaiting approval"
            elif promo.approved:
                detail = "approved, applying"
            else:
                detail = promo.message or "applying"
            state = Text(f"current: {detail}", style="bold cyan")
        elif promo is not None and i == promo.step and s.phase.terminal and s.phase is not Phase.SUCCEEDED:
            state = Text(f"stopped ({s.phase.value})", style="red")
        else:
            state = Text("pending", style="dim")
        table.add_row(_t(i + 1), _t(name), state, _t(env), _t(", ".join(gate) or None))
    return table


def _last_action(s: TorghutRolloutStatus, now: datetime) -> Text:
    a = s.last_action
    if a is None:
        return Text("none")
    return Text(f"{a.verb} {when(a.at, now)}: {a.result}")


def render_status(
    r: Rollout,
    *,
    now: datetime | None = None,
    measurements: int = MEASUREMENTS_SHOWN,
    width: int = WIDE,
    wide: bool = False,
) -> Group:
    """Everything ``kubectl torghut status`` shows, as one rich renderable laid out for ``width`` columns."""
    now = now or utcnow()
    s = r.status
    parts: list[RenderableType] = [_header(r, now, width, wide)]
    parts += [_section("Conditions"), _conditions(s, now) if s.conditions else Text("none yet")]
    if s.checks:
        parts += [_section(_checks_title(s)), _checks(s, width)]
    else:
        parts += [_section("Checks"), Text("none measured yet")]
    if any(c.measurements for c in s.checks) and measurements > 0:
        parts += [
            _section(f"Measurements (last {measurements} per check)"),
            _measurements(s, now, measurements, width),
        ]
    steps = _steps(r)
    if steps is not None:
        parts += [_section("Promotion steps"), steps]
    parts += [_section("Last action"), _last_action(s, now)]
    return Group(*parts)


def rollout_row(obj: dict[str, Any], now: datetime) -> dict[str, str]:
    """One line of ``list``, from the raw object (a broken status must not hide the other rollouts)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    assert isinstance(status, dict)
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    ready = next(
        (c.get("status") for c in status.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"),
        None,
    )
    return {
        "namespace": str(meta.get("namespace") or ""),
        "name": str(meta.get("name") or ""),
        "phase": str(status.get("phase") or ""),
        "stage": str(status.get("stage") or ""),
        "image": str(status.get("image") or (spec.get("target") or {}).get("image") or ""),
        "ready": str(ready or ""),
        "age": age(meta.get("creationTimestamp"), now),
        "created": str(meta.get("creationTimestamp") or ""),
        "message": str(status.get("message") or ""),
    }


def render_list(rows: list[dict[str, str]], *, all_namespaces: bool, wide: bool = False) -> Table:
    """kubectl's layout. PHASE, STAGE, READY and AGE never wrap; the name and image fold first when the terminal is
    narrow, and the image is shortened unless -o wide asks for it whole (with the message)."""
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    if all_namespaces:
        table.add_column("NAMESPACE", overflow="fold")
    table.add_column("NAME", no_wrap=True)
    for column in ("PHASE", "STAGE", "READY", "AGE"):
        table.add_column(column, no_wrap=True)
    table.add_column("IMAGE", overflow="fold", min_width=10)
    if wide:
        table.add_column("MESSAGE", overflow="fold", min_width=20)
    for row in rows:
        cells = [_t(row["namespace"])] if all_namespaces else []
        cells += [_t(row["name"]), _phase_text(row["phase"] or None), _t(row["stage"])]
        cells += [_t(row["ready"]), _t(row["age"]), _t(row["image"] if wide else short_image(row["image"]))]
        if wide:
            cells.append(_t(row["message"]))
        table.add_row(*cells)
    return table


@dataclass(frozen=True)
class HistoryEntry:
    at: str | None
    source: str  # event, condition, measurement, action
    type: str
    reason: str
    message: str

    def sort_key(self) -> datetime:
        return _moment(self.at)

    def as_json(self) -> dict[str, str | None]:
        return {"at": self.at, "source": self.source, "type": self.type, "reason": self.reason, "message": self.message}


def _moment(at: str | None) -> datetime:
    """A timestamp as a datetime; missing or unreadable ones sort first."""
    try:
        return parse_time(at) if at else datetime.min.replace(tzinfo=UTC)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _event_time(event: dict[str, Any]) -> str | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if event.get(key):
            return str(event[key])
    created = (event.get("metadata") or {}).get("creationTimestamp")
    return str(created) if created else None


def _condition_time(at: str, reason: str, floor: str | None, events: list[HistoryEntry]) -> str:
    """Where a condition belongs in the timeline. ``lastTransitionTime`` changes only with the status, not the
    reason (Ready=False since the start, now for AwaitingApproval), and survives a retry: so it is placed no earlier
    than the latest event of its reason, nor than the current attempt's start."""
    candidates = [at, *(e.at for e in events if e.reason == reason and e.at)]
    if floor:
        candidates.append(floor)
    return max(candidates, key=_moment)


def history(r: Rollout, events: list[dict[str, Any]]) -> list[HistoryEntry]:
    """The rollout's timeline, oldest first: its events, the transitions of its conditions, the measurements kept
    in status and the last verb."""
    entries = []
    for e in events:
        count = int(e.get("count") or 1)
        message = str(e.get("message") or "") + (f" (x{count})" if count > 1 else "")
        entries.append(
            HistoryEntry(_event_time(e), "event", str(e.get("type") or ""), str(e.get("reason") or ""), message)
        )
    seen_events = list(entries)
    for c in r.status.conditions:
        at = _condition_time(c.last_transition_time, c.reason, r.status.started_at, seen_events)
        entries.append(HistoryEntry(at, "condition", f"{c.type}={c.status}", c.reason, c.message))
    for check in r.status.checks:
        for m in check.measurements:
            # The operator's message names the value already; without one, the value is the message.
            samples = f" ({m.samples} samples)" if m.samples is not None else ""
            text = m.message or (f"value {m.value}{samples}" if m.value is not None else "no value")
            entries.append(HistoryEntry(m.at, "measurement", m.phase.value, check.name, text))
    a = r.status.last_action
    if a is not None:
        entries.append(HistoryEntry(a.at, "action", "Verb", a.verb, a.result))
    return sorted(entries, key=HistoryEntry.sort_key)


_RETRY = re.compile(r"\bretry(?:ing)?:? \(?attempt (\d+)\)?")


def _starts_attempt(e: HistoryEntry) -> int | None:
    """The attempt an entry starts: a retry (the Pending move, the Verb event or the last action say which
    number), or 1 when a spec change started a new run. None: not a boundary."""
    if e.source == "event" and e.reason == "SpecChanged":
        return 1
    if e.source in ("event", "action"):
        found = _RETRY.search(e.message)
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class Attempt:
    """One attempt's part of the timeline; ``new_run``: a spec change started it."""

    number: int
    new_run: bool
    entries: list[HistoryEntry]

    @property
    def started(self) -> str | None:
        return self.entries[0].at if self.entries else None

    @property
    def ended(self) -> str | None:
        return self.entries[-1].at if self.entries else None


def by_attempt(entries: list[HistoryEntry], current: int) -> list[Attempt]:
    """The timeline cut where an attempt starts. The entries before the first boundary belong to the attempt before
    it (events expire after an hour, so the first group may not be attempt 1); with no boundary, all belong to the
    current attempt."""
    groups: list[tuple[int, bool, list[HistoryEntry]]] = []
    first_boundary = next((n for e in entries if (n := _starts_attempt(e)) is not None), None)
    number = current if first_boundary is None else max(1, first_boundary - 1)
    new_run = False
    bucket: list[HistoryEntry] = []
    for e in entries:
        starts = _starts_attempt(e)
        if starts is not None and (starts != number or (e.reason == "SpecChanged" and bucket)):
            if bucket:
                groups.append((number, new_run, bucket))
            number, new_run, bucket = starts, e.reason == "SpecChanged", []
        bucket.append(e)
    if bucket:
        groups.append((number, new_run, bucket))
    return [Attempt(n, run, items) for n, run, items in groups]


def _clock(at: str | None, *, date: bool) -> str:
    if not at:
        return EMPTY
    try:
        return parse_time(at).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ" if date else "%H:%M:%S")
    except ValueError:
        return at


def _between(earlier: str | None, later: str | None) -> str:
    """The time from one entry to the next, as +3m20s."""
    if not earlier or not later:
        return ""
    seconds = (_moment(later) - _moment(earlier)).total_seconds()
    return f"+{span(seconds)}"


def summary_line(r: Rollout, now: datetime) -> Text:
    """One line (folded at spaces when narrow) with what a glance needs: phase, stage, ready and age."""
    s = r.status
    text = Text(f"{r.namespace}/{r.name}", style="bold")
    text.append("\nphase ")
    text.append_text(_phase_text(s.phase))
    text.append(f"  stage {s.stage or EMPTY}  ready ")
    text.append(ready_text(s), style=_ready_style(s))
    text.append(f"  age {age(r.created, now)}")
    return text


def render_history(r: Rollout, entries: list[HistoryEntry], now: datetime, width: int = WIDE) -> Group:
    """The timeline by attempt, oldest first; ``+`` is the time since the entry above it."""
    narrow = width < WIDE
    parts: list[RenderableType] = [summary_line(r, now)]
    attempts = by_attempt(entries, r.status.attempt)
    for i, attempt in enumerate(attempts):
        still = i == len(attempts) - 1 and not r.status.phase.terminal
        end = now.strftime("%Y-%m-%dT%H:%M:%SZ") if still else attempt.ended
        title = f"\nAttempt {attempt.number}" + (" (new run: the spec changed)" if attempt.new_run else "")
        title += (
            f"  {_clock(attempt.started, date=True)}, {span((_moment(end) - _moment(attempt.started)).total_seconds())}"
        )
        title += " so far" if still else ""
        parts.append(Text(title, style="bold underline"))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
        table.add_column("Time", no_wrap=True)
        table.add_column("+", no_wrap=True, justify="right")
        if not narrow:
            table.add_column("Source", no_wrap=True)
        table.add_column("Type", no_wrap=True)
        table.add_column("Reason", overflow="fold")
        table.add_column("Message", overflow="fold")
        previous: str | None = None
        for e in attempt.entries:
            style = (
                "yellow"
                if e.type == "Warning"
                else VERDICT_STYLES.get(Verdict(e.type), "")
                if e.source == "measurement"
                else ""
            )
            cells = [_t(_clock(e.at, date=not narrow)), _t(_between(previous, e.at) or None, "dim")]
            cells += [] if narrow else [_t(e.source)]
            cells += [_t(e.type, style), _t(e.reason), _t(e.message)]
            table.add_row(*cells)
            previous = e.at
        parts.append(table)
    return Group(*parts)


# ---------------------------------------------------------------------------------------------------------------
# Why: what the rollout waits for, or why it stopped


_SEVERITY = {
    Verdict.FAILED: 0,
    Verdict.ERROR: 1,
    Verdict.INCONCLUSIVE: 2,
    Verdict.RUNNING: 3,
    Verdict.PENDING: 4,
}
_ADVISED_CONDITIONS = ("Restored", "Ready", "Promoted", "Migrated", "Deployed", "Verified")


@dataclass(frozen=True)
class Why:
    """The one screen of ``kubectl torghut why``, as data (``-o json`` prints it)."""

    rollout: str
    phase: str
    stage: str
    ready: str
    age: str
    state: str
    """waiting, stopped, paused, finished or running."""
    message: str
    reason: str | None = None
    condition: str | None = None
    since: str | None = None
    check: str | None = None
    verdict: str | None = None
    value: str | None = None
    threshold: str | None = None
    query: str | None = None
    check_message: str | None = None
    check_since: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    means: str | None = None
    do: str | None = None
    next_verbs: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "details"}
        out["details"] = dict(self.details)
        out["next_verbs"] = list(self.next_verbs)
        out["verbs"] = list(self.verbs)
        return out


def _blocking_check(s: TorghutRolloutStatus) -> CheckStatus | None:
    """The check that holds the rollout: the worst verdict that can still block (dry runs and approved Inconclusive
    verdicts cannot), those of the current or failed stage first."""
    stage = s.failed_stage or s.stage
    open_checks = [
        c
        for c in s.checks
        if not c.dry_run and c.phase in _SEVERITY and not (c.phase is Verdict.INCONCLUSIVE and c.approved)
    ]
    if not open_checks:
        return None
    return min(open_checks, key=lambda c: (c.stage != stage, _SEVERITY[c.phase]))


def _verdict_since(c: CheckStatus) -> str | None:
    """When the check's latest verdict began: the first of the latest measurements with that verdict."""
    if not c.measurements:
        return None
    last = c.measurements[-1].phase
    since = c.measurements[-1].at
    for m in reversed(c.measurements):
        if m.phase is not last:
            break
        since = m.at
    return since


def _state(r: Rollout) -> str:
    phase = r.status.phase
    if phase is Phase.SUCCEEDED:
        return "finished"
    if phase.terminal:
        return "stopped"
    if phase is Phase.PAUSED:
        return "paused"
    ready = next((c for c in r.status.conditions if c.type == "Ready"), None)
    if r.status.awaiting_approval or (ready is not None and ready.reason in _WAITING_REASONS):
        return "waiting"
    return "running"


_WAITING_REASONS = frozenset({"AwaitingApproval", "MissingEvidence", "Soaking", "Blocked", "ReconcileError"})


def _details(r: Rollout, now: datetime) -> list[tuple[str, str]]:
    s = r.status
    out: list[tuple[str, str]] = []
    if s.blocked_by:
        out.append(("Blocked by", f"TorghutRollout {s.blocked_by}"))
    promo = s.promotion
    if promo is not None and s.phase in (Phase.PROMOTING, Phase.PAUSED) and promo.step_name:
        step_spec = next(
            (
                st
                for st in (r.spec.promotion.steps if r.spec and r.spec.promotion else [])
                if st.name == promo.step_name
            ),
            None,
        )
        state = "applied" if promo.applied else ("approved" if promo.approved else "not applied yet")
        out.append(("Step", f"{promo.step_name} ({state})" + (f": {promo.message}" if promo.message else "")))
        if promo.patched_at:
            out.append(("Env patched", when(promo.patched_at, now)))
        soak = step_spec.required_soak_time if step_spec is not None else None
        if soak and promo.soak_since:
            soaked = (now - _moment(promo.soak_since)).total_seconds()
            left = parse_duration(soak) - soaked
            remaining = f"{span(left)} left" if left > 0 else "done"
            out.append(("Soak", f"{span(soaked)} of {soak} since {_clock(promo.soak_since, date=True)} ({remaining})"))
    backfill = s.migration.backfill if s.migration is not None else None
    if backfill is not None and not backfill.finished:
        # How long ago the last slice reported says whether it still moves (a slice reports every ~10 s).
        out.append(("Backfill", f"{backfill.summary()} (reported {age(backfill.updated_at, now)} ago)"))
    restore = s.restore
    if restore is not None and not restore.empty and s.phase.terminal and s.phase is not Phase.SUCCEEDED:
        env = ", ".join(f"{k}={v}" for k, v in sorted(restore.env.items()))
        unset = ", ".join(f"{k} (unset)" for k in restore.unset)
        before = "; ".join(x for x in (restore.image or "", env, unset) if x)
        out.append(("Restore to", before))
    if r.pending_action:
        verb, _ = parse_action(r.pending_action)
        out.append(("Pending action", f"{verb} (requested; the operator has not handled it yet)"))
    return out


def explain(r: Rollout, now: datetime) -> Why:
    """What the rollout is waiting for or why it stopped, with the troubleshooting table's advice (pure)."""
    s = r.status
    conditions = {c.type: c for c in s.conditions}
    check = _blocking_check(s) if s.phase is not Phase.SUCCEEDED else None
    check_text = f"{check.message} {check.measurements[-1].message if check.measurements else ''}" if check else ""
    chosen, advice = None, None
    for kind in _ADVISED_CONDITIONS:
        c = conditions.get(kind)
        if c is None or c.status == "True" or (kind == "Restored" and not s.phase.terminal):
            continue
        found = advice_for(c.reason, c.type, f"{c.message} {check_text}")
        if found is not None:
            chosen, advice = c, found
            break
    if s.phase is Phase.PAUSED:
        paused = conditions.get("Ready")
        chosen, advice = paused, advice_for("Paused")
    if chosen is None and s.phase is not Phase.SUCCEEDED:
        chosen = conditions.get("Ready")
    verbs = tuple(r.applicable_verbs())
    next_verbs = tuple(v for v in (advice.verbs if advice else ()) if v in verbs)
    message = f"the spec is invalid: {r.spec_error}" if r.spec is None else s.message
    return Why(
        rollout=f"{r.namespace}/{r.name}",
        phase=s.phase.value,
        stage=s.stage,
        ready=ready_text(s),
        age=age(r.created, now),
        state=_state(r),
        message=message,
        reason=(chosen.reason if chosen is not None else None) if s.phase is not Phase.PAUSED else "Paused",
        condition=chosen.type if chosen is not None else None,
        since=chosen.last_transition_time if chosen is not None else None,
        check=check.name if check else None,
        verdict=check.phase.value if check else None,
        value=(check.measurements[-1].value if check and check.measurements else None),
        threshold=check.threshold if check else None,
        query=check.query if check else None,
        check_message=check.message if check else None,
        check_since=_verdict_since(check) if check else None,
        details=tuple(_details(r, now)),
        means=advice.means if advice else None,
        do=advice.do if advice else None,
        next_verbs=next_verbs,
        verbs=verbs,
    )


def _markdown_plain(text: str) -> str:
    """The table's Markdown as terminal text: no backticks or asterisks."""
    return text.replace("`", "").replace("**", "")


def render_why(w: Why, now: datetime, *, name: str, namespace: str) -> Group:
    """One screen: where it stands, the reason and for how long, the check holding it, what to do, which verb."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True, min_width=LABEL_WIDTH - 2)
    grid.add_column(overflow="fold")
    headline = {
        "finished": "finished: nothing to do",
        "stopped": "stopped",
        "paused": "paused",
        "waiting": "waiting",
        "running": "running: nothing holds it",
    }[w.state]
    grid.add_row("Rollout", _t(w.rollout))
    grid.add_row("Phase", _phase_text(w.phase))
    grid.add_row("Stage", _t(w.stage))
    grid.add_row("Ready", _t(w.ready))
    grid.add_row("Age", _t(w.age))
    grid.add_row("State", _t(headline, "bold"))
    grid.add_row("Message", _t(w.message))
    if w.reason:
        where = f" ({w.condition})" if w.condition else ""
        since = f", since {_clock(w.since, date=True)} ({age(w.since, now)})" if w.since else ""
        grid.add_row("Reason", _t(f"{w.reason}{where}{since}", "bold yellow"))
    if w.check:
        grid.add_row("Check", _t(f"{w.check}: {w.verdict}"))
        grid.add_row("Last value", _t(f"{w.value if w.value is not None else 'none'} against {w.threshold}"))
        grid.add_row("Query", _t(w.query))
        if w.check_since:
            grid.add_row("So for", _t(f"{age(w.check_since, now)} (since {_clock(w.check_since, date=True)})"))
        grid.add_row("Check says", _t(w.check_message))
    for label, value in w.details:
        grid.add_row(label, _t(value))
    if w.means:
        grid.add_row("Means", _t(_markdown_plain(w.means)))
    if w.do:
        grid.add_row("Do", _t(_markdown_plain(w.do), "bold"))
    command = f"kubectl torghut {{verb}} {name} -n {namespace}"
    if w.next_verbs:
        grid.add_row("Next", _t("  or  ".join(command.format(verb=v) for v in w.next_verbs), "bold cyan"))
    grid.add_row("Verbs now", _t(", ".join(w.verbs) if w.verbs else "none (finished)"))
    return Group(grid)


# ---------------------------------------------------------------------------------------------------------------
# The commands


def _click_class(name: str) -> type[Exception]:
    """A click exception class as typer raises it (typer >= 0.20 vendors its own click), found through the public
    ``typer.BadParameter`` (BadParameter < UsageError < ClickException, in every click)."""
    found = next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
    assert issubclass(found, Exception)
    return found


_USAGE_ERROR = _click_class("UsageError")
_CLICK_ERROR = _click_class("ClickException")


class _OneLineErrors(TyperGroup):
    """Usage errors (an unknown command or verb, a missing argument) as one line on stderr instead of click's
    usage block; exit code 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        message = None
        try:
            result = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        except _CLICK_ERROR as exc:
            text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            code = int(getattr(exc, "exit_code", EXIT_REFUSED))
            message = f"error: {text.rstrip('.')}."
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `kubectl torghut`: the help, as --help shows it
                typer.echo(text)
                message, code = None, EXIT_OK
            elif isinstance(exc, _USAGE_ERROR):
                ctx = getattr(exc, "ctx", None)
                message += f" See '{getattr(ctx, 'command_path', None) or 'kubectl torghut'} --help'."
        except typer.Abort:
            message, code = "aborted", EXIT_FAILED
        else:
            code = result if isinstance(result, int) else EXIT_OK
        if message is not None:
            typer.echo(message, err=True)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="kubectl torghut",
    cls=_OneLineErrors,
    help="Inspect and steer TorghutRollouts (torghut.proompteng.ai/v1alpha1).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: the kubeconfig context's, else default).")
]
KubeconfigOpt = Annotated[
    str | None, typer.Option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="Kubeconfig context (default: the current one).")]
OutputOpt = Annotated[str | None, typer.Option("--output", "-o", help="json: machine-readable output.")]
WideOutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="json: machine-readable output; wide: whole images (and messages)."),
]
NameArg = Annotated[str, typer.Argument(help="The TorghutRollout.")]


@dataclass
class Globals:
    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Every failure as one line on stderr and an exit code; never a traceback."""
    try:
        yield
    except CliError as exc:
        _fail(exc.message if exc.refusal else f"error: {exc.message}", exc.code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 (a CLI prints one line, not a traceback, whatever went wrong)
        _fail(_mask(f"error: unexpected {type(exc).__name__}: {exc}"))


def _session(ctx: typer.Context, namespace: str | None, kubeconfig: str | None, context: str | None) -> Session:
    """Options given after the command win over those given before it (``kubectl torghut -n ns status x``)."""
    g = ctx.find_object(Globals) or Globals()
    return connect(namespace or g.namespace, kubeconfig or g.kubeconfig, context or g.context)


def _output(value: str | None, *, wide: bool = False) -> str | None:
    """None (the default view), "json", or "wide" where the command has it; raises for anything else."""
    allowed = ("json", "wide") if wide else ("json",)
    if value is None or value in allowed:
        return value
    raise CliError(f"unknown output format {value!r}: use " + " or ".join(f"-o {a}" for a in allowed), EXIT_REFUSED)


def _console() -> Console:
    """stdout; wide when not a terminal (pipes, CI logs), so tables aren't cut at 80 columns."""
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(width=wide, highlight=False, soft_wrap=False)


def _show(renderable: RenderableType, console: Console | None = None) -> None:
    """Print to stdout; off a terminal (pipes, CI logs) without the padding rich leaves at the end of lines."""
    console = console or _console()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        if re.fullmatch(r"[0-9]+", text):
            return float(text)
        raise CliError(f"{option} {text!r} is not a duration such as 60s, 5m or 1h30m", EXIT_REFUSED) from None


@app.callback()
def _main(
    ctx: typer.Context,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Inspect and steer TorghutRollouts.

    Exit codes: 0 done; 1 error (or, with status --watch, the rollout ended Failed, RolledBack or Aborted);
    2 a verb that does not apply now, or bad usage; 3 timed out waiting.
    """
    ctx.obj = Globals(namespace, kubeconfig, context)


@app.command()
def status(
    ctx: typer.Context,
    name: NameArg,
    watch_: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow changes until the rollout finishes (exit 0 Succeeded, 1 not).")
    ] = False,
    output: WideOutputOpt = None,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="With --watch: give up after this long (exit 3), e.g. 30m.")
    ] = None,
    measurements: Annotated[int, typer.Option("--measurements", help="Measurements shown per check.")] = 3,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Show a rollout: phase, stage, images, a running backfill's progress bar, conditions, checks, measurements,
    promotion steps, last action."""
    with _errors():
        form = _output(output, wide=True)
        limit = _duration(timeout, "--timeout") if timeout else None
        session = _session(ctx, namespace, kubeconfig, context)
        obj = session.get_rollout(name)
        r = Rollout.from_object(obj)
        view = _StatusView(measurements, wide=form == "wide")
        if not watch_:
            if form == "json":
                _echo_json(obj.get("status") or {})
            else:
                console = _console()
                _show(view.render(r, console.width), console)
            return
        code = _watch_status(session, r, as_json=form == "json", view=view, limit=limit)
    raise typer.Exit(code)


@dataclass(frozen=True)
class _StatusView:
    measurements: int
    wide: bool

    def render(self, r: Rollout, width: int) -> Group:
        return render_status(r, measurements=self.measurements, width=width, wide=self.wide)


class _Follow:
    """The versions of a rollout from a WATCH until it reaches a terminal phase (or the deadline); ``last`` is the
    newest seen."""

    def __init__(self, session: Session, r: Rollout, deadline: float | None) -> None:
        self._session = session
        self._deadline = deadline
        self.last = r

    def __iter__(self) -> Iterator[Rollout]:
        if self.last.status.phase.terminal:
            return
        for obj in self._session.watch_rollout(self.last.name, self.last.resource_version, self._deadline):
            self.last = Rollout.from_object(obj)
            yield self.last
            if self.last.status.phase.terminal:
                return

    def exit_code(self, limit: float | None) -> int:
        """0 Succeeded, 1 Failed, RolledBack or Aborted; raises (exit 3) when the deadline came first."""
        phase = self.last.status.phase
        if phase.terminal:
            return EXIT_OK if phase is Phase.SUCCEEDED else EXIT_FAILED
        raise CliError(
            f'timed out after {limit or 0:g}s: torghutrollout "{self.last.name}" is still {phase.value}', EXIT_TIMEOUT
        )


def _watch_status(session: Session, r: Rollout, *, as_json: bool, view: _StatusView, limit: float | None) -> int:
    """Follow the rollout with a WATCH until it is in a terminal phase; the exit code says how it ended."""
    follow = _Follow(session, r, time.monotonic() + limit if limit is not None else None)
    console = _console()
    if as_json:  # one status document per line (JSON Lines)
        typer.echo(json.dumps(r.raw.get("status") or {}))
        for current in follow:
            typer.echo(json.dumps(current.raw.get("status") or {}))
        return follow.exit_code(limit)
    if console.is_terminal:
        with Live(view.render(r, console.width), console=console, auto_refresh=False) as live:
            for current in follow:
                live.update(view.render(current, console.width), refresh=True)
        return follow.exit_code(limit)
    # Not a terminal (CI logs): one line per change of phase, stage or message, then the full view.
    seen = _progress_line(r)
    console.print(Text(seen))
    for current in follow:
        line = _progress_line(current)
        if line != seen:
            console.print(Text(line))
            seen = line
    _show(view.render(follow.last, console.width), console)
    return follow.exit_code(limit)


def _progress_line(r: Rollout) -> str:
    s = r.status
    stage = f" ({s.stage})" if s.stage else ""
    return f"{r.name} {s.phase.value}{stage}: {s.message or EMPTY}"


@app.command("list")
def list_(
    ctx: typer.Context,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
    output: WideOutputOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """List rollouts with phase, stage, ready, age and image (-o wide: the whole image and the message)."""
    with _errors():
        form = _output(output, wide=True)
        session = _session(ctx, namespace, kubeconfig, context)
        now = utcnow()
        rows = [rollout_row(obj, now) for obj in session.list_rollouts(all_namespaces)]
        rows.sort(key=lambda row: (row["namespace"], row["name"]))
        if form == "json":
            _echo_json(rows)
        elif not rows:
            where = "any namespace" if all_namespaces else f'namespace "{session.namespace}"'
            typer.echo(f"No torghutrollouts found in {where}.", err=True)
        else:
            _show(render_list(rows, all_namespaces=all_namespaces, wide=form == "wide"))


@app.command()
def report(
    ctx: typer.Context,
    name: NameArg,
    output_path: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the Markdown here instead of stdout.")
    ] = None,
    pr: Annotated[
        bool,
        typer.Option("--pr", help="Fit the report into a pull request body (under 65,536 characters)."),
    ] = False,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Print the Markdown evidence report (the operator's, else rendered from status)."""
    with _errors():
        session = _session(ctx, namespace, kubeconfig, context)
        r = Rollout.from_object(session.get_rollout(name))
        text = session.get_report(name, r.uid)
        source = f"ConfigMap {report_name(name)}"
        if text is None:
            from torghut_operator.evidence.report import render_report  # noqa: PLC0415 (sqlalchemy: load on use)

            text = render_report(
                name=r.name,
                namespace=r.namespace,
                spec=r.spec,
                status=r.status,
                measurements=[],
                decisions=[],
                facts=None,
            )
            source = "status (the operator has not published a report)"
        if pr:
            from torghut_operator.evidence.report import fit_for_pr  # noqa: PLC0415 (sqlalchemy: load on use)

            text = fit_for_pr(text)
        if output_path is None:
            typer.echo(text, nl=not text.endswith("\n"))
            return
        try:
            output_path.write_text(text)
        except OSError as exc:
            raise CliError(f"cannot write {output_path}: {exc.strerror or exc}") from None
        typer.echo(f"wrote the evidence report of {r.namespace}/{r.name} to {output_path} (from {source})", err=True)


@app.command("history")
def history_(
    ctx: typer.Context,
    name: NameArg,
    output: OutputOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """The rollout's timeline by attempt: events, condition transitions, measurements and the last verb, oldest
    first, with the time between entries."""
    with _errors():
        as_json = _output(output)
        session = _session(ctx, namespace, kubeconfig, context)
        r = Rollout.from_object(session.get_rollout(name))
        entries = history(r, session.list_events(name, r.uid or None))
        if as_json:
            _echo_json(
                [{**e.as_json(), "attempt": a.number} for a in by_attempt(entries, r.status.attempt) for e in a.entries]
            )
        elif not entries:
            typer.echo(f'no history yet for torghutrollout "{name}"', err=True)
        else:
            console = _console()
            _show(render_history(r, entries, utcnow(), console.width), console)


@app.command()
def why(
    ctx: typer.Context,
    name: NameArg,
    output: OutputOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """What the rollout waits for or why it stopped: the reason, the check holding it (last value, threshold,
    query, for how long), what to do and the verb that moves it on."""
    with _errors():
        as_json = _output(output)
        session = _session(ctx, namespace, kubeconfig, context)
        r = Rollout.from_object(session.get_rollout(name))
        now = utcnow()
        w = explain(r, now)
        if as_json:
            _echo_json(w.as_json())
        else:
            _show(render_why(w, now, name=r.name, namespace=r.namespace))


@app.command()
def version() -> None:
    """Print the plugin's version."""
    try:
        number = metadata.version("torghut-rollout-operator")
    except metadata.PackageNotFoundError:
        number = "unknown"
    typer.echo(f"kubectl-torghut {number} ({GROUP}/{VERSION})")


def _request_verb(
    ctx: typer.Context,
    verb: str,
    name: str,
    *,
    wait: bool,
    timeout: str,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
) -> None:
    with _errors():
        seconds = _duration(timeout, "--timeout")
        session = _session(ctx, namespace, kubeconfig, context)
        r = Rollout.from_object(session.get_rollout(name))
        refusal = r.refusal(verb)
        if refusal is not None:
            raise CliError(refusal, EXIT_REFUSED, refusal=True)
        if r.pending_action:
            waiting, _ = parse_action(r.pending_action)
            typer.echo(f"note: replacing the pending {waiting!r} request the operator has not handled yet", err=True)
        value = action_value(verb, utcnow())
        patched = Rollout.from_object(session.patch_annotation(name, ACTION_ANNOTATION, value))
        if not wait:
            typer.echo(f"{verb} requested for torghutrollout {r.namespace}/{name} ({ACTION_ANNOTATION}={value})")
            return
        done = _await_action(session, patched, verb, r.status.last_action, time.monotonic() + seconds)
        if done is None:
            raise CliError(
                f"timed out after {seconds:g}s: the operator has not handled {verb} on torghutrollout "
                f'"{name}" (is it running?); the request stays and is applied when the operator runs',
                EXIT_TIMEOUT,
            )
        last, phase = done
        line = f"{name}: {verb}: {last.result} (phase {phase.value})"
        if is_refusal(last.result):
            raise CliError(line, EXIT_REFUSED, refusal=True)
        typer.echo(line)


def _await_action(
    session: Session, r: Rollout, verb: str, before: LastAction | None, deadline: float
) -> tuple[LastAction, Phase] | None:
    """WATCH until the operator records a newer ``lastAction`` of ``verb``; None at the deadline."""

    def handled(rollout: Rollout) -> bool:
        last = rollout.status.last_action
        if last is None or last.verb != verb:
            return False
        if before is None:
            return True
        try:
            return parse_time(last.at) > parse_time(before.at)
        except ValueError:
            return (last.at, last.result) != (before.at, before.result)

    if handled(r) and r.status.last_action is not None:
        return r.status.last_action, r.status.phase
    for obj in session.watch_rollout(r.name, r.resource_version, deadline):
        current = Rollout.from_object(obj)
        if handled(current) and current.status.last_action is not None:
            return current.status.last_action, current.status.phase
    return None


def _verb_command(verb: str) -> None:
    def command(
        ctx: typer.Context,
        name: NameArg,
        wait: Annotated[
            bool, typer.Option("--wait/--no-wait", help="Wait until the operator has applied the verb.")
        ] = True,
        timeout: Annotated[str, typer.Option("--timeout", help="How long --wait waits, e.g. 60s or 5m.")] = "60s",
        namespace: NamespaceOpt = None,
        kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None,
    ) -> None:
        _request_verb(
            ctx, verb, name, wait=wait, timeout=timeout, namespace=namespace, kubeconfig=kubeconfig, context=context
        )

    summary = {
        "abort": "Stop the rollout; restore the previous image if the new one was deployed.",
        "retry": "Start a failed, rolled-back or aborted rollout over (a new attempt).",
        "promote": "Accept Inconclusive verdicts, or approve the promotion step that awaits approval.",
        "pause": "Pause the rollout where it stands.",
        "resume": "Resume a rollout paused by the pause verb.",
    }[verb]
    command.__doc__ = f"{summary} ({APPLIES_TO[verb]}.)"
    command.__name__ = verb
    app.command(verb)(command)


for _verb in VERBS:
    _verb_command(_verb)


def main() -> None:
    # insecure-skip-tls-verify is the kubeconfig's choice; kubectl doesn't warn about it on every call either.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    app(prog_name="kubectl torghut")


if __name__ == "__main__":
    main()
