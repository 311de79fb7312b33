"""A small HTTP front over chdb (ClickHouse 26.x in-process) for the tests.

It speaks the part of ClickHouse's HTTP interface that chtail uses:
- the query in the `query` URL parameter, in the body, or both (then the
  body follows the query);
- `default_format` and `database` parameters; every other parameter that is
  not a known HTTP option is a query setting;
- `INSERT ... FORMAT RowBinary` (or RowBinaryWithDefaults, or Native) with the rows in the body, chunked or not,
  LZ4-compressed in ClickHouse's block format when `decompress=1`;
- credentials in `X-ClickHouse-User`/`X-ClickHouse-Key` or `user`/`password`;
- errors as HTTP 4xx/5xx with `Code: N. DB::Exception: ...` in the body and
  the `X-ClickHouse-Exception-Code` header.

An INSERT whose body does not arrive whole (the client died mid-request)
inserts nothing, as with ClickHouse itself.

usage: chdb_front.py DATA_DIR PORT [PASSWORD [TLS_PORT CERT KEY]]
Listens on 127.0.0.1:PORT, and with TLS_PORT also serves HTTPS there with
the given certificate chain and key. With CHDB_FRONT_LOG=FILE, each insert appends a
line to FILE: its deduplication token, body bytes, and the table's row count
before and after (equal counts: the server dropped it as a duplicate).
Every insert's settings, as the client sent them, are appended to
DATA_DIR/../insert_settings, one line each (`k=v k=v`, sorted).
"""
import os
import re
import struct
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import lz4.block
from chdb import session

DATA_DIR, PORT = sys.argv[1], int(sys.argv[2])
PASSWORD = sys.argv[3] if len(sys.argv) > 3 else ""
SESSION = session.Session(DATA_DIR)
LOCK = threading.Lock()
HTTP_OPTIONS = {
    "query", "database", "default_format", "decompress", "compress", "user",
    "password", "query_id", "session_id", "wait_end_of_query", "role",
}
INSERT_ROWBINARY = re.compile(
    r"^\s*INSERT\s+INTO\s+(\S+)\s*\((.*?)\)\s*FORMAT\s+(RowBinary|RowBinaryWithDefaults|Native)\s*$",
    re.S | re.I,
)


class Aborted(Exception):
    """The client closed the connection before its request was complete."""


class ClickHouseError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def run(sql, fmt="TabSeparated"):
    with LOCK:
        try:
            result = SESSION.query(sql, fmt)
        except Exception as e:  # chdb raises with ClickHouse's own text
            text = str(e)
            m = re.search(r"Code: (\d+)", text)
            raise ClickHouseError(int(m.group(1)) if m else 1000, text)
    if result is None:
        return b""
    if result.has_error():
        text = result.error_message()
        m = re.search(r"Code: (\d+)", text)
        raise ClickHouseError(int(m.group(1)) if m else 1000, text)
    return result.bytes()


def decompress(data):
    """ClickHouse's compressed blocks: checksum(16) method(1) size(4) raw(4) payload."""
    out = bytearray()
    at = 0
    while at < len(data):
        method = data[at + 16]
        compressed, raw = struct.unpack_from("<II", data, at + 17)
        payload = bytes(data[at + 25 : at + 16 + compressed])
        if method == 0x82:
            out += lz4.block.decompress(payload, uncompressed_size=raw)
        elif method == 0x02:
            out += payload
        else:
            raise ClickHouseError(271, f"Code: 271. DB::Exception: unknown compression method {method:#x}")
        at += 16 + compressed
    return bytes(out)


