"""A GraphQL target that checks relay's request signatures with the Standard Webhooks reference
package (not relay's code): an independent verifier.

Usage: python signed_target.py SECRET. Prints `listening PORT`, then one JSON line per request:
{"valid": bool, "webhook_id": str|null, "events": [ids], "error": str|null}. A request that fails
verification is answered 401; a valid one is answered as a GraphQL target would, with every
event created.
"""

import http.server
import json
import sys

import threading

import standardwebhooks

# One line at a time: the server answers on several threads.
printing = threading.Lock()

webhook = standardwebhooks.Webhook(sys.argv[1])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            webhook.verify(body, headers)
            valid, error = True, None
        except Exception as e:  # the package's own verification errors
            valid, error = False, f"{type(e).__name__}: {e}"
        request = json.loads(body)
        variables = request.get("variables", {})
        if "input" in variables:
            created = {"createEvent": {"id": variables["input"]["id"]}}
        else:
            created = {alias: {"id": event["id"]} for alias, event in variables.items()}
        events = [value["id"] for value in created.values()]
        with printing:
            print(
                json.dumps(
                    {
                        "valid": valid,
                        "webhook_id": headers.get("webhook-id"),
                        "events": events,
                        "error": error,
                    }
                ),
                flush=True,
            )
        status, answer = (200, {"data": created}) if valid else (401, {"errors": [{"message": error}]})
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
