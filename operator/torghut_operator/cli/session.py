"""The plugin's Kubernetes session: kubeconfig, one client, the API calls it makes, errors as one line."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError

from torghut_operator.core.api.spec import GROUP, KIND, PLURAL, VERSION
from torghut_operator.core.manifests import report_name

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
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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


def mask(text: str) -> str:
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
    return CliError(mask(f"cannot reach the Kubernetes API server at {server}: {why}"))


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
        return CliError(mask(f"{what}: {_api_message(exc)}"))

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


def first_error(exc: Exception) -> str:
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
        raise CliError(mask(f"kubeconfig {where} is not usable: {exc}")) from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        where = path or "in-cluster config"
        raise CliError(mask(f"kubeconfig {where} is not usable: {type(exc).__name__}: {exc}")) from None
    configuration.retries = 1
    return Session(client.ApiClient(configuration), namespace or default_namespace, mask(configuration.host))
