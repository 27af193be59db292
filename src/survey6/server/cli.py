"""``survey6-server``: the command-and-control server's command line."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from survey6 import __version__
from survey6.common import systemd
from survey6.common.cli import config_option, load_side_settings, print_settings, run_group
from survey6.common.log import configure_logging
from survey6.common.units import parse_duration
from survey6.server import audit as accounting
from survey6.server import commands as probe_commands
from survey6.server import tokens
from survey6.server.app import ServerApp
from survey6.server.errors import NotInitialisedError, ServerError
from survey6.server.pki import CertificateAuthority
from survey6.server.registry import db
from survey6.server.registry.models import Probe, utcnow
from survey6.server.settings import ServerSettings
from survey6.server.setup import database_url, initialise, pki_dir
from survey6.server.web import users as web_users

EPILOG = "Exit status: 0 success, 1 error (one line on stderr), 2 usage error."


def data_dir_option(function: Any) -> Any:
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Server data directory (CA, registry, landing zone) [/var/lib/survey6/server].",
    )(function)


def _settings(ctx: click.Context, data_dir: Path | None, **overrides: Any) -> ServerSettings:
    return load_side_settings(ctx, ServerSettings, "server", overrides={"data_dir": data_dir, **overrides})


def _sessions(settings: ServerSettings) -> Any:
    engine = db.make_engine(database_url(settings.data_dir, settings.database_url))
    if not db.is_initialised(engine):
        raise NotInitialisedError(f"no registry in {settings.data_dir}: run `survey6-server init` first")
    return db.session_factory(engine)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@config_option()
@click.version_option(__version__, prog_name="survey6-server")
def cli(config_file: object) -> None:
    """survey6 command-and-control server: enrols probes, watches their heartbeats, receives
    their captures and queues them for the aggregator."""


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (defaults < config file < SURVEY6_* environment) as JSON."""
    print_settings(load_side_settings(ctx, ServerSettings, "server"))


@cli.command("init")
@data_dir_option
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help="DNS name or IP the server certificate covers (repeatable) [this host, localhost].",
)
@click.option(
    "--admin-password-file",
    type=click.File("r"),
    default=None,
    help="Read the web admin's password from this file instead of generating one.",
)
@click.pass_context
def init_command(ctx: click.Context, data_dir: Path | None, server_names: tuple[str, ...],
                 admin_password_file: Any) -> None:  # fmt: skip
    """Create the CA (key 0600), the server certificate, the registry and the web admin account."""
    settings = _settings(ctx, data_dir)
    password = admin_password_file.read().strip() if admin_password_file else None
    done = initialise(
        settings.data_dir,
        database=settings.database_url,
        server_names=list(server_names),
        admin_password=password,
    )
    click.echo(f"initialised {settings.data_dir}")
    click.echo(f"CA certificate hash: {done.ca_cert_hash}")
    click.echo(f"server certificate names: {', '.join(done.server_names)}")
    if done.admin_password:
        click.echo(f"web admin: {done.admin_username} / {done.admin_password}  (shown once; store it now)")


