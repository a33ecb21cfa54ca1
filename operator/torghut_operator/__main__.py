"""The operator process: ``torghut-operator`` or ``python -m torghut_operator``."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, help="The Torghut rollout operator.", no_args_is_help=True)


@app.callback()
def _commands() -> None:
    """The Torghut rollout operator."""


@app.command()
def run(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch only these namespaces (repeatable).")
    ] = None,
    liveness: Annotated[
        str, typer.Option(help="Liveness endpoint; fails when the rollout watch goes stale.")
    ] = "http://0.0.0.0:8080/healthz",
    log_format: Annotated[str, typer.Option(help="plain, full or json.")] = "plain",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    # Kopf imports the kubernetes client, when installed, only to recognise its model objects, which the operator
    # never hands it: the operator talks to the API server on its own aiohttp session (adapters.kubeapi). Not
    # loading the client keeps ~20 MiB out of the process (make bench); the kubectl plugin still uses it.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    import kopf  # noqa: PLC0415 (keep --help fast)

    from torghut_operator.app import handlers  # noqa: PLC0415 (registers the handlers)

    formats = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}
    if log_format not in formats:
        raise typer.BadParameter(f"--log-format must be one of {', '.join(formats)}")
    kopf.configure(verbose=verbose, log_format=formats[log_format])
    if not verbose:
        from torghut_operator.app.quiet import quiet_routine_successes  # noqa: PLC0415

        quiet_routine_successes(handlers.ROUTINE_HANDLERS)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per HTTP and Prometheus measurement; status has it
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per liveness probe
    logging.getLogger("celpy").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        clusterwide=not namespace,
        namespaces=namespace or (),
        liveness_endpoint=liveness,
        memo=kopf.Memo(namespace_patterns=tuple(namespace or ())),  # the liveness probe checks only these
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
