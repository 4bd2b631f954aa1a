"""`hvt kuberay render`: the run as Kubernetes objects for KubeRay."""

from __future__ import annotations

import typer

from hvt.kuberay import cli


def register(app: typer.Typer) -> None:
    app.add_typer(cli.app, name="kuberay")