@cli.command("run")
@data_dir_option
@click.option("--grpc-listen", default=None, help="Probe control endpoint, mutual TLS [[::]:32001].")
@click.option("--enrol-listen", default=None, help="Enrolment endpoint, server TLS [[::]:32000].")
@click.option("--http-listen", default=None, help="Web UI address [127.0.0.1:8080].")
@click.option("--redis-url", default=None, help="Redis for the ingest queue.")
@click.pass_context
def run_command(ctx: click.Context, data_dir: Path | None, grpc_listen: str | None, enrol_listen: str | None,
                http_listen: str | None, redis_url: str | None) -> None:  # fmt: skip
    """Serve probes until SIGINT or SIGTERM."""
    settings = _settings(
        ctx,
        data_dir,
        grpc_listen=grpc_listen,
        enrol_listen=enrol_listen,
        http_listen=http_listen,
        redis_url=redis_url,
    )
    configure_logging(settings.logging)
    app = ServerApp(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        app.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    app.start()
    systemd.ready(f"serving probes on {app.control_port}, enrolment on {app.enrol_port}")
    try:
        app.wait()
    finally:
        systemd.stopping()
        app.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@cli.group("token")
def token_group() -> None:
    """Bootstrap tokens for `survey6-probe join`."""


@token_group.command("create")
@data_dir_option
@click.option("--ttl", default="24h", show_default=True, help="Time to live.")
@click.option(
    "--usages", type=click.IntRange(min=1), default=None, help="Joins allowed [unlimited until expiry]."
)
@click.option("--description", default="", help="Free text shown in `token list`.")
@click.option("--print-join-command", is_flag=True, help="Print the whole `survey6-probe join` line.")
@click.option(
    "--server",
    "server_address",
    default=None,
    help="HOST:PORT probes reach the enrolment endpoint at [first certificate name:enrol port].",
)
@click.pass_context
def token_create(ctx: click.Context, data_dir: Path | None, ttl: str, usages: int | None, description: str,
                 print_join_command: bool, server_address: str | None) -> None:  # fmt: skip
    """Create a token (its secret is shown once)."""
    settings = _settings(ctx, data_dir)
    try:
        lifetime = dt.timedelta(seconds=parse_duration(ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from exc
    with _sessions(settings).begin() as session:
        token = tokens.create_token(session, ttl=lifetime, usages=usages, description=description)
    if not print_join_command:
        click.echo(token)
        return
    ca = CertificateAuthority.load(pki_dir(settings.data_dir))
    address = server_address or _default_enrol_address(settings, ca)
    click.echo(f"survey6-probe join {address} --token {token} --ca-cert-hash {ca.cert_hash}")


def _default_enrol_address(settings: ServerSettings, ca: CertificateAuthority) -> str:
    from cryptography import x509

    server_cert = x509.load_pem_x509_certificate((pki_dir(settings.data_dir) / "server.crt").read_bytes())
    host = server_cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    port = settings.enrol_listen.rsplit(":", 1)[1]
    host_text = str(host)
    return f"[{host_text}]:{port}" if ":" in host_text else f"{host_text}:{port}"


@token_group.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def token_list(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """List tokens (ids only; secrets are never stored)."""
    settings = _settings(ctx, data_dir)
    with _sessions(settings).begin() as session:
        rows = tokens.list_tokens(session)
    now = utcnow()
    items = [
        {
            "token_id": r.token_id,
            "status": r.status(now),
            "expires_at": r.expires_at.strftime("%Y-%m-%d %H:%M:%SZ"),
            "usages_left": r.usages_left,
            "used_count": r.used_count,
            "description": r.description,
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    click.echo(f"{'ID':<8}{'STATUS':<10}{'EXPIRES':<22}{'USES LEFT':<11}{'USED':<6}DESCRIPTION")
    for item in items:
        left = "-" if item["usages_left"] is None else str(item["usages_left"])
        click.echo(
            f"{item['token_id']:<8}{item['status']:<10}{item['expires_at']:<22}{left:<11}"
            f"{item['used_count']:<6}{item['description']}"
        )


@token_group.command("revoke")
@data_dir_option
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, data_dir: Path | None, token_id: str) -> None:
    """Revoke a token by its id."""
    settings = _settings(ctx, data_dir)
    with _sessions(settings).begin() as session:
        tokens.revoke_token(session, token_id)
    click.echo(f"revoked {token_id.split('.', 1)[0]}")


@cli.group("probes")
def probes_group() -> None:
    """Enrolled probes."""


@probes_group.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def probes_list(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """List probes with their state (as last computed by the running server)."""
    settings = _settings(ctx, data_dir)
    with _sessions(settings)() as session:
        probes = session.scalars(select(Probe).order_by(Probe.enrolled_at)).all()
    items = [
        {
            "probe_id": p.id,
            "hostname": p.hostname,
            "state": p.state,
            "labels": p.labels,
            "last_heartbeat_at": p.last_heartbeat_at.isoformat() if p.last_heartbeat_at else None,
            "capture_state": p.last_health.get("capture_state", ""),
            "enrolled_at": p.enrolled_at.isoformat(),
        }
        for p in probes
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    click.echo(f"{'PROBE':<16}{'STATE':<11}{'HOSTNAME':<24}{'LAST HEARTBEAT':<34}LABELS")
    for item in items:
        labels = ",".join(f"{k}={v}" for k, v in sorted(item["labels"].items()))
        click.echo(
            f"{item['probe_id']:<16}{item['state']:<11}{item['hostname'][:23]:<24}"
            f"{item['last_heartbeat_at'] or '-':<34}{labels}"
        )


@probes_group.command("command")
@data_dir_option
@click.argument("probe_id")
@click.argument("action", type=click.Choice(probe_commands.ACTIONS))
@click.option("--set", "settings_changes", multiple=True, help="For config-change: key=value (repeatable).")
@click.pass_context
def probes_command(ctx: click.Context, data_dir: Path | None, probe_id: str, action: str,
                   settings_changes: tuple[str, ...]) -> None:  # fmt: skip
    """Queue a command; the probe gets it with its next heartbeat and acknowledges it."""
    settings = _settings(ctx, data_dir)
    payload: dict[str, Any] = {}
    for item in settings_changes:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--set")
        payload[key] = _scalar(value)
    with _sessions(settings).begin() as session:
        command_id = probe_commands.queue_command(session, probe_id, action, payload)
    click.echo(command_id)


@cli.command("audit")
@data_dir_option
@click.option("--probe", "probe_id", default=None, help="Audit this probe only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/audit.md).")
@click.pass_context
def audit_command(ctx: click.Context, data_dir: Path | None, probe_id: str | None, as_json: bool) -> None:
    """Check the accounting identity of every probe: where each packet and sequence number went.

    Exit status: 0 every identity holds and there is no gap, 3 an identity fails, 4 only gaps,
    1 error, 2 usage error.
    """
    settings = _settings(ctx, data_dir)
    try:
        with _sessions(settings)() as session:
            document = accounting.audit_fleet(session, probe_id)
    except SQLAlchemyError as exc:  # e.g. a data directory that does not exist
        raise ServerError(
            f"cannot read the registry in {settings.data_dir} ({exc.__class__.__name__});"
            " is it initialised (`survey6-server init`)?"
        ) from exc
    click.echo(json.dumps(document, indent=2) if as_json else accounting.render_text(document))
    ctx.exit(document["exit_code"])


@cli.group("user")
def user_group() -> None:
    """Web UI accounts: an admin may act (commands, tokens), a viewer may only look."""


def _read_password(password_file: Any) -> str:
    if password_file is not None:
        return str(password_file.readline().rstrip("\r\n"))
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@user_group.command("add")
@data_dir_option
@click.argument("username")
@click.option("--role", type=click.Choice(web_users.ROLES), default=web_users.VIEWER, show_default=True)
@click.option(
    "--password-file",
    type=click.File("r"),
    default=None,
    help="Read the password from this file's first line.",
)
@click.pass_context
def user_add(ctx: click.Context, data_dir: Path | None, username: str, role: str, password_file: Any) -> None:
    """Add an account (the password is asked for unless --password-file is given)."""
    settings = _settings(ctx, data_dir)
    password = _read_password(password_file)
    with _sessions(settings).begin() as session:
        web_users.add_user(session, username, password, role)
    click.echo(f"added {username} ({role})")


@user_group.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def user_list(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """List accounts and their roles."""
    settings = _settings(ctx, data_dir)
    with _sessions(settings)() as session:
        accounts = web_users.list_users(session)
    items = [
        {"username": a.username, "role": a.role, "created_at": a.created_at.isoformat()} for a in accounts
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    click.echo(f"{'USER':<24}{'ROLE':<8}CREATED")
    for item in items:
        click.echo(f"{item['username']:<24}{item['role']:<8}{item['created_at']}")


@user_group.command("passwd")
@data_dir_option
@click.argument("username")
@click.option(
    "--password-file",
    type=click.File("r"),
    default=None,
    help="Read the password from this file's first line.",
)
@click.pass_context
def user_passwd(ctx: click.Context, data_dir: Path | None, username: str, password_file: Any) -> None:
    """Set an account's password."""
    settings = _settings(ctx, data_dir)
    password = _read_password(password_file)
    with _sessions(settings).begin() as session:
        web_users.set_password(session, username, password)
    click.echo(f"password of {username} changed")


@user_group.command("role")
@data_dir_option
@click.argument("username")
@click.argument("role", type=click.Choice(web_users.ROLES))
@click.pass_context
def user_role(ctx: click.Context, data_dir: Path | None, username: str, role: str) -> None:
    """Give an account another role (the last admin stays an admin)."""
    settings = _settings(ctx, data_dir)
    with _sessions(settings).begin() as session:
        web_users.set_role(session, username, role)
    click.echo(f"{username} is now {role}")


@user_group.command("remove")
@data_dir_option
@click.argument("username")
@click.pass_context
def user_remove(ctx: click.Context, data_dir: Path | None, username: str) -> None:
    """Remove an account (not the last admin)."""
    settings = _settings(ctx, data_dir)
    with _sessions(settings).begin() as session:
        web_users.remove_user(session, username)
    click.echo(f"removed {username}")


@cli.group("apt")
def apt_group() -> None:
    """The signed apt repository probe hosts install survey6-probe from (served by the web UI at /apt/)."""


@apt_group.command("publish")
@data_dir_option
@click.argument("deb", type=click.Path(path_type=Path, dir_okay=True))
@click.pass_context
def apt_publish(ctx: click.Context, data_dir: Path | None, deb: Path) -> None:
    """Add a survey6 .deb to the repository and re-sign its indexes (the signing key is made on first use)."""
    from survey6.server.aptrepo import AptRepository

    repository = AptRepository(_settings(ctx, data_dir).data_dir)
    new_key = repository.fingerprint() is None
    click.echo(f"checking {deb} ...")
    done = repository.publish(deb)
    if new_key:
        click.echo(f"made the repository's signing key {repository.fingerprint()}")
    what = "published" if done.added else "already published (indexes re-signed)"
    click.echo(
        f"{what}: {done.control.describe()} as {done.filename}, {done.size} bytes, sha256 {done.sha256}; "
        f"the repository holds {done.total} package file{'s' if done.total != 1 else ''}"
    )


@apt_group.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def apt_list(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """List the published packages, oldest version first."""
    from survey6.server.aptrepo import AptRepository

    entries = AptRepository(_settings(ctx, data_dir).data_dir).entries()
    items = [
        {"package": e.package, "version": e.version, "architecture": e.architecture, "filename": e.filename,
         "size": e.size, "sha256": e.sha256}
        for e in entries
    ]  # fmt: skip
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no package is published yet: `survey6-server apt publish FILE.deb` adds one")
        return
    click.echo(f"{'PACKAGE':<24}{'VERSION':<24}{'ARCH':<8}{'SIZE':>12}  SHA256")
    for item in items:
        click.echo(
            f"{item['package']:<24}{item['version']:<24}{item['architecture']:<8}{item['size']:>12}  "
            f"{item['sha256']}"
        )


@apt_group.command("key")
@data_dir_option
@click.pass_context
def apt_key(ctx: click.Context, data_dir: Path | None) -> None:
    """Print the signing key's fingerprint and where its public half is (made on first use)."""
    from survey6.server.aptrepo import AptRepository

    repository = AptRepository(_settings(ctx, data_dir).data_dir)
    click.echo(f"fingerprint: {repository.ensure_key()}")
    click.echo(f"public key: {repository.keyring_path}")
    click.echo(f"public key (ASCII): {repository.armored_key_path}")
    click.echo(f"public key sha256: {repository.keyring_sha256()}")


def _scalar(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def main() -> None:
    raise SystemExit(run_group(cli, "survey6-server"))
