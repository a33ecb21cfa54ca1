"""``kubectl torghut``: `session` (the Kubernetes client and its errors), `views` (a rollout as read, and what each
command shows of it), `commands` (the Typer app, the entry point)."""
