"""The one etcd client of the project: etcd3gw (etcd's v3 JSON gateway over HTTP(S)) with
failover across members, a deadline on every call, and errors in CNI terms.

Why etcd3gw and not python-etcd3: docs/cluster-state.md ("The client").

- **Deadlines.** Every call runs under a budget (`EtcdConfig.timeout`, default 1.5 s, or the
  enclosing `Client.budget()`): without quorum etcd's gateway holds an HTTP put open for
  seconds, so a call without a deadline would hang the CNI ADD. When the budget is spent the
  call raises `Unavailable` (CNI code 11, "try again later").
- **Failover.** Members are tried in turn, starting with the last one that answered. An
  attempt gets half of what is left (the last member all of it), so one hung member does not
  eat the whole budget. A refused connection moves on at once.
- **Writes are retried** on the next member after a timeout, so a write may be applied twice:
  every write this project makes is a transaction guarded by a compare (create-revision 0,
  mod-revision, value), which a second application fails harmlessly; callers re-read then.
- **Threads.** A `Client` is used by one thread at a time (the agent makes one per call);
  `KeepAlive` and `Watch` run their own.
"""
from __future__ import annotations

import base64
import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar
from urllib.parse import urlsplit

from ..protocol import spec
from ..protocol.spec import CNIError

T = TypeVar("T")

DEFAULT_TIMEOUT = 1.5          # s, the whole operation (ADD has to fail within 2 s without quorum)
DEFAULT_CONNECT_TIMEOUT = 0.3  # s, TCP + TLS handshake to one member
DEFAULT_PREFIX = "/cnikit"


