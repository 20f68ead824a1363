"""A GraphQL target behind the credentials real targets ask for, written with Python's standard
library only (not relay's code): an OAuth2 authorization server's token endpoint (the client
credentials grant, RFC 6749 §4.4) and a target that takes only its unexpired tokens, and TLS that
asks for a client certificate signed by a given CA (mTLS).

Usage:
  python credentialed_target.py [--oauth CLIENT_ID SECRET SCOPE EXPIRES_IN]
                                [--tls CERT KEY CLIENT_CA]

Prints `listening PORT`, then one JSON line per request:
  {"path": "/token", "granted": bool, "error": str|null}
  {"path": "/graphql", "authorized": bool, "events": [ids], "peer": str|null}
`POST /revoke` forgets every token issued, as a server does when a token is revoked or its
signing key rotates.
"""

import argparse
import base64
import http.server
import json
import secrets
import ssl
import sys
import threading
import time
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--oauth", nargs=4, metavar=("CLIENT_ID", "SECRET", "SCOPE", "EXPIRES_IN"))
parser.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CLIENT_CA"))
args = parser.parse_args()

oauth = None
if args.oauth:
    client_id, client_secret, scope, expires_in = args.oauth
    oauth = {"id": client_id, "secret": client_secret, "scope": scope, "expires_in": int(expires_in)}
tokens = {}  # token -> expiry (monotonic)
lock = threading.Lock()


printing = threading.Lock()


def report(line):
    # One line at a time: the server answers on several threads.
    with printing:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/token":
            self.token(body)
        elif self.path == "/revoke":
            with lock:
                tokens.clear()
            self.answer(200, {})
        else:
            self.graphql(body)

    def token(self, body):
        form = urllib.parse.parse_qs(body.decode())
        error = None
        try:
            kind, credentials = self.headers.get("authorization", "").split(" ", 1)
            user, password = base64.b64decode(credentials).decode().split(":", 1)
            user, password = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
            if kind != "Basic" or (user, password) != (oauth["id"], oauth["secret"]):
                error = "invalid_client"
        except ValueError:
            error = "invalid_client"
        if error is None and form.get("grant_type") != ["client_credentials"]:
            error = "unsupported_grant_type"
        if error is None and form.get("scope") != [oauth["scope"]]:
            error = "invalid_scope"
        report({"path": "/token", "granted": error is None, "error": error})
        if error:
            self.answer(401 if error == "invalid_client" else 400, {"error": error})
            return
        token = "tok-" + secrets.token_urlsafe(16)
        with lock:
            tokens[token] = time.monotonic() + oauth["expires_in"]
        self.answer(
            200,
            {"access_token": token, "token_type": "Bearer", "expires_in": oauth["expires_in"]},
        )

    def graphql(self, body):
        authorized = True
        if oauth:
            token = self.headers.get("authorization", "").removeprefix("Bearer ")
            with lock:
                authorized = tokens.get(token, 0) > time.monotonic()
        variables = json.loads(body).get("variables", {})
        if "input" in variables:
            created = {"createEvent": {"id": variables["input"]["id"]}}
        else:
            created = {alias: {"id": event["id"]} for alias, event in variables.items()}
        peer = None
        if args.tls:
            subject = dict(item[0] for item in self.connection.getpeercert()["subject"])
            peer = subject.get("commonName")
        report(
            {
                "path": "/graphql",
                "authorized": authorized,
                "events": [value["id"] for value in created.values()],
                "peer": peer,
            }
        )
        if authorized:
            self.answer(200, {"data": created})
        else:
            self.answer(401, {"errors": [{"message": "invalid or expired token"}]})

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if args.tls:
    cert, key, client_ca = args.tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"listening {server.server_address[1]}", flush=True)
sys.stdout.flush()
server.serve_forever()
