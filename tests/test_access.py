"""Who may call what: API keys, the ops routes, allowed hosts, TLS, content types, what errors and headers say."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import trustme

from gpuserve.client import AsyncClient, BadRequestError, Client
from rawhttp import connect, read_answer
from serving import APPS, serve, server_env

KEYS = ("first-key-0123456789", "second-key-9876543210")
OPS = ("stats", "metrics", "docs", "openapi.json", "docs/assets/swagger-ui.css")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    key_file = logs / "keys.txt"
    key_file.write_text(f"# who may call\n{KEYS[0]}\n\n  {KEYS[1]}  \n")
    args = ("--api-key-file", str(key_file), "--allowed-hosts", "localhost, 127.0.0.1")
    with serve("hostile:Guarded", *args, log_dir=logs) as server:
        yield server


def test_probes_answer_without_a_key(keyed):
    assert keyed.get("livez").status == 200
    assert keyed.get("readyz").status == 200


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": f"Basic {KEYS[0]}"},
                                     {"Authorization": KEYS[0]}], ids=["none", "wrong", "basic", "bare"])
def test_an_api_without_a_valid_key_is_401_with_a_bearer_challenge(keyed, headers):
    reply = keyed.post("echo", {"value": 1}, headers=headers)
    assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in reply.body["error"] and reply.body["request_id"]


@pytest.mark.parametrize("key", KEYS)
def test_every_key_of_the_file_is_accepted(keyed, key):
    reply = keyed.post("echo", {"value": key}, headers=bearer(key))
    assert reply.status == 200 and reply.body == key


def test_the_python_clients_send_their_key(keyed):
    assert Client(keyed.url, api_key=KEYS[0]).echo(value="sync") == "sync"
    with pytest.raises(BadRequestError) as refused:
        Client(keyed.url).echo(value=1)
    assert refused.value.status == 401

    async def call() -> object:
        async with AsyncClient(keyed.url, api_key=KEYS[1]) as client:
            return await client.echo(value="async")

    assert asyncio.run(call()) == "async"


@pytest.mark.parametrize("path", OPS)
def test_ops_routes_follow_the_api_key_by_default(keyed, path):
    assert keyed.get(path).status == 401
    assert keyed.get(path, headers=bearer(KEYS[1])).status == 200


def test_the_kserve_v2_probes_stay_open_and_its_routes_follow_the_key(keyed):
    assert keyed.get("v2/health/live").status == 200 and keyed.get("v2/health/ready").status == 200
    assert keyed.get("v2/models/echo").status == 401


def test_a_stranger_learns_no_routes(keyed):
    reply = keyed.get("no/such/route")
    assert reply.status == 401 and "route" not in reply.body["error"]


def test_a_host_not_allowed_is_421_and_the_probes_still_answer(keyed):
    evil = {"Host": "attacker.example:3000", **bearer(KEYS[0])}
    reply = keyed.post("echo", {"value": 1}, headers=evil)
    assert reply.status == 421 and "Host" in reply.body["error"]
    assert keyed.get("livez", headers=evil).status == 200
    for host in ("localhost:8000", "LOCALHOST", "127.0.0.1"):
        assert keyed.post("echo", {"value": 1}, headers={"Host": host, **bearer(KEYS[0])}).status == 200


def test_ops_routes_open_and_apis_behind_the_key(tmp_path):
    env = {"GPUSERVE_API_KEY": KEYS[0]}  # every flag reads GPUSERVE_<FLAG>
    with serve("hostile:Guarded", "--ops-routes", "open", env=env, log_dir=tmp_path) as server:
        for path in OPS:
            assert server.get(path).status == 200, path
        assert server.post("echo", {"value": 1}).status == 401
        assert server.post("echo", {"value": 1}, headers=bearer(KEYS[0])).status == 200


def test_ops_routes_off_are_not_served(tmp_path):
    with serve("hostile:Guarded", "--ops-routes", "off", log_dir=tmp_path) as server:
        for path in OPS:
            assert server.get(path).status == 404, path
        assert server.post("echo", {"value": 1}).status == 200
        assert server.get("livez").status == 200


def test_an_unreadable_key_file_stops_serve_with_its_name(tmp_path):
    missing = tmp_path / "nope.txt"
    done = subprocess.run([sys.executable, "-m", "gpuserve", "serve", "hostile:Guarded", "--port", "0",
                           "--api-key-file", str(missing)], cwd=APPS, env=server_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and str(missing) in done.stderr


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    env = {"HOSTILE_SECRET": "s3cr3t-value-from-the-environment"}
    with serve("hostile:Guarded", env=env, log_dir=tmp_path_factory.mktemp("logs")) as server:
        yield server


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_json_routes_refuse_bodies_that_are_not_json_with_415(plain, content_type):
    reply = plain.post("echo", b'{"value": 1}', headers={"Content-Type": content_type})
    assert reply.status == 415 and "application/json" in reply.body["error"]


def test_json_routes_take_json_and_a_body_without_a_content_type(plain):
    for content_type in ("application/json", "application/json; charset=utf-8", "application/problem+json"):
        assert plain.post("echo", b'{"value": 1}', headers={"Content-Type": content_type}).status == 200
    with connect(plain.port) as sock:  # what tritonclient sends: no Content-Type at all
        body = b'{"value": 2}'
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = read_answer(sock)
    assert answer.status == 200 and answer.body == b"2"


def test_an_error_body_names_the_exception_without_paths_or_environment(plain):
    reply = plain.post("leak", {"what": "resnet"})
    assert reply.status == 500 and reply.body["type"] == "FileNotFoundError"
    assert "cannot open" in reply.body["error"] and "traceback" not in reply.body
    assert "/srv/models" not in reply.body["error"] and "s3cr3t" not in reply.body["error"]
    log = plain.log()  # the server's own log keeps everything
    assert "/srv/models/resnet/weights.bin" in log and "s3cr3t-value-from-the-environment" in log


def test_debug_errors_show_paths_and_the_traceback(tmp_path):
    with serve("hostile:Guarded", "--debug-errors", log_dir=tmp_path) as server:
        reply = server.post("leak", {"what": "resnet"})
    assert "/srv/models/resnet/weights.bin" in reply.body["error"]
    assert "Traceback" in reply.body["traceback"] and "hostile.py" in reply.body["traceback"]


def test_no_answer_names_versions_in_its_server_header(plain):
    answers = [plain.get("livez"), plain.get("nope"), plain.post("echo", {"value": 1}),
               plain.post("echo", b"{not json")]
    with connect(plain.port) as sock:  # aiohttp's own answer to a request it cannot parse
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        malformed = read_answer(sock)
    assert malformed.status == 400
    servers = {reply.headers.get("Server") for reply in answers} | {malformed.headers.get("server")}
    assert servers == {"gpuserve"}


@pytest.fixture(scope="module")
def authority():
    return trustme.CA()


def test_tls_serves_https_with_a_real_handshake(tmp_path, authority):
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    for blob in certificate.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    certificate.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    authority.configure_trust(client)
    with serve("hostile:Guarded", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), log_dir=tmp_path,
               tls=client) as server:
        assert server.url.startswith("https://")
        assert server.post("echo", {"value": "over TLS"}).body == "over TLS"
        large = "0123456789" * 300_000  # a 3 MB answer: its head and body go to the TLS transport as two pieces
        assert server.post("echo", {"value": large}).body == large
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"{server.url}/livez", timeout=10, context=ssl.create_default_context())
        with connect(server.port) as sock:  # plain HTTP to the TLS port gets no answer
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock) is None
    assert "serving on https://" in server.log()


def test_tls_needs_both_files(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gpuserve", "serve", "hostile:Guarded", "--port", "0",
                           "--ssl-certfile", str(tmp_path / "cert.pem")], cwd=APPS, env=server_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--ssl-keyfile" in done.stderr


def test_tls_files_that_cannot_be_used_stop_serve_with_one_line(tmp_path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    done = subprocess.run([sys.executable, "-m", "gpuserve", "serve", "hostile:Guarded", "--port", "0",
                           "--ssl-certfile", str(bogus), "--ssl-keyfile", str(bogus)], cwd=APPS, env=server_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "cannot serve HTTPS" in done.stderr and str(bogus) in done.stderr and "Traceback" not in done.stderr