class EtcdError(CNIError):
    """etcd answered with an error (bad request, lease not found, ...): not worth retrying."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(spec.ERR_INTERNAL, msg, details)


class Unavailable(CNIError):
    """No member answered within the deadline (no quorum, all down, partitioned): CNI code 11."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(spec.ERR_TRY_AGAIN, msg, details)


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(text: Optional[str]) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """The range end covering every key that starts with `prefix` (etcd's WithPrefix)."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0

    def json(self) -> Any:
        return json.loads(self.value)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> "KV":
        return cls(key=_unb64(item.get("key")).decode("utf-8", "surrogateescape"),
                   value=_unb64(item.get("value")),
                   create_revision=int(item.get("create_revision", 0)),
                   mod_revision=int(item.get("mod_revision", 0)), lease=int(item.get("lease", 0)))


@dataclass(frozen=True)
class Event:
    type: str  # "PUT" | "DELETE"
    kv: KV


@dataclass(frozen=True)
class EtcdConfig:
    """Where the cluster is and how to reach it (CNI config `ipam.etcd`, role variables)."""

    endpoints: Tuple[str, ...]
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_dict(cls, raw: Any, what: str = "etcd") -> "EtcdConfig":
        """`{"endpoints": [...], "caFile", "certFile", "keyFile", "timeout", "prefix"}`; errors
        are CNI code 7 (invalid config) naming the key."""
        def bad(msg: str) -> CNIError:
            return CNIError(spec.ERR_INVALID_CONFIG, f"{what}: {msg}")

        if not isinstance(raw, dict):
            raise bad("must be an object with 'endpoints'")
        eps = raw.get("endpoints")
        if isinstance(eps, str):
            eps = [e for e in eps.split(",") if e]
        if not isinstance(eps, list) or not eps or not all(isinstance(e, str) for e in eps):
            raise bad("'endpoints' must be a non-empty list of URLs like https://10.0.0.1:2379")
        for ep in eps:
            parts = urlsplit(ep)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise bad(f"endpoint {ep!r} is not http(s)://HOST:PORT")
        strs = {}
        for key in ("caFile", "certFile", "keyFile", "prefix"):
            val = raw.get(key, "")
            if not isinstance(val, str):
                raise bad(f"'{key}' must be a string")
            strs[key] = val
        if bool(strs["certFile"]) != bool(strs["keyFile"]):
            raise bad("'certFile' and 'keyFile' go together")
        timeout = raw.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise bad("'timeout' must be a number of seconds in (0, 60]")
        prefix = strs["prefix"] or DEFAULT_PREFIX
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise bad("'prefix' must start with / and not end with /")
        return cls(endpoints=tuple(e.rstrip("/") for e in eps), ca_file=strs["caFile"],
                   cert_file=strs["certFile"], key_file=strs["keyFile"], timeout=float(timeout),
                   connect_timeout=min(DEFAULT_CONNECT_TIMEOUT, float(timeout)), prefix=prefix)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"endpoints": list(self.endpoints), "timeout": self.timeout, "prefix": self.prefix}
        for key, val in (("caFile", self.ca_file), ("certFile", self.cert_file), ("keyFile", self.key_file)):
            if val:
                out[key] = val
        return out


# --- transactions: compares and operations as the gateway's JSON ------------------------------

def cmp_absent(key: str) -> Dict[str, Any]:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def cmp_mod_revision(key: str, revision: int) -> Dict[str, Any]:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def cmp_value(key: str, value: bytes | str) -> Dict[str, Any]:
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def op_put(key: str, value: bytes | str, lease: int = 0) -> Dict[str, Any]:
    req: Dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def op_delete(key: str) -> Dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def op_get(key: str) -> Dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


def op_get_prefix(prefix: str, keys_only: bool = False) -> Dict[str, Any]:
    req: Dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
    if keys_only:
        req["keys_only"] = True
    return {"request_range": req}


@dataclass
class TxnResult:
    succeeded: bool
    revision: int
    responses: List[Dict[str, Any]] = field(default_factory=list)

    def kvs(self, index: int) -> List[KV]:
        """The key-values of the `index`-th operation when it was a get."""
        rng = self.responses[index].get("response_range") or {}
        return [KV.from_api(item) for item in rng.get("kvs", [])]


class Client:
    """A connection to one etcd cluster (see the module doc for deadlines and failover)."""

    def __init__(self, conf: EtcdConfig) -> None:
        try:
            import etcd3gw  # noqa: PLC0415 - only callers that talk to etcd pay for requests
            import requests  # noqa: PLC0415
            from etcd3gw import exceptions  # noqa: PLC0415
        except ImportError as exc:  # a node whose release was packed without etcd3gw (docs/rollout.md)
            raise CNIError(spec.ERR_INTERNAL, "the etcd client etcd3gw is not importable",
                           f"{exc} (Python {sys.version.split()[0]} at {sys.executable}): cnikit releases carry "
                           "etcd3gw when the controller that packed them has it installed (requirements.txt) or "
                           "its wheels are in cni_plugins_wheel_dir; it needs Python >= 3.11 on the node") from exc

        self.conf = conf
        self._exc = exceptions
        self._members: List[Any] = []
        for ep in conf.endpoints:
            parts = urlsplit(ep)
            session = requests.Session()
            # No proxies or CA bundles from the environment (REQUESTS_CA_BUNDLE would replace
            # the cluster's CA): the cluster's own CA and client certificate only.
            session.trust_env = False
            if conf.ca_file:
                session.verify = conf.ca_file
            if conf.cert_file:
                session.cert = (conf.cert_file, conf.key_file)
            cli = etcd3gw.client(host=parts.hostname or "", port=parts.port or 2379, protocol=parts.scheme,
                                 api_path="/v3/", session=session)
            self._members.append(cli)
        self._preferred = 0
        self._deadline: Optional[float] = None

    def close(self) -> None:
        for cli in self._members:
            cli.session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def budget(self, seconds: Optional[float] = None) -> Iterator[None]:
        """Run several calls under one deadline (e.g. a whole IPAM ADD); nested budgets keep the
        outer (earlier) deadline."""
        outer = self._deadline
        mine = time.monotonic() + (self.conf.timeout if seconds is None else seconds)
        self._deadline = mine if outer is None else min(outer, mine)
        try:
            yield
        finally:
            self._deadline = outer

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self.conf.timeout
        errors: Dict[str, str] = {}
        n = len(self._members)
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0.02:
                break
            if attempt and attempt % n == 0:
                time.sleep(min(0.05, left / 4))  # every member failed fast: an election may be on
                left = deadline - time.monotonic()
            idx = (self._preferred + attempt) % n
            attempt += 1
            # half of what is left, so one hung member leaves time for the others
            read = max(left / 2, min(left, 0.25)) if n > 1 else left
            cli = self._members[idx]
            cli.timeout = (min(self.conf.connect_timeout, read), read)
            try:
                out = fn(cli)
            except (self._exc.ConnectionFailedError, self._exc.ConnectionTimeoutError) as exc:
                errors[self.conf.endpoints[idx]] = _short(exc)
                continue
            except self._exc.Etcd3Exception as exc:
                detail = _short(exc)
                if "timed out" in detail or "leader" in detail or "timeout" in detail:
                    errors[self.conf.endpoints[idx]] = detail  # etcd's own "try again"
                    continue
                raise EtcdError(f"etcd {what} failed", detail) from None
            self._preferred = idx
            return out
        raise Unavailable(f"etcd cluster unavailable ({what})",
                          "; ".join(f"{ep}: {err}" for ep, err in errors.items()) or "deadline reached")

    def _post(self, what: str, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        return self._call(what, lambda cli: cli.post(cli.get_url(path), json=body))

    # --- key-value ------------------------------------------------------------------------

    def get(self, key: str) -> Optional[KV]:
        resp = self._post("get", "/kv/range", {"key": _b64(key)})
        kvs = resp.get("kvs") or []
        return KV.from_api(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str, serializable: bool = False, keys_only: bool = False) -> Tuple[List[KV], int]:
        """Every key under `prefix` (sorted by key) and the store revision they were read at;
        `keys_only` leaves the values out (a fraction of the bytes to move and decode)."""
        body: Dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                "sort_order": "ASCEND", "sort_target": "KEY"}
        if serializable:
            body["serializable"] = True
        if keys_only:
            body["keys_only"] = True
        resp = self._post("range", "/kv/range", body)
        return [KV.from_api(item) for item in resp.get("kvs") or []], int(resp["header"]["revision"])

    def count_prefix(self, prefix: str) -> int:
        resp = self._post("count", "/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                                  "count_only": True})
        return int(resp.get("count", 0))

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        body: Dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._post("put", "/kv/put", body)["header"]["revision"])

    def delete(self, key: str, prefix: bool = False) -> int:
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return int(self._post("delete", "/kv/deleterange", body).get("deleted", 0))

    def txn(self, compare: Sequence[Dict[str, Any]], success: Sequence[Dict[str, Any]],
            failure: Sequence[Dict[str, Any]] = ()) -> TxnResult:
        resp = self._post("transaction", "/kv/txn",
                          {"compare": list(compare), "success": list(success), "failure": list(failure)})
        return TxnResult(bool(resp.get("succeeded", False)), int(resp["header"]["revision"]),
                         list(resp.get("responses") or []))

    # --- leases ---------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self._post("lease grant", "/lease/grant", {"TTL": int(ttl), "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease once; its new TTL, or -1 when it has expired (it is gone then)."""
        resp = self._post("lease keepalive", "/lease/keepalive", {"ID": str(lease)})
        return int((resp.get("result") or {}).get("TTL", -1))

    def time_to_live(self, lease: int) -> int:
        """Seconds left on a lease; -1 when it does not exist."""
        resp = self._post("lease ttl", "/kv/lease/timetolive", {"ID": str(lease)})
        return int(resp.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        try:
            self._post("lease revoke", "/kv/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # --- cluster --------------------------------------------------------------------------

    def health(self) -> Dict[str, bool]:
        """`GET /health` of every member (true when it has a leader and answers)."""
        out = {}
        for ep, cli in zip(self.conf.endpoints, self._members):
            try:
                resp = cli.session.get(ep + "/health", timeout=(self.conf.connect_timeout, self.conf.timeout))
                out[ep] = resp.status_code == 200 and resp.json().get("health") in (True, "true")
            except Exception:  # noqa: BLE001 - any failure means not healthy
                out[ep] = False
        return out

    def watch(self, prefix: str, start_revision: int) -> "Watch":
        return Watch(self, prefix, start_revision)


def _short(exc: BaseException) -> str:
    detail = getattr(exc, "detail_text", None) or str(exc) or type(exc).__name__
    try:
        parsed = json.loads(detail)
        detail = parsed.get("error") or parsed.get("message") or detail
    except (ValueError, AttributeError):
        pass
    return " ".join(str(detail).split())[:300]


class Watch:
    """Events under a prefix from `start_revision` on, read by a thread from the gateway's
    streaming `/v3/watch` (one member; etcd3gw's own Watcher has no timeouts, so the stream is
    opened here through the same session, with a connect timeout). `next(timeout)` returns a batch of events,
    [] on timeout; it raises `Unavailable` once the stream broke — the caller then re-lists
    (`get_prefix`) and watches again from the revision it read: list + watch never misses a change."""

    def __init__(self, client: Client, prefix: str, start_revision: int) -> None:
        import queue  # noqa: PLC0415

        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._stopped = threading.Event()
        self._resp: Any = None
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision)}}

        def open_stream(cli: Any) -> Any:
            resp = cli.session.post(cli.get_url("/watch"), json=body, stream=True,
                                    timeout=(client.conf.connect_timeout, None))
            if resp.status_code != 200:
                raise client._exc.ConnectionFailedError(resp.text)
            return resp

        def wrap(cli: Any) -> Any:
            import requests  # noqa: PLC0415

            try:
                return open_stream(cli)
            except requests.exceptions.RequestException as exc:
                raise client._exc.ConnectionFailedError(str(exc)) from None

        self._resp = client._call("watch", wrap)
        self._thread = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._resp.iter_lines():
                if not line.strip():
                    continue
                result = json.loads(line).get("result") or {}
                if result.get("canceled") or result.get("compact_revision"):
                    raise RuntimeError(result.get("cancel_reason") or "watch compacted")
                events = [Event(ev.get("type", "PUT"), KV.from_api(ev["kv"])) for ev in result.get("events") or []]
                if events:
                    self._queue.put(events)
        except Exception as exc:  # noqa: BLE001 - reported to the consumer below
            if not self._stopped.is_set():
                self._queue.put(exc)
            return
        if not self._stopped.is_set():
            self._queue.put(RuntimeError("watch stream closed"))

    def next(self, timeout: float) -> List[Event]:
        import queue  # noqa: PLC0415

        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, BaseException):
            raise Unavailable("etcd watch broke", _short(item))
        return list(item)

    def cancel(self) -> None:
        import socket  # noqa: PLC0415

        self._stopped.set()
        # Closing the response would wait for the reader; shutting the socket down ends its read
        # (etcd3gw's Watcher.stop does the same).
        with contextlib.suppress(Exception):
            sock = socket.fromfd(self._resp.raw._fp.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=2)
        with contextlib.suppress(Exception):
            self._resp.close()


class KeepAlive:
    """Refreshes a lease every ttl/3 seconds in a daemon thread until `stop()`. A failed refresh
    is retried on the next tick (the lease survives while any refresh lands within its TTL);
    `on_lost` is called once if etcd says the lease has expired."""

    def __init__(self, conf: EtcdConfig, lease: int, ttl: int,
                 on_lost: Optional[Callable[[], None]] = None) -> None:
        self.lease, self.ttl = lease, ttl
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._on_lost = on_lost
        self._client = Client(conf)
        self.refreshed = 0
        self._thread = threading.Thread(target=self._run, name=f"etcd-keepalive-{lease:x}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = max(self.ttl / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                ttl = self._client.keepalive(self.lease)
            except CNIError:
                continue
            if ttl < 0:
                self.lost.set()
                if self._on_lost:
                    self._on_lost()
                return
            self.refreshed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()
