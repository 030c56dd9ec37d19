"""Stand-ins of the services a cluster run talks to, on this machine's loopback (127.0.0.1, a free port): the Hugging
Face hub (`HubServer`, for `HF_ENDPOINT`) and an OpenAI-compatible judge (`JudgeServer`, for the `openai` judge
backend's `base_url`). Standard library only. Used by `python -m ctxaware.paper_test` (README: Before a cluster run)
and by the tests."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_id(data: bytes) -> str:
    """A file's git object id, the ETag the hub sends for a file outside LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """A stand-in of the Hugging Face hub on loopback, for `HF_ENDPOINT`: just the endpoints huggingface_hub's
    `snapshot_download` calls (huggingface_hub 2.x: `HfApi.repo_info` at a revision, `list_repo_tree` at its
    commit, then a HEAD and a GET of `resolve/<commit>/<file>` per file), over repositories held in memory.

    `repos` maps (repo_type, repo_id) to {branch: {path in repo: bytes}}; each branch is one commit, whose hash
    also resolves. Errors carry the `X-Error-Code` that huggingface_hub turns into RepositoryNotFoundError,
    RevisionNotFoundError or EntryNotFoundError. `downloads` lists (repo_id, path) of every file sent."""

    API = re.compile(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+)|/tree/([^/]+)(/.*)?)?")
    RESOLVE = re.compile(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")

    def __init__(self, repos: dict[tuple[str, str], dict[str, dict[str, bytes]]]):
        # (repo_type, repo_id) -> {branch or commit hash: (commit hash, files)}
        self.revisions = {}
        for key, branches in repos.items():
            self.revisions[key] = {}
            for branch, files in branches.items():
                listing = "".join(f"{path}:{git_blob_id(data)}\n" for path, data in sorted(files.items()))
                # a branch named by a commit hash is that commit (a pinned revision caches under its own name)
                pinned = re.fullmatch(r"[0-9a-f]{40}", branch)
                commit = branch if pinned else hashlib.sha1(f"{key}{branch}{listing}".encode()).hexdigest()
                self.revisions[key][branch] = self.revisions[key][commit] = (commit, files)
        self.downloads: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.answer(self, send_body=True)

            def do_HEAD(self):
                hub.answer(self, send_body=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def answer(self, request: BaseHTTPRequestHandler, send_body: bool) -> None:
        # matched before unquoting: a revision such as refs/convert/parquet comes as one quoted path segment
        path = urlsplit(request.path).path
        api, resolve = self.API.fullmatch(path), self.RESOLVE.fullmatch(path)
        if api:
            kind, repo_id, info_revision, tree_revision, folder = (unquote(g) if g else g for g in api.groups())
            repo_type = kind[:-1]
            (commit, files), error = self._find(repo_type, repo_id, info_revision or tree_revision or "main")
            if error:
                return self._send(request, *error, send_body=send_body)
            if tree_revision is not None:
                recursive = parse_qs(urlsplit(request.path).query).get("recursive", [""])[0].lower() == "true"
                body = self._tree(files, (folder or "").strip("/"), recursive)
                if body is None:
                    return self._send(request, 404, b"no such folder", {"X-Error-Code": "EntryNotFound"}, send_body)
            else:
                body = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": p} for p in files]}
            return self._send(request, 200, json.dumps(body).encode(), send_body=send_body)
        if resolve:
            kind, repo_id, revision, file = (unquote(g) if g else g for g in resolve.groups())
            (commit, files), error = self._find("dataset" if kind else "model", repo_id, revision)
            if error:
                return self._send(request, *error, send_body=send_body)
            if file not in files:
                return self._send(request, 404, b"no such file", {"X-Error-Code": "EntryNotFound"}, send_body)
            if send_body:
                self.downloads.append((repo_id, file))
            headers = {"ETag": f'"{git_blob_id(files[file])}"', "X-Repo-Commit": commit}
            return self._send(request, 200, files[file], headers, send_body)
        self._send(request, 404, b"not a hub endpoint", send_body=send_body)

    @staticmethod
    def _tree(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict] | None:
        """The hub's tree listing of a folder ("" the root): its files and folders, or everything below it when
        recursive; None when no file lies below it."""
        entries: dict[str, dict] = {}
        for path, data in sorted(files.items()):
            if folder and not path.startswith(folder + "/"):
                continue
            parts = path[len(folder) + 1 if folder else 0 :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(min(depth, len(parts) - 1)):  # the folders on the way
                sub = "/".join(filter(None, [folder, *parts[: i + 1]]))
                entries.setdefault(sub, {"type": "directory", "oid": git_blob_id(sub.encode()), "size": 0, "path": sub})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
        return list(entries.values()) if entries or not folder else None

    def _find(self, repo_type: str, repo_id: str, revision: str):
        """((commit, files), None) of a repository at a revision, or ((None, None), the hub's error as (status,
        body, headers))."""
        if (repo_type, repo_id) not in self.revisions:
            return (None, None), (404, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
        found = self.revisions[repo_type, repo_id].get(revision)
        if found is None:
            return (None, None), (404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"})
        return found, None

    @staticmethod
    def _send(request, status: int, body: bytes, headers: dict | None = None, send_body: bool = True) -> None:
        try:
            request.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                request.send_header(name, value)
            request.end_headers()
            if send_body:
                request.wfile.write(body)
        except OSError:  # the client closed the connection
            pass

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class ChatServer:
    """An OpenAI-compatible chat-completions endpoint: every POST's path, headers and JSON body go to `respond`,
    whose (HTTP status, body text) is sent back."""

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


class JudgeServer(ChatServer):
    """A ChatServer standing in for the MT-Bench judge: it answers every request with a rating in FastChat's `[[k]]`
    form, k from 1 to 10 derived from a hash of the request's messages (the same prompt, the same rating), and
    keeps every request's path, JSON body and Authorization header in `requests`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(self.judge)

    def judge(self, path: str, headers: dict, body: dict) -> tuple[int, str]:
        with self.lock:
            self.requests.append({"path": path, "authorization": headers.get("Authorization"), "body": body})
        digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
        message = {"role": "assistant", "content": f"A stand-in judgement. Rating: [[{1 + digest[0] % 10}]]"}
        reply = {
            "id": f"judge-{digest.hex()[:12]}", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }  # fmt: skip
        return 200, json.dumps(reply)
