"""``aisle experiments …``: create, change, stop, list and report experiments through the
API (the admin key is ``AISLE_SERVING__ADMIN_API_KEY``; the API is the one ``aisle up``
recorded in ``.aisle/runtime.json``, or ``--api``)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from aisle import runtime
from aisle.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="A/B experiments: define, change, stop, list, report.")
console = Console()
ApiOpt = Annotated[str | None, typer.Option("--api", help="API base URL (default: aisle up's)")]
PLOT_METRICS = ("ctr", "conversion", "revenue_per_user", "aov")


def _client(api: str | None) -> httpx.Client:
    settings = Settings()
    url = api or runtime.api_url(settings) or \
        f"http://{settings.serving.host}:{settings.serving.port}"
    key = settings.serving.admin_api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=10)


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text()
    doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{path}: expected an object")
    return doc


def _call(method: str, api: str | None, url: str, body: Any = None) -> Any:
    with _client(api) as client:
        try:
            r = client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            console.print(f"[red]API not reachable: {exc}[/red]")
            raise typer.Exit(2) from None
    if r.status_code >= 400:
        detail = r.json().get("detail", r.text) if "json" in r.headers.get(
            "content-type", "") else r.text
        console.print(f"[red]{r.status_code}: {detail}[/red]")
        raise typer.Exit(1)
    return r.json()


@app.command()
def create(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                                help="definition, JSON or TOML")],
           api: ApiOpt = None) -> None:
    """Create an experiment from a definition file (see docs/experiments.md)."""
    doc = _call("POST", api, "/v1/admin/experiments", _read(path))
    console.print(f"recorded: {doc['event_ids'][0]}")


@app.command()
def update(experiment_id: str,
           path: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                                help="the fields to change, JSON or TOML")],
           api: ApiOpt = None) -> None:
    """Change fields of an experiment (weights, params, targeting, end, metrics)."""
    doc = _call("PATCH", api, f"/v1/admin/experiments/{experiment_id}", _read(path))
    console.print(f"recorded: {doc['event_ids'][0]}")


@app.command()
def stop(experiment_id: str, api: ApiOpt = None) -> None:
    """Stop an experiment: its customers get the default behaviour from now on."""
    doc = _call("POST", api, f"/v1/admin/experiments/{experiment_id}/stop")
    console.print(f"recorded: {doc['event_ids'][0]}")


@app.command("list")
def list_(api: ApiOpt = None) -> None:
    """All experiments and their status."""
    table = Table("id", "status", "layer", "range", "surfaces", "variants", "started")
    for x in _call("GET", api, "/v1/experiments")["experiments"]:
        table.add_row(x["id"], x["status"], x["layer"], "{}-{}".format(*x["layer_range"]),
                      ",".join(x["surfaces"]),
                      " ".join(f"{v['name']}:{v['weight']:g}" for v in x["variants"]),
                      x["started_at"] or "")
    console.print(table)


@app.command()
def report(experiment_id: str,
           plot: Annotated[Path | None, typer.Option(help="write a PNG of the metrics over "
                                                          "time with 95% intervals")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="print the raw results")] = False,
           api: ApiOpt = None) -> None:
    """Per-variant metrics, lift vs control with 95% intervals, SRM and guardrails."""
    doc = _call("GET", api, f"/v1/experiments/{experiment_id}/results"
                + ("?series=true" if plot else ""))
    if as_json:
        print(json.dumps(doc, indent=1))
    else:
        print_report(doc)
    if plot:
        write_plot(doc, plot)
        console.print(f"plot: {plot}")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def print_report(doc: dict[str, Any]) -> None:
    console.print(f"[bold]{doc['experiment']}[/bold] ({doc.get('status', '?')}), primary "
                  f"metric {doc['primary_metric']}, control {doc['control']}")
    table = Table("variant", "users", "exposures", "CTR", "conversion", "rev/user", "AOV",
                  f"lift {doc['primary_metric']} [95% CI]", "p")
    for v in doc["variants"]:
        lift = v["lift"]
        ci = (f"{_pct(lift['relative'])} [{_pct(lift['ci95'][0])}, {_pct(lift['ci95'][1])}]"
              if lift else "–")
        table.add_row(v["variant"], str(v["users"]), str(v["exposures"]),
                      _num(v["ctr"], 4), _num(v["conversion"], 4),
                      _num(v["revenue_per_user"], 2), _num(v["aov"], 2), ci,
                      _num(lift["p_value"], 3) if lift else "–")
    console.print(table)
    srm = doc["srm"]
    if srm["warning"]:
        console.print(f"[{'red' if not srm['ok'] else 'yellow'}]{srm['warning']}[/]")
    else:
        console.print(f"split ok (SRM chi-square p={srm['p_value']:.3g})")
    for g in doc["guardrails"]:
        colour = {"ok": "green", "warning": "yellow"}.get(g["status"], "red")
        console.print(f"guardrail {g['metric']} ({g['variant']}, max drop "
                      f"{g['max_drop_pct']:g}%): [{colour}]{g['status']}[/] "
                      f"{_pct(g['relative'])}")


def _num(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Cumulative metrics per day with 95% bands, one panel per metric."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        # Escaped: rich would read "[bench]" as markup and print "pip install -e '.'".
        console.print("[red]--plot needs matplotlib: pip install -e '.\\[bench]'[/red]")
        raise typer.Exit(2) from None
    series = doc.get("series") or []
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    days = [row["day"] for row in series]
    for ax, metric in zip(axes.flat, PLOT_METRICS, strict=True):
        for v in doc["variants"]:
            name = v["variant"]
            vals = [row["variants"][name][metric] for row in series]
            y = [m["value"] if m["value"] is not None else float("nan") for m in vals]
            lo = [m["ci95"][0] if m["ci95"] and m["ci95"][0] is not None else float("nan")
                  for m in vals]
            hi = [m["ci95"][1] if m["ci95"] and m["ci95"][1] is not None else float("nan")
                  for m in vals]
            ax.plot(days, y, marker="o", label=name)
            ax.fill_between(days, lo, hi, alpha=0.2)
        ax.set_title(metric.replace("_", " "))
        ax.tick_params(axis="x", rotation=45)
    axes.flat[0].legend()
    fig.suptitle(f"{doc['experiment']}: cumulative metrics with 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
