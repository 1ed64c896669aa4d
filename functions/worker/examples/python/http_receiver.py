# A taskq `http` target in Python (standard library only). taskq POSTs the task as JSON, signed
# with the stack's webhook secret (WebhookSecretArn); a 2xx JSON reply is the task's result.
import hashlib, hmac, json, os, time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ["TASKQ_SIGNING_SECRET"].encode()


def verified(header, body, tolerance=300):
    items = [p.split("=", 1) for p in header.split(",") if "=" in p]
    t = next((v for k, v in items if k == "t"), "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    mac = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, mac) for k, v in items)


class Target(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not verified(self.headers.get("Taskq-Signature", ""), body):
            return self.reply(401, {"error": "bad signature"})  # other 4xx: fails, no retry
        task = json.loads(body)
        # ... the work; answer 503 (or 408, 429) to have taskq retry it later ...
        self.reply(200, {"handled": task["id"], "payload": task["payload"]})

    def reply(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Target).serve_forever()
