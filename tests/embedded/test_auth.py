"""``runtime db --auth``: SCRAM authentication, roles, the localhost exception, users files,
persistence of users, and the refusal to listen beyond loopback without authentication.

Everything goes through PyMongo against real ``runtime db`` processes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.binary import Binary
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from scramp import ScramClient

from runtime.embedded.process import EmbeddedServer

pytestmark = pytest.mark.embedded_only

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30

PASSWORDS = {
    "root": "pw-root-Kq83v",
    "reader": "pw-reader-Zx19t",
    "writer": "pw-writer-Hm52p",
    "dbadm": "pw-dbadm-Lr07c",
    "useradm": "pw-useradm-Wd44n",
    "rwany": "pw-rwany-Pe61s",
    "sha256only": "pw-sha256-Ty28b",
}

USERS: list[dict[str, Any]] = [
    {"user": "root", "password": PASSWORDS["root"], "roles": ["root"]},
    {"user": "reader", "db": "app", "password": PASSWORDS["reader"], "roles": ["read"]},
    {"user": "writer", "db": "app", "password": PASSWORDS["writer"], "roles": ["readWrite"]},
    {"user": "dbadm", "db": "app", "password": PASSWORDS["dbadm"], "roles": ["dbAdmin"]},
    {"user": "useradm", "db": "app", "password": PASSWORDS["useradm"],
     "roles": ["userAdmin", "read"]},
    {"user": "rwany", "password": PASSWORDS["rwany"], "roles": ["readWriteAnyDatabase"]},
    {"user": "sha256only", "password": PASSWORDS["sha256only"],
     "roles": [{"role": "read", "db": "app"}],
     "mechanisms": ["SCRAM-SHA-256"]},
]


def _users_file(path: Path, users: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(users))
    path.chmod(0o600)
    return path


def _client(server: EmbeddedServer, user: str | None = None, db: str = "admin",
            password: str | None = None, **options: Any) -> MongoClient[dict[str, Any]]:
    if user is not None:
        options.update(username=user, authSource=db,
                       password=password if password is not None else PASSWORDS[user])
    return MongoClient(server.uri, serverSelectionTimeoutMS=10_000, **options)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One ``--auth`` server with the users of :data:`USERS` from a users file."""
    tmp = tmp_path_factory.mktemp("auth")
    users_file = _users_file(tmp / "users.json", USERS)
    with EmbeddedServer(dbpath=tmp / "db", auth=True, users_file=users_file,
                        log_path=tmp / "server.log") as running:
        with _client(running, "root") as root:
            root.app.items.insert_many([{"_id": 1}, {"_id": 2}])
        yield running