def setting_value(v):
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        """The whole request body, or Aborted if the client went away first:
        like ClickHouse, an INSERT whose body did not arrive whole inserts
        nothing."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                line = self.rfile.readline()
                if not line.endswith(b"\n"):
                    raise Aborted()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline()
                        if not trailer.endswith(b"\n"):
                            raise Aborted()
                        if trailer in (b"\r\n", b"\n"):
                            return bytes(body)
                data = self.rfile.read(size)
                if len(data) != size or not self.rfile.readline().endswith(b"\n"):
                    raise Aborted()
                body += data
        n = int(self.headers.get("Content-Length", "0") or 0)
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise Aborted()
        return data

    def reply(self, status, body, code=None):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        if code is not None:
            self.send_header("X-ClickHouse-Exception-Code", str(code))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if urlparse(self.path).path == "/ping":
            return self.reply(200, b"Ok.\n")
        self.do_POST()

    def do_POST(self):
        params = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
        try:
            body = self.read_body()
        except Aborted:
            self.close_connection = True
            return
        try:
            self.check_auth(params)
            if params.get("decompress") == "1" and body:
                body = decompress(body)
            out = self.execute(params, body)
            self.reply(200, out)
        except ClickHouseError as e:
            status = 404 if e.code in (60, 81) else 403 if e.code == 516 else 400 if e.code == 62 else 500
            text = str(e)
            if not text.startswith("Code:"):
                text = f"Code: {e.code}. DB::Exception: {text}"
            self.reply(status, (text + "\n").encode(), e.code)

    def check_auth(self, params):
        given = self.headers.get("X-ClickHouse-Key", params.get("password", ""))
        if PASSWORD and given != PASSWORD:
            raise ClickHouseError(516, "Code: 516. DB::Exception: default: Authentication failed: password is incorrect. (AUTHENTICATION_FAILED)")

    def execute(self, params, body):
        sql = params.get("query", "")
        settings = {k: v for k, v in params.items() if k not in HTTP_OPTIONS}
        fmt = params.get("default_format", "TabSeparated")
        m = INSERT_ROWBINARY.match(sql)
        if m:
            return self.insert(m.group(1), m.group(2), body, settings, m.group(3))
        sql = (sql + "\n" + body.decode()) if sql else body.decode()
        sql = sql.strip().rstrip(";")
        fm = re.search(r"\bFORMAT\s+(\w+)\s*$", sql, re.I)
        if fm:
            fmt = fm.group(1)
            sql = sql[: fm.start()]
        return run(sql, fmt)

    def insert(self, table, columns, body, settings, fmt="RowBinary"):
        # A test can make the server refuse rows as bad data: any insert
        # whose body holds a marker listed in DATA_DIR/../reject.
        reject = os.path.join(os.path.dirname(DATA_DIR.rstrip("/")), "reject")
        if os.path.exists(reject):
            for marker in open(reject, "rb").read().split():
                if marker in body:
                    raise ClickHouseError(27, "Code: 27. DB::Exception: Cannot parse input: expected a valid row, got a rejected one. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)")
        cols = [c.strip().strip("`") for c in columns.split(",")]
        described = run(f"DESCRIBE TABLE {table}").decode().splitlines()
        types = {}
        for line in described:
            f = line.split("\t")
            types[f[0]] = f[1]
        missing = [c for c in cols if c not in types]
        if missing:
            raise ClickHouseError(16, f"Code: 16. DB::Exception: No such column {missing[0]} in table {table}")
        structure = ", ".join(f"`{c}` {types[c]}" for c in cols)
        with tempfile.NamedTemporaryFile(dir=DATA_DIR, suffix=".bin", delete=False) as f:
            f.write(body)
            path = f.name
        logging = os.environ.get("CHDB_FRONT_LOG")
        seen = os.path.join(os.path.dirname(DATA_DIR.rstrip("/")), "insert_settings")
        with open(seen, "a") as f:
            f.write(" ".join(f"{k}={v}" for k, v in sorted(settings.items())) + "\n")
        try:
            rows_before = run(f"SELECT count() FROM {table}").strip() if logging else b"-"
            clause = ""
            if settings:
                clause = " SETTINGS " + ", ".join(f"{k} = {setting_value(v)}" for k, v in settings.items())
            col_list = ", ".join(f"`{c}`" for c in cols)
            if fmt.lower() == "rowbinarywithdefaults":
                # Read as an input format, so the table's DEFAULT
                # expressions fill the values marked "default".
                run(
                    f"INSERT INTO {table} ({col_list}) FROM INFILE '{path}'"
                    f"{clause} FORMAT RowBinaryWithDefaults"
                )
            elif fmt.lower() == "native":
                # Native blocks name their columns and types themselves.
                run(
                    f"INSERT INTO {table} ({col_list}){clause} "
                    f"SELECT {col_list} FROM file('{path}', 'Native')"
                )
            else:
                run(
                    f"INSERT INTO {table} ({col_list}){clause} "
                    f"SELECT * FROM file('{path}', 'RowBinary', {setting_value(structure)})"
                )
            if logging:
                rows_after = run(f"SELECT count() FROM {table}").strip()
                with open(os.environ["CHDB_FRONT_LOG"], "a") as log:
                    log.write(f"{settings.get('insert_deduplication_token', '-')} {len(body)} {rows_before.decode()} {rows_after.decode()}\n")
        finally:
            os.unlink(path)
        return b""


ThreadingHTTPServer.allow_reuse_address = True
if len(sys.argv) > 6:
    import ssl

    tls_port, cert, key = int(sys.argv[4]), sys.argv[5], sys.argv[6]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure = ThreadingHTTPServer(("127.0.0.1", tls_port), Handler)
    secure.daemon_threads = True
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    threading.Thread(target=secure.serve_forever, daemon=True).start()
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
server.serve_forever()
