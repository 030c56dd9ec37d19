"""Servers on this machine's loopback (127.0.0.1, a free port). `ChatServer`: an OpenAI-compatible
chat-completions endpoint for the judge tests: every POST's path, headers and JSON body go to `respond`, whose
(HTTP status, body text) is sent back; `chat_reply` is the body of a successful completion. `HubServer`
(ctxaware.loopback): a stand-in of the Hugging Face hub."""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ctxaware.loopback import HubServer, git_blob_id  # noqa: F401 (the tests' import)


def chat_reply(content: str) -> str:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})


class ChatServer:
    def __init__(self, respond: Callable[[str, dict, dict], tuple[int, str]]):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code, text = respond(self.path, dict(self.headers), body)
                data = text.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) and closed the connection
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
