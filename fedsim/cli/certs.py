"""`fedsim certs`: TLS certificates and SuperNode keys for a deployment.

`init` makes a private CA, the SuperLink's server certificate and one
authentication key pair per site; `check` verifies a set before it is deployed;
`node-key` lets a site make its own key pair and send only the public half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim.cli.tables import label_table

app = typer.Typer(
    help="Certificates (TLS) and SuperNode authentication keys for a deployment.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("init")
def init(
    out: Annotated[Path, typer.Option(help="Folder for the certificate set.")],
    server_name: Annotated[list[str], typer.Option(
        help="Name (DNS or IP) sites use to reach the SuperLink; repeat for more. "
             "localhost and 127.0.0.1 are always added.")],
    clients: Annotated[int, typer.Option(help="Site key pairs to make (client-0, ...).")] = 2,
    days: Annotated[int, typer.Option(help="Validity of the certificates in days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace files already in --out.")] = False,
) -> None:
    """Make a CA, the SuperLink's certificate and one key pair per site."""
    from fedsim.deploy.pki import LOCAL_NAMES, CertPlan, init_certs

    made = init_certs(CertPlan(out=out, server_names=tuple(server_name),
                               clients=clients, days=days, force=force))
    layout = made.layout
    rows = [
        ("CA (everyone)", str(layout.ca_cert)),
        ("CA key", f"{layout.ca_key} (0600: keep offline, mount nowhere)"),
        ("SuperLink", f"{layout.server_cert}, {layout.server_key} (0600)"),
        ("valid for", ", ".join(dict.fromkeys((*made.server_names, *LOCAL_NAMES)))),
        ("expires", f"{made.not_after:%Y-%m-%d}"),
    ]
    rows += [(n.name, f"{n.private_path} (0600, to this site only); enroll "
              f"{n.public_path}") for n in made.nodes]
    Console().print(label_table("certificate set written", rows))


@app.command("check")
def check(
    folder: Annotated[Path, typer.Argument(help="A folder written by `fedsim certs init`.")],
    server_name: Annotated[str | None, typer.Option(
        help="Also require the certificate to be valid for this name.")] = None,
) -> None:
    """Verify the chain, dates, names and key pairs of a certificate set."""
    from fedsim.deploy.certcheck import check_node, check_server, site_names
    from fedsim.deploy.pki import CertLayout

    layout = CertLayout(root=folder)
    status = check_server(ca_path=layout.ca_cert, cert_path=layout.server_cert,
                          key_path=layout.server_key, name=server_name)
    rows = [("server certificate", f"valid for {', '.join(status.names)}; "
             f"{status.days_left} days left")]
    for name in site_names(layout):
        if layout.node_key(name).exists():
            node = check_node(layout, name)
            rows.append((name, f"{node.curve} key {node.mode}, matches {name}.pub"))
        else:
            rows.append((name, "public key only (the site keeps its private key)"))
    Console().print(label_table(f"{folder}: ok", rows))


@app.command("node-key")
def node_key(
    out: Annotated[Path, typer.Option(help="Folder for node.key (0600) and NAME.pub.")],
    name: Annotated[str, typer.Option(help="This site's name, e.g. client-0.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Make one site's authentication key pair; send only NAME.pub to the operator."""
    from fedsim.deploy.pki import (
        CertError,
        check_node_name,
        make_node_key,
        write_private,
        write_public,
    )

    check_node_name(name)
    key_path, pub_path = out / "node.key", out / f"{name}.pub"
    if key_path.exists() and not force:
        raise CertError(f"'{key_path}' exists; pass --force to replace it (the old "
                        "public key must then be unregistered)")
    private, public_line = make_node_key(name)
    write_private(key_path, private)
    write_public(pub_path, (public_line + "\n").encode())
    Console().print(f"wrote {key_path} (0600) and {pub_path}", highlight=False)
