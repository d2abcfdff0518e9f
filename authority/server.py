"""HTTP front for the local authority: Fulcio v2, Rekor v1 (and v2), an RFC 3161 TSA and OIDC
discovery on one port."""

from __future__ import annotations

import base64
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from authority import ca, oidc, rekor, rekor_v2, tsa
from authority.state import TSA_PATH, AuthorityState, write_trust_files

MAX_REQUEST_BYTES = 8 * 1024 * 1024


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class AuthorityServer(ThreadingHTTPServer):
    """Serves one initialised authority directory; `url` is where it answers."""

    daemon_threads = True

    def __init__(self, state: AuthorityState, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.state = state
        self.log = rekor.TransparencyLog(state)
        self.log_v2 = rekor_v2.TileLog(state) if state.rekor_version == 2 else None
        self.url = f"http://{host}:{self.server_address[1]}"
        write_trust_files(state, self.url)

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="authority", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: AuthorityServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: HTTPStatus, doc: dict | list) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_REQUEST_BYTES:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "request needs a body of at most 8 MiB")
        return self.rfile.read(length)

    def _body(self) -> dict:
        raw = self._raw_body()
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return doc

    def _dispatch(self, routes: dict[str, object]) -> None:
        path = urlparse(self.path).path
        try:
            for pattern, handler in routes.items():
                match = re.fullmatch(pattern, path)
                if match:
                    status, doc = handler(*match.groups())  # type: ignore[operator]
                    self._send(status, doc)
                    return
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
        except _HTTPError as exc:
            self._send(exc.status, {"code": exc.status.value, "message": str(exc)})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        state, log = self.server.state, self.server.log
        self._dispatch(
            {
                r"/\.well-known/openid-configuration": lambda: (
                    HTTPStatus.OK,
                    oidc.discovery_document(state, self.server.url),
                ),
                r"/\.well-known/jwks\.json": lambda: (HTTPStatus.OK, oidc.jwks(state)),
                r"/api/v1/log": lambda: (HTTPStatus.OK, log.info()),
                r"/api/v1/log/entries/([0-9a-fA-F]{64,80})": self._entry_by_uuid,
                r"/api/v1/log/entries": self._entry_by_index,
            }
        )

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if urlparse(self.path).path == TSA_PATH:
            self._timestamp()
            return
        self._dispatch(
            {
                r"/api/v2/signingCert": self._signing_cert,
                r"/api/v1/log/entries": self._create_entry,
                r"/api/v2/log/entries": self._create_entry_v2,
            }
        )

    def _timestamp(self) -> None:
        """RFC 3161 over HTTP: DER TimeStampReq in, DER TimeStampResp out (rejections too)."""
        status, reply = HTTPStatus.OK, b""
        try:
            reply = tsa.timestamp(self.server.state, self._raw_body())
        except _HTTPError as exc:
            status, reply = exc.status, tsa.rejection(str(exc))
        except tsa.TimestampRequestError as exc:
            status, reply = HTTPStatus.BAD_REQUEST, tsa.rejection(str(exc))
        self.send_response(status)
        self.send_header("Content-Type", tsa.REPLY_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def _entry_by_uuid(self, uuid: str) -> tuple[HTTPStatus, dict]:
        found = self.server.log.by_uuid(uuid)
        if found is None:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no entry with UUID {uuid}")
        return HTTPStatus.OK, found

    def _entry_by_index(self) -> tuple[HTTPStatus, dict]:
        query = parse_qs(urlparse(self.path).query)
        try:
            index = int(query["logIndex"][0])
        except (KeyError, ValueError):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "pass ?logIndex=N") from None
        found = self.server.log.by_index(index)
        if found is None:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no entry at log index {index}")
        return HTTPStatus.OK, found

    def _signing_cert(self) -> tuple[HTTPStatus, dict]:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise _HTTPError(HTTPStatus.UNAUTHORIZED, "missing 'Authorization: Bearer <identity token>'")
        try:
            claims = oidc.validate_token(self.server.state, auth[len("Bearer ") :])
        except oidc.TokenError as exc:
            raise _HTTPError(HTTPStatus.UNAUTHORIZED, str(exc)) from None
        body = self._body()
        csr_b64 = body.get("certificateSigningRequest")
        if not isinstance(csr_b64, str):
            raise _HTTPError(
                HTTPStatus.BAD_REQUEST, "only certificateSigningRequest requests are supported"
            )
        try:
            csr_pem = base64.b64decode(csr_b64, validate=True)
            chain = ca.issue_certificate(self.server.state, csr_pem, claims)
        except (ValueError, ca.CertificateRequestError) as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        return HTTPStatus.CREATED, {
            "signedCertificateEmbeddedSct": {"chain": {"certificates": chain}}
        }

    def _create_entry(self) -> tuple[HTTPStatus, dict]:
        try:
            return HTTPStatus.CREATED, self.server.log.append(self._body())
        except rekor.EntryError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, str(exc)) from None

    def _create_entry_v2(self) -> tuple[HTTPStatus, dict]:
        if self.server.log_v2 is None:
            raise _HTTPError(
                HTTPStatus.NOT_FOUND, "this authority runs Rekor v1 only: init it with --rekor-version 2"
            )
        try:
            return HTTPStatus.CREATED, self.server.log_v2.append(self._body())
        except rekor.EntryError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, str(exc)) from None
