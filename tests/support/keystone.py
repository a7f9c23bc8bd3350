"""A real Keystone (from PyPI, in its own venv) on 127.0.0.1, for the tests and the Tempest run.

Keystone's pins (SQLAlchemy, oslo.*) need not agree with this project's, so it lives in
`.venv-keystone` (tests/run.sh installs it from tests/support/keystone-requirements.txt). Its
database and keys are made once per machine (`db_sync`, `fernet_setup`, `credential_setup`,
`bootstrap`, then the projects, users and roles the tests need: ~20 s) into
`.venv-keystone/template-with-users`; each run copies them, points the catalog's identity endpoints at a free
port (in the database, before Keystone starts: no token is needed, so a Keystone whose tokens
live a few seconds starts as reliably as any) and serves Keystone's WSGI app there with gunicorn:

    with running_keystone(tmp_path) as ks:
        ks.token("alice")                  # a member of project p1
        ks.register_network(9696)          # the `network` service in the catalog
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("ALCOR_KEYSTONE_VENV", ROOT / ".venv-keystone"))
TEMPLATE = VENV / "template-with-users"
ADMIN_PASSWORD = "admin-secret"
PASSWORD = "secret"
PLACEHOLDER = "http://127.0.0.1:1/v3/"

CONF = """\
[DEFAULT]
[database]
connection = sqlite:///{dir}/keystone.db?timeout=30
[token]
provider = fernet
expiration = {expiration}
[fernet_tokens]
key_repository = {dir}/fernet
[fernet_receipts]
key_repository = {dir}/fernet
[credential]
key_repository = {dir}/credential
[identity]
password_hash_rounds = 4
[cache]
enabled = false
"""

WSGI = """\
import sys
sys.argv = sys.argv[:1]  # oslo.config would parse gunicorn's own flags
from keystone.wsgi.api import application  # noqa: E402
"""

# Who the tests are: (user, project, role). Keystone's implied roles make admin a member and a
# reader too. `neutron` is the API's own service user (keystonemiddleware validates with it),
# `nova` is Nova's (it receives our events, and binds ports).
USERS = [
    ("alice", "p1", "member"),
    ("rita", "p1", "reader"),
    ("bob", "p2", "member"),
    ("adam", "p1", "admin"),
    ("neutron", "service", "service"),
    ("nova", "service", "service"),
]


def available() -> str | None:
    """Why Keystone cannot run here, or None."""
    if not (VENV / "bin" / "keystone-manage").exists() or not (VENV / "bin" / "gunicorn").exists():
        return f"Keystone is not installed in {VENV} (bash tests/run.sh installs it)"
    return None


def _manage(conf: Path, *args: str) -> None:
    subprocess.run([str(VENV / "bin" / "keystone-manage"), "--config-file", str(conf), *args],
                   check=True, capture_output=True, timeout=300)


def ensure_template() -> Path:
    """The bootstrapped database, key repositories and the tests' users, made once (none of it
    depends on the port Keystone is later served on)."""
    if (TEMPLATE / "ready").exists():
        return TEMPLATE
    work = TEMPLATE.with_name(f"template.{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    for d in ("fernet", "credential"):
        (work / d).mkdir(parents=True)
    conf = work / "keystone.conf"
    conf.write_text(CONF.format(dir=work, expiration=3600))
    _manage(conf, "db_sync")
    for step in ("fernet_setup", "credential_setup"):
        _manage(conf, step, "--keystone-user", "root", "--keystone-group", "root")
    _manage(conf, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
            "--bootstrap-region-id", "RegionOne", "--bootstrap-admin-url", PLACEHOLDER,
            "--bootstrap-public-url", PLACEHOLDER, "--bootstrap-internal-url", PLACEHOLDER)
    with _serve(work, expiration=3600, threads=4) as ks:
        _add_users(ks)
    (work / "ids.json").write_text(json.dumps({"projects": ks.projects, "users": ks.users}))
    (work / "ready").write_text("ok")
    if TEMPLATE.exists():  # another run made it meanwhile
        shutil.rmtree(work, ignore_errors=True)
        return TEMPLATE
    work.rename(TEMPLATE)
    return TEMPLATE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Keystone:
    url: str  # http://127.0.0.1:PORT/v3
    process: subprocess.Popen[bytes]
    projects: dict[str, str] = field(default_factory=dict)  # name → id
    users: dict[str, str] = field(default_factory=dict)

    def session(self, user: str = "admin", project: str | None = None, password: str | None = None) -> Any:
        """A keystoneauth1 session authenticated as `user` (admin: the bootstrap admin)."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        if project is None:
            project = "admin" if user == "admin" else next(p for u, p, _ in USERS if u == user)
        auth = v3.Password(auth_url=self.url, username=user,
                           password=password or (ADMIN_PASSWORD if user == "admin" else PASSWORD),
                           project_name=project, user_domain_name="Default",
                           project_domain_name="Default")
        return session.Session(auth=auth)

    def token(self, user: str = "admin") -> str:
        return str(self.session(user).get_token())

    def admin(self) -> Any:
        """An openstacksdk connection as the bootstrap admin (identity API only)."""
        import openstack

        return openstack.connection.Connection(session=self.session("admin"), region_name="RegionOne",
                                               identity_endpoint_override=self.url)

    def authtoken_section(self, **extra: Any) -> dict[str, Any]:
        """[keystone_authtoken] for the API, as an operator writes it (neutron.conf's names)."""
        return {"www_authenticate_uri": self.url, "auth_url": self.url, "auth_type": "password",
                "username": "neutron", "password": PASSWORD, "project_name": "service",
                "user_domain_name": "Default", "project_domain_name": "Default",
                "service_token_roles": ["service"], "service_token_roles_required": True, **extra}

    def register(self, service_type: str, name: str, url: str) -> None:
        """A service in the catalog with public, internal and admin endpoints (RegionOne)."""
        conn = self.admin()
        for svc in list(conn.identity.services()):
            if svc.type == service_type:
                for ep in list(conn.identity.endpoints(service_id=svc.id)):
                    conn.identity.delete_endpoint(ep)
                conn.identity.delete_service(svc)
        svc = conn.identity.create_service(type=service_type, name=name)
        for interface in ("public", "internal", "admin"):
            conn.identity.create_endpoint(service_id=svc.id, interface=interface, url=url,
                                          region_id="RegionOne")

    def register_network(self, port: int) -> None:
        self.register("network", "neutron", f"http://127.0.0.1:{port}/")