@pytest.fixture
def clients(server: EmbeddedServer) -> Iterator[Any]:
    """Factory of clients for :func:`server`, closed after the test."""
    made: list[MongoClient[dict[str, Any]]] = []

    def make(user: str | None = None, db: str = "admin", **options: Any) -> Any:
        client = _client(server, user, db, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _code(exc: pytest.ExceptionInfo[OperationFailure]) -> tuple[int | None, str]:
    return exc.value.code, str((exc.value.details or {}).get("errmsg"))


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", [None, "SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_authentication(clients: Any, mechanism: str | None) -> None:
    options = {"authMechanism": mechanism} if mechanism else {}
    client = clients("writer", "app", **options)
    assert client.app.items.count_documents({}) >= 2
    status = client.admin.command("connectionStatus")["authInfo"]
    assert status["authenticatedUsers"] == [{"user": "writer", "db": "app"}]
    assert status["authenticatedUserRoles"] == [{"role": "readWrite", "db": "app"}]


def test_hello_reports_a_users_mechanisms(clients: Any) -> None:
    anonymous = clients()
    hello = anonymous.admin.command("hello", saslSupportedMechs="app.writer")
    assert hello["saslSupportedMechs"] == ["SCRAM-SHA-1", "SCRAM-SHA-256"]
    hello = anonymous.admin.command("hello", saslSupportedMechs="admin.sha256only")
    assert hello["saslSupportedMechs"] == ["SCRAM-SHA-256"]
    assert "saslSupportedMechs" not in anonymous.admin.command(
        "hello", saslSupportedMechs="admin.nobody")


def test_default_negotiation_uses_sha256_for_a_sha256_only_user(clients: Any) -> None:
    client = clients("sha256only")
    assert client.app.items.find_one({"_id": 1}) == {"_id": 1}
    with pytest.raises(OperationFailure) as failed:
        clients("sha256only", authMechanism="SCRAM-SHA-1").admin.command("connectionStatus")
    assert _code(failed) == (18, "Authentication failed.")


@pytest.mark.parametrize(("user", "password"), [("writer", "wrong"), ("nobody", "whatever")])
def test_failed_authentication_never_says_whether_the_user_exists(
        clients: Any, user: str, password: str) -> None:
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        with pytest.raises(OperationFailure) as failed:
            clients(user, "app", password=password, authMechanism=mechanism).app.items.find_one()
        assert _code(failed) == (18, "Authentication failed.")


def _sasl(client: MongoClient[dict[str, Any]], user: str, password: str,
          skip_empty_exchange: bool) -> list[dict[str, Any]]:
    """A SCRAM-SHA-256 conversation by hand; the server's replies."""
    scram = ScramClient(["SCRAM-SHA-256"], user, password)
    options = {"skipEmptyExchange": True} if skip_empty_exchange else {}
    start = client.admin.command("saslStart", mechanism="SCRAM-SHA-256",
                                 payload=Binary(scram.get_client_first().encode()),
                                 autoAuthorize=1, options=options)
    scram.set_server_first(bytes(start["payload"]).decode())
    replies = [start]
    final = client.admin.command("saslContinue", conversationId=start["conversationId"],
                                 payload=Binary(scram.get_client_final().encode()))
    scram.set_server_final(bytes(final["payload"]).decode())  # verifies the server signature
    replies.append(final)
    if not final["done"]:
        replies.append(client.admin.command("saslContinue",
                                            conversationId=start["conversationId"],
                                            payload=Binary(b"")))
    return replies


@pytest.mark.parametrize("skip_empty_exchange", [False, True])
def test_sasl_conversation_shape(clients: Any, skip_empty_exchange: bool) -> None:
    client = clients(maxPoolSize=1)  # one connection: the conversation stays on it
    replies = _sasl(client, "root", PASSWORDS["root"], skip_empty_exchange)
    assert [r["done"] for r in replies] == ([False, True] if skip_empty_exchange
                                             else [False, False, True])
    assert all(r["conversationId"] == 1 for r in replies)
    assert bytes(replies[-1]["payload"]) == (bytes(replies[1]["payload"])
                                             if skip_empty_exchange else b"")
    users = client.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"]
    assert users == [{"user": "root", "db": "admin"}]
    client.admin.command("logout")
    assert client.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"] == []


def test_unknown_mechanism_is_mechanism_unavailable(clients: Any) -> None:
    with pytest.raises(OperationFailure) as failed:
        clients().admin.command("saslStart", mechanism="PLAIN", payload=Binary(b"\0u\0p"))
    assert failed.value.code == 334


# -- authorization ----------------------------------------------------------------------------


def test_commands_need_authentication(clients: Any) -> None:
    anonymous = clients()
    assert anonymous.admin.command("ping")["ok"] == 1
    assert anonymous.admin.command("buildInfo")["version"]
    for run in (lambda: anonymous.app.items.find_one(),
                lambda: anonymous.app.items.insert_one({"x": 1}),
                lambda: anonymous.list_database_names()):
        with pytest.raises(OperationFailure) as failed:
            run()
        code, message = _code(failed)
        assert code == 13
        assert message.startswith("Command ") and message.endswith(" requires authentication")


def test_read_role_reads_but_cannot_write(clients: Any) -> None:
    reader = clients("reader", "app")
    assert reader.app.items.find_one({"_id": 1}) == {"_id": 1}
    assert reader.app.list_collection_names() == ["items"]
    with pytest.raises(OperationFailure) as failed:
        reader.app.items.insert_one({"_id": 99})
    code, message = _code(failed)
    assert code == 13
    assert "not authorized on app to execute command insert" in message
    assert "readWrite" in message  # says what would allow it
    with pytest.raises(OperationFailure) as failed:
        reader.other.things.find_one()
    assert failed.value.code == 13
    assert reader.list_database_names() == ["app"]


def test_read_write_role_writes_in_its_database_only(clients: Any) -> None:
    writer = clients("writer", "app")
    writer.app.scratch.insert_one({"_id": 1})
    writer.app.scratch.update_one({"_id": 1}, {"$set": {"a": 1}})
    writer.app.scratch.create_index("a")
    writer.app.drop_collection("scratch")
    for run in (lambda: writer.other.things.insert_one({}),
                lambda: writer.drop_database("app"),
                lambda: writer.admin.command("serverStatus"),
                lambda: writer.app.command("createUser", "x", pwd="y", roles=[])):
        with pytest.raises(OperationFailure) as failed:
            run()
        assert failed.value.code == 13


def test_read_write_user_runs_transactions_and_change_streams(clients: Any) -> None:
    writer = clients("writer", "app")
    coll = writer.app.streamed
    with coll.watch() as stream:
        with writer.start_session() as session, session.start_transaction():
            coll.insert_one({"_id": 1}, session=session)
            coll.insert_one({"_id": 2}, session=session)
        events = [stream.next()["documentKey"]["_id"] for _ in range(2)]
    assert events == [1, 2]
    assert [d["_id"] for d in coll.find().batch_size(1)] == [1, 2]  # getMore, killCursors
    coll.drop()
    with pytest.raises(OperationFailure) as failed:  # a cluster-wide stream needs *AnyDatabase
        writer.watch().try_next()
    assert failed.value.code == 13


def test_db_admin_manages_but_does_not_read(clients: Any) -> None:
    admin = clients("dbadm", "app")
    admin.app.command("create", "managed")
    admin.app.command("collMod", "managed")
    assert "managed" in admin.app.list_collection_names()
    with pytest.raises(OperationFailure) as failed:
        admin.app.items.find_one()
    assert failed.value.code == 13
    admin.app.drop_collection("managed")


def test_root_can_do_everything(clients: Any) -> None:
    root = clients("root")
    root.other.things.insert_one({"_id": 1})
    assert root.admin.command("serverStatus")["ok"] == 1
    assert "other" in root.list_database_names()
    root.drop_database("other")


def test_stored_keys_need_root(clients: Any) -> None:
    root, rwany = clients("root"), clients("rwany")
    root.admin.command("createUser", "stored", pwd="pw-stored-Qa90x", roles=[])
    try:
        assert rwany.app.items.find_one({"_id": 1}) == {"_id": 1}  # reads any database...
        for run in (lambda: rwany.admin["system.users"].find_one(),  # ...but not the keys
                    lambda: rwany.admin["system.users"].insert_one({"_id": "admin.evil"}),
                    lambda: rwany.admin.command("aggregate", "other", pipeline=[
                        {"$lookup": {"from": "system.users", "pipeline": [], "as": "u"}}],
                        cursor={}),
                    lambda: rwany.admin.command("usersInfo", "stored", showCredentials=True)):
            with pytest.raises(OperationFailure) as failed:
                run()
            assert failed.value.code == 13
        doc = root.admin["system.users"].find_one({"_id": "admin.stored"})
        assert doc is not None
        assert set(doc["credentials"]) == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
        assert set(doc["credentials"]["SCRAM-SHA-256"]) == {
            "iterationCount", "salt", "storedKey", "serverKey"}
        assert b"pw-stored-Qa90x" not in bson.encode(doc)
        info = root.admin.command("usersInfo", "stored")["users"]
        assert [u["user"] for u in info] == ["stored"] and "credentials" not in info[0]
    finally:
        root.admin.command("dropUser", "stored")


def test_user_administration(clients: Any) -> None:
    useradm = clients("useradm", "app")
    useradm.app.command("createUser", "bob", pwd="pw-bob-Ju55k", roles=["read"])
    assert [u["user"] for u in useradm.app.command("usersInfo", 1)["users"]] == [
        "bob", "dbadm", "reader", "useradm", "writer"]
    bob = clients("bob", "app", password="pw-bob-Ju55k")
    assert bob.app.items.find_one({"_id": 1}) == {"_id": 1}
    assert bob.app.command("usersInfo", "bob")["users"][0]["roles"] == [
        {"role": "read", "db": "app"}]  # everyone may see their own user
    with pytest.raises(OperationFailure):
        bob.app.items.insert_one({})
    useradm.app.command("grantRolesToUser", "bob", roles=["readWrite"])
    bob.app.items.insert_one({"_id": "bob"})  # takes effect on the open connection
    useradm.app.command("revokeRolesFromUser", "bob", roles=["readWrite"])
    with pytest.raises(OperationFailure):
        bob.app.items.delete_one({"_id": "bob"})
    with pytest.raises(OperationFailure) as failed:  # userAdmin on app cannot hand out root
        useradm.app.command("grantRolesToUser", "bob", roles=[{"role": "root", "db": "admin"}])
    assert failed.value.code == 13
    with pytest.raises(OperationFailure) as failed:
        useradm.app.command("createUser", "bob", pwd="x", roles=[])
    assert failed.value.code == 51
    with pytest.raises(OperationFailure) as failed:
        useradm.app.command("createUser", "carol", pwd="x", roles=["noSuchRole"])
    assert failed.value.code == 31
    useradm.app.command("updateUser", "bob", pwd="pw-bob2-Nc31z")
    with pytest.raises(OperationFailure) as failed:
        clients("bob", "app", password="pw-bob-Ju55k").app.items.find_one()
    assert failed.value.code == 18
    useradm.app.command("dropUser", "bob")
    with pytest.raises(OperationFailure) as failed:
        bob.app.items.find_one()  # dropped: the open connection loses access
    assert failed.value.code == 13
    with pytest.raises(OperationFailure) as failed:
        useradm.app.command("dropUser", "bob")
    assert failed.value.code == 11
    clients("root").app.items.delete_one({"_id": "bob"})


def test_users_from_the_file_cannot_be_changed_by_commands(clients: Any) -> None:
    with pytest.raises(OperationFailure) as failed:
        clients("root").app.command("updateUser", "writer", pwd="other")
    assert "--users-file" in _code(failed)[1]


def test_no_credential_in_the_log(server: EmbeddedServer, clients: Any) -> None:
    with pytest.raises(OperationFailure):
        clients("writer", "app", password="pw-typo-Fg72r").app.items.find_one()
    clients("root").admin.command("createUser", "logged", pwd="pw-logged-Vb18q", roles=[])
    clients("root").admin.command("dropUser", "logged")
    log = server.log_path.read_text()
    assert "authenticated as writer@app" in log or "authenticated as root@admin" in log
    assert "authentication failed for writer@app" in log
    for secret in [*PASSWORDS.values(), "pw-typo-Fg72r", "pw-logged-Vb18q"]:
        assert secret not in log
    assert "p=" not in log.replace("dbpath", "")  # no SCRAM proofs


# -- localhost exception, persistence ---------------------------------------------------------


def test_localhost_exception_then_users_persist_across_restart(tmp_path: Path) -> None:
    with EmbeddedServer(dbpath=tmp_path / "db", auth=True,
                        log_path=tmp_path / "server.log") as server:
        anonymous = _client(server)
        with pytest.raises(OperationFailure) as failed:
            anonymous.app.items.find_one()
        assert failed.value.code == 13
        with pytest.raises(OperationFailure) as failed:  # the first user goes into admin
            anonymous.app.command("createUser", "first", pwd="pw-first-Rn47d", roles=[])
        assert failed.value.code == 13
        anonymous.admin.command("createUser", "first", pwd="pw-first-Rn47d", roles=["root"])
        with pytest.raises(OperationFailure) as failed:  # the exception is over
            anonymous.admin.command("createUser", "second", pwd="x", roles=["root"])
        assert failed.value.code == 13
        anonymous.close()
        with _client(server, "first", password="pw-first-Rn47d") as first:
            first.app.items.insert_one({"_id": 1})
        server.restart()
        with _client(server, "first", password="pw-first-Rn47d") as first:
            assert first.app.items.find_one() == {"_id": 1}
        with _client(server) as anonymous, pytest.raises(OperationFailure) as failed:
            anonymous.admin.command("createUser", "again", pwd="x", roles=["root"])
        assert failed.value.code == 13
    for path in (tmp_path / "db").rglob("*"):
        if path.is_file():
            assert b"pw-first-Rn47d" not in path.read_bytes(), path


def test_users_persist_without_auth_and_are_enforced_with_it(tmp_path: Path) -> None:
    server = EmbeddedServer(dbpath=tmp_path / "db", log_path=tmp_path / "server.log")
    with server, _client(server) as client:
        client.admin.command("createUser", "ops", pwd="pw-ops-Xe63m",
                             roles=[{"role": "read", "db": "app"}])
        client.app.items.insert_one({"_id": 1})
    server.auth = True
    with server:
        with _client(server) as anonymous, pytest.raises(OperationFailure):
            anonymous.app.items.find_one()
        with _client(server, "ops", password="pw-ops-Xe63m") as ops:
            assert ops.app.items.find_one() == {"_id": 1}


# -- command line -----------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run_db(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime", "db", "--port", "0",
                           "--in-memory", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                          check=False)


