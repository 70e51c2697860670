"""A local stand-in for the Hub's upload API (create repo, validate YAML, preupload, commit), for push tests.

It records every request and the files of each commit (decoded from the NDJSON commit payload), so a test
checks what the library sent. `fail_commits=True` refuses commits with HTTP 422 (a 5xx would be retried by huggingface_hub, about 23 s of backoff, before the same failure).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalHub:
    def __init__(self, fail_commits: bool = False) -> None:
        self.fail_commits = fail_commits
        self.requests: list[dict] = []
        self.commits: list[dict] = []  # {"repo": ..., "files": {path: bytes}, "summary": ...}
        self.created: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append(
                    {
                        "method": "GET",
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                hub.requests.append(
                    {
                        "method": "POST",
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    hub.created.append(payload)
                    repo = (
                        f"{payload['organization']}/{payload['name']}"
                        if payload.get("organization")
                        else payload["name"]
                    )
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._reply(200, {})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})  # fmt: skip
                if "/commit/" in path:
                    if hub.fail_commits:
                        return self._reply(422, {"error": "the local hub refuses commits"})
                    repo = path.split("/api/models/")[1].split("/commit/")[0]
                    files, summary = {}, None
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            summary = item["value"].get("summary")
                        elif item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    hub.commits.append({"repo": repo, "files": files, "summary": summary})
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'0' * 40}",
                                             "commitOid": "0" * 40, "pullRequestUrl": None})  # fmt: skip
                return self._reply(404, {"error": f"unexpected {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