def _add_users(ks: Keystone) -> None:
    conn = ks.admin()
    roles = {r.name: r.id for r in conn.identity.roles()}
    for name in sorted({p for _, p, _ in USERS}):
        ks.projects[name] = conn.identity.create_project(name=name, domain_id="default").id
    for user, project, role in USERS:
        u = conn.identity.create_user(name=user, password=PASSWORD, domain_id="default",
                                      default_project_id=ks.projects[project])
        ks.users[user] = u.id
        conn.identity.assign_project_role_to_user(ks.projects[project], u.id, roles[role])
    conn.close()


@contextlib.contextmanager
def running_keystone(tmp: Path, expiration: int = 3600, threads: int = 4) -> Iterator[Keystone]:
    """Keystone on a free port of 127.0.0.1, from a copy of the template, until the block ends."""
    template = ensure_template()
    work = tmp / "keystone"
    shutil.copytree(template, work)
    with _serve(work, expiration, threads) as ks:
        ids = json.loads((work / "ids.json").read_text())
        ks.projects.update(ids["projects"])
        ks.users.update(ids["users"])
        yield ks


@contextlib.contextmanager
def _serve(work: Path, expiration: int, threads: int) -> Iterator[Keystone]:
    """Keystone's WSGI app on a free port, serving the database in `work`."""
    import requests

    conf = work / "keystone.conf"
    conf.write_text(CONF.format(dir=work, expiration=expiration))
    (work / "keystone_wsgi.py").write_text(WSGI)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v3"
    # The catalog's identity endpoints: the template's placeholder becomes the real port.
    with contextlib.closing(sqlite3.connect(work / "keystone.db")) as db, db:
        db.execute("UPDATE endpoint SET url = ?", (url + "/",))
    env = {**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(conf)}
    log = open(work / "keystone.log", "wb")  # noqa: SIM115 (closed with the process)
    # SQLite has one writer: one worker, a few threads (one where many writes run at once).
    proc = subprocess.Popen(
        [str(VENV / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", str(threads), "--worker-class", "gthread", "--chdir", str(work), "--timeout", "120",
         "keystone_wsgi:application"], env=env, stdout=log, stderr=subprocess.STDOUT)
    ks = Keystone(url, proc)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Keystone exited: {(work / 'keystone.log').read_text()[-2000:]}")
            try:
                if requests.get(ks.url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Keystone did not answer within 120 s")
            time.sleep(0.2)
        yield ks
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def serve(work: Path, info: Path) -> None:
    """Keystone until SIGTERM, its URL and admin credentials written to `info` (JSON) once up: for
    runs outside pytest (tests/conformance/tempest.sh)."""
    import json
    import signal

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    # Tempest makes and removes projects and users from parallel workers: one thread, or SQLite
    # says "database is locked" (a 500) now and then.
    with running_keystone(work, threads=1) as ks:
        info.write_text(json.dumps({"url": ks.url, "admin_password": ADMIN_PASSWORD,
                                    "authtoken": ks.authtoken_section(), "projects": ks.projects}))
        while not stop and ks.process.poll() is None:
            time.sleep(0.2)


if __name__ == "__main__":
    # python -m tests.support.keystone            make the template
    # python -m tests.support.keystone serve DIR  serve Keystone until SIGTERM (DIR/keystone.json)
    if available():
        sys.exit(available())
    if sys.argv[1:2] == ["serve"]:
        d = Path(sys.argv[2])
        d.mkdir(parents=True, exist_ok=True)
        serve(d, d / "keystone.json")
    else:
        print(ensure_template())
