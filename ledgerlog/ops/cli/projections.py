"""`ledgerlog projections add|list|remove|get|keys`: a data team's own projections (docs/PROJECTIONS.md),
registered with the data dir, built by `reproject NAME`, kept current by the node, read by key."""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import nullcontext

import typer

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.errors import NodeRunningError
from ledgerlog.engine.files import atomic_writer
from ledgerlog.engine.intjson import dumps_any
from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.query.client import NodeClient, open_queries
from ledgerlog.ops.query.userviews import PAGE_MAX, key_bytes
from ledgerlog.streams import catalog
from ledgerlog.streams.determinism import check_determinism

projections_app = typer.Typer(help="Your own projections: add, list, remove; read any projection by key.",
                              no_args_is_help=True)
app.add_typer(projections_app, name="projections")


@projections_app.command("add")
def add(ctx: typer.Context,
        source: str = typer.Argument(..., metavar="MODULE",
                                     help="A module on sys.path or in the current directory (tx_count, "
                                          "team.folds.tx_count) or a .py file.")) -> None:
    """Register a projection module after a determinism check (its fold over a sample of the log,
    twice). Then `ledgerlog reproject NAME` builds it; the node keeps it current."""
    cfg = config_of(ctx)
    mod, entry = catalog.load(source)
    with open_chain(cfg, read_only=True) as chain:
        checked = check_determinism(chain.log, chain.codec, chain.genesis, mod)
    catalog.register(cfg.projections_dir, mod, entry)
    emit({"added": mod.NAME, "version": mod.VERSION, "topics": list(mod.TOPICS), "source": mod.SOURCE,
          "determinism_check": checked, "next": f"ledgerlog reproject {mod.NAME}"})


@projections_app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every projection: name, version, source, lag, height and digest (through the node if one runs)."""
    with open_queries(config_of(ctx)) as q:
        emit(q.projections())


@projections_app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Unregister a user projection and delete its stores (stop the node first)."""
    cfg = config_of(ctx)
    node = NodeClient.find(cfg)
    if node is not None:
        node.close()
        raise NodeRunningError(f"a node is running on {cfg.data_dir} and folds {name}; stop it, remove the "
                               "projection, then start it again")
    catalog.unregister(cfg.projections_dir, name)
    stores = os.path.join(cfg.projections_dir, name)
    shutil.rmtree(stores, ignore_errors=True)
    emit({"removed": name})


@projections_app.command("get")
def get(ctx: typer.Context, name: str, key: str = typer.Argument(..., help="The key: text, or hex:<hex>.")) -> None:
    """One key of a projection, its value (JSON when it parses as JSON, else hex) and provenance."""
    if "/" in key and not key.startswith("hex:"):
        key = "hex:" + key_bytes(key).hex()  # a URL path segment cannot carry it: the same key as hex
    with open_queries(config_of(ctx)) as q:
        answer = q.projection_entry(name, key)
    emit(answer)


@projections_app.command("keys")
def keys(ctx: typer.Context, name: str,
         prefix: str | None = typer.Option(None, "--prefix", help="Only keys starting with this (text or hex:<hex>)."),
         start: str | None = typer.Option(None, "--start", help="From this key on (a page's `next`)."),
         limit: int | None = typer.Option(None, "--limit", min=1, max=PAGE_MAX, help=f"At most this many (default 100, max {PAGE_MAX}).")) -> None:
    """A page of a projection's keys and values in key order; `next` starts the next page."""
    with open_queries(config_of(ctx)) as q:
        emit(q.projection_page(name, prefix, start, limit))



@projections_app.command("export")
def export(ctx: typer.Context, name: str,
           out: str = typer.Option("-", "--out", "-o", help="File to write (default: standard output)."),
           prefix: str | None = typer.Option(None, "--prefix", help="Only keys starting with this (text or hex:<hex>).")) -> None:
    """A projection's state as JSON lines {"key", "value", "encoding"} in key order, read page by
    page (through the node if one runs); DuckDB turns it into Parquet (docs/PROJECTIONS.md)."""
    with open_queries(config_of(ctx)) as q, \
            (nullcontext(sys.stdout.buffer) if out == "-" else atomic_writer(out)) as sink:
        start, lines = None, 0  # a file is written beside OUT and renamed over it only when whole
        while True:
            page = q.projection_page(name, prefix, start, PAGE_MAX)
            for item in page["items"]:
                sink.write(dumps_any(item) + b"\n")  # integers of any size, exactly
            lines += len(page["items"])
            if page["next"] is None:
                break
            start = page["next"]
    if out != "-":
        emit({"projection": name, "lines": lines, "out": os.path.abspath(out),
              "provenance": page["provenance"]})