def _refusal_line(host: str, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"runtime db: refusing to listen on {host} without "
                               "authentication")
    assert "--auth" in lines[0] and "--allow-unauthenticated-remote" in lines[0]


def test_refuses_to_listen_on_all_interfaces_without_auth() -> None:
    result = _run_db("--host", "0.0.0.0")
    assert result.returncode == 1
    assert result.stdout == ""
    _refusal_line("0.0.0.0", result.stderr)


@pytest.mark.parametrize("host", ["::", "192.0.2.10", "example.com"])
def test_refuses_any_non_loopback_host_without_auth(host: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    assert main(["db", "--host", host, "--port", "0", "--in-memory"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    _refusal_line(host, err)


def test_loopback_hosts_need_no_auth() -> None:
    from runtime.embedded.auth import is_loopback_host

    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "192.168.1.2", "example.com"):
        assert not is_loopback_host(host), host


def test_all_interfaces_with_auth_starts(tmp_path: Path) -> None:
    users = _users_file(tmp_path / "users.yaml", USERS[:1])
    with EmbeddedServer(host="0.0.0.0", auth=True, users_file=users,
                        log_path=tmp_path / "server.log") as server:
        with _client(server) as anonymous, pytest.raises(OperationFailure) as failed:
            anonymous.app.items.find_one()
        assert failed.value.code == 13
        with _client(server, "root") as root:
            assert root.admin.command("ping")["ok"] == 1


def test_users_file_in_yaml_and_permission_warning(tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  - user: yamluser\n    db: app\n    password: pw-yaml-Ks20e\n"
                     "    roles: [readWrite, {role: read, db: other}]\n")
    users.chmod(0o644)
    assert stat.S_IMODE(users.stat().st_mode) & stat.S_IROTH
    with EmbeddedServer(auth=True, users_file=users,
                        log_path=tmp_path / "server.log") as server:
        with _client(server, "yamluser", "app", password="pw-yaml-Ks20e") as client:
            client.app.items.insert_one({"_id": 1})
            assert client.other.items.find_one() is None
        log = server.log_path.read_text()
    assert f"--users-file {users} is accessible by group or others" in log
    assert "chmod 600" in log
    assert "pw-yaml-Ks20e" not in log


@pytest.mark.parametrize(("content", "message"), [
    ("[{user: a, password: p, roles: [superhero]}]", "entry 1 (a@admin): Could not find role"),
    ("[{user: a, roles: []}]", "entry 1: 'password' must be a non-empty string"),
    ("[{user: a, password: p, roles: [read], db: app}, {user: a, password: q, db: app}]",
     "entry 2: user a@app is defined twice"),
    ("{user: a}", "expected a list of users"),
    ("[{user: a, password: p, roles: [], role: read}]", "entry 1: unknown key 'role'"),
    ("[{user: a, password: secret-in-bad-yaml, roles: [", "not valid JSON/YAML (line 1)"),
])
def test_bad_users_file_is_explained(tmp_path: Path, content: str, message: str) -> None:
    from runtime.embedded.users_file import UsersFileError, load_users

    users = tmp_path / "users.yaml"
    users.write_text(content)
    with pytest.raises(UsersFileError) as failed:
        load_users(users)
    assert str(failed.value).startswith(f"--users-file {users}: ")
    assert message in str(failed.value)
    assert "secret-in-bad-yaml" not in str(failed.value)


def test_bad_users_file_stops_the_server_with_one_line(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text('[{"user": "a", "password": "secret-in-bad-json", "roles": ["nope"]}]')
    users.chmod(0o600)
    result = _run_db("--auth", "--users-file", str(users))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"runtime db: --users-file {users}: entry 1 (a@admin): Could not find role: nope@admin "
        "(known roles: read, readWrite, dbAdmin, userAdmin, dbOwner, readAnyDatabase, "
        "readWriteAnyDatabase, dbAdminAnyDatabase, userAdminAnyDatabase, clusterMonitor, "
        "clusterAdmin, root)"]
