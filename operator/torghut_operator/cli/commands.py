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
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import urllib3
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text
from typer.core import TyperGroup

from torghut_operator.cli.session import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    CliError,
    Session,
    connect,
    mask,
)
from torghut_operator.cli.views import (
    EMPTY,
    Rollout,
    by_attempt,
    explain,
    history,
    render_history,
    render_list,
    render_status,
    render_why,
    rollout_row,
)
from torghut_operator.core.api.durations import parse_duration
from torghut_operator.core.api.spec import GROUP, VERSION
from torghut_operator.core.api.status import (
    LastAction,
    Phase,
)
from torghut_operator.core.manifests import ACTION_ANNOTATION, report_name
from torghut_operator.core.timefmt import parse_time, utcnow
from torghut_operator.core.verbs import APPLIES_TO, VERBS, action_value, is_refusal, parse_action

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
        _fail(mask(f"error: unexpected {type(exc).__name__}: {exc}"))


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
