"""dhcp IPAM: a DHCPv4 client in the engine (no daemon, no Go net/rpc protocol).

ADD enters the container netns, brings CNI_IFNAME up if needed and runs DISCOVER/OFFER/REQUEST/ACK
on it over an AF_PACKET socket (as Go's dhcp4client does: no address or route is needed yet),
with client-ID `<cid>/<net>/<ifname>` (type 0, truncated to 254 bytes, like Go v1.1.1). The
result is Go's: the address with the lease's subnet mask, the router as gateway, option 121
routes if present, else option 33 routes plus a default route via the router.

The lease is recorded in /run/cni/dhcp/<net>/<cid>:<ifname>.json so that DEL can send a RELEASE
(a missing lease, netns or interface is fine: DEL is best-effort) and `cnikit dhcp-renew` can renew
it (the role of Go's daemon; see docs/ipam.md).

Config: `ipam.request` [{option, skipDefault}], `ipam.provide` [{option, value | fromArg}] as in
Go; `ipam.timeout` (seconds, default 10) is ours.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import struct
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ..net import link, ns, rtnl
from ..protocol import fsutil, skel, spec
from ..protocol.plugin import Plugin
from ..protocol.spec import CNIError

ERR = spec.ERR_INTERNAL
LEASE_DIR = "/run/cni/dhcp"
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_RUNNING = 0x40
CARRIER_WAIT = 1.0
MAGIC = b"\x63\x82\x53\x63"
CLIENT_PORT, SERVER_PORT = 68, 67
DISCOVER, OFFER, REQUEST, ACK, NAK, RELEASE = 1, 2, 3, 5, 6, 7
OPT_MASK, OPT_ROUTER, OPT_STATIC_ROUTES, OPT_REQUESTED_IP, OPT_LEASE_TIME = 1, 3, 33, 50, 51
OPT_MSG_TYPE, OPT_SERVER_ID, OPT_PARAMS, OPT_CLIENT_ID, OPT_CLASSLESS = 53, 54, 55, 61, 121
OPT_RENEWAL_TIME, OPT_REBINDING_TIME = 58, 59
OPTION_NAMES = {"dhcp-client-identifier": OPT_CLIENT_ID, "subnet-mask": OPT_MASK, "routers": OPT_ROUTER,
                "host-name": 12, "user-class": 77, "vendor-class-identifier": 60}
DEFAULT_REQUEST = (OPT_ROUTER, OPT_MASK)
MAX_TIMEOUT = 3600  # ipam.timeout: an ADD that waits longer than this is a config error (1e999 is inf)
FIRST_RESEND = 1.0  # Go waits 4 s before the first resend; on a LAN 1 s doubling is plenty

Options = Dict[int, bytes]


# --- options and packets ------------------------------------------------------------------------

def client_id(cid: str, net: str, ifname: str) -> bytes:
    """Go generateClientID plus the type byte 0 it prepends."""
    return b"\x00" + f"{cid}/{net}/{ifname}".encode()[:254]


def option_code(name: Any) -> int:
    if isinstance(name, str) and name in OPTION_NAMES:
        return OPTION_NAMES[name]
    text = str(name)
    if not (text.isascii() and text.isdigit()) or int(text) > 255:
        raise CNIError(ERR, f'Can not parse option "{name}": strconv.ParseUint: parsing "{name}": invalid syntax')
    return int(text)


def prepare_options(conf: Dict[str, Any], env_args: str) -> Tuple[List[int], Options]:
    """Go prepareOptions: the parameter request list and the options we send."""
    ipam = conf.get("ipam") or {}
    pairs = dict(p.split("=", 1) for p in env_args.split(";") if "=" in p)
    provide: Options = {}
    for opt in ipam.get("provide") or []:
        code = option_code(opt.get("option"))
        for value in (opt.get("value") or "", pairs.get(opt.get("fromArg") or "\0")):
            if value:
                if len(value.encode()) > 255:
                    raise CNIError(ERR, f'value too long for option "{opt.get("option")}"')
                provide[code] = value.encode()
    request: List[int] = []
    skip_default = False
    for opt in ipam.get("request") or []:
        skip_default = skip_default or bool(opt.get("skipDefault"))
        code = option_code(opt.get("option"))
        if code not in request:
            request.append(code)
    if not skip_default:
        request += [c for c in DEFAULT_REQUEST if c not in request]
    return request, provide


def encode_options(opts: List[Tuple[int, bytes]]) -> bytes:
    out = bytearray(MAGIC)
    for code, value in opts:
        out += bytes((code, len(value))) + value
    out.append(255)
    return bytes(out)


# Options whose value has a fixed size (RFC 2132), or a size that is a multiple of a unit with a
# minimum: a reply carrying one of them with another length is malformed and dropped whole.
FIXED_SIZE = {OPT_MSG_TYPE: 1, OPT_MASK: 4, OPT_SERVER_ID: 4, OPT_LEASE_TIME: 4, OPT_RENEWAL_TIME: 4,
              OPT_REBINDING_TIME: 4, OPT_REQUESTED_IP: 4}
UNIT_SIZE = {OPT_ROUTER: 4, 6: 4, OPT_STATIC_ROUTES: 8}  # router, DNS servers, static routes
MIN_SIZE = {OPT_CLASSLESS: 5}


def decode_options(data: bytes) -> Options:
    """The options field, strictly: ValueError for a truncated option or a known option of the
    wrong length (checked after RFC 3396 concatenation)."""
    opts: Options = {}
    i = 0
    while True:
        if i >= len(data):  # no end option: tolerated, as long as nothing is cut short
            break
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            raise ValueError(f"option {code} truncated")
        size = data[i + 1]
        opts[code] = opts.get(code, b"") + data[i + 2:i + 2 + size]  # RFC 3396 concatenation
        i += 2 + size
    for code, value in opts.items():
        size = len(value)
        if (code in FIXED_SIZE and size != FIXED_SIZE[code]) or size < MIN_SIZE.get(code, 0) \
                or (code in UNIT_SIZE and (size == 0 or size % UNIT_SIZE[code])):
            raise ValueError(f"option {code} has length {size}")
    return opts


def bootp(xid: int, mac: bytes, ciaddr: bytes = b"\0" * 4) -> bytes:
    return struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0, ciaddr,
                       b"\0" * 4, b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"), b"", b"")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp(src: bytes, dst: bytes, payload: bytes) -> bytes:
    """IPv4 + UDP (68 -> 67) around a BOOTP payload, checksums filled in."""
    payload = payload.ljust(300, b"\0")  # BOOTP minimum size; some servers drop shorter
    length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp = struct.pack("!HHHH", CLIENT_PORT, SERVER_PORT, length, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + length, 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return hdr + udp


def parse_reply(frame: bytes, xid: int, mac: bytes) -> Optional[Tuple[bytes, Options]]:
    """(yiaddr, options) if `frame` is a well-formed DHCP BOOTREPLY to us for transaction `xid`,
    else None: anything else on the wire - malformed included - is dropped, never raised."""
    if len(frame) < 28 or frame[0] >> 4 != 4 or frame[9] != socket.IPPROTO_UDP:
        return None
    ihl = (frame[0] & 0x0F) * 4
    udp = frame[ihl:]
    if ihl < 20 or len(udp) < 8 + 240 or struct.unpack("!H", udp[2:4])[0] != CLIENT_PORT:
        return None
    msg = udp[8:]
    if msg[0] != 2 or struct.unpack("!I", msg[4:8])[0] != xid or msg[28:34] != mac or msg[236:240] != MAGIC:
        return None
    try:
        opts = decode_options(msg[240:])
    except ValueError:
        return None
    if OPT_MSG_TYPE not in opts:  # BOOTP, not DHCP
        return None
    return msg[16:20], opts


def _flags(sock: socket.socket, ifname: str) -> int:
    return struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH14x", ifname.encode(), 0)))[1]


def set_link_state(ifname: str, up: bool, wait_carrier: bool = False) -> None:
    """Set or clear IFF_UP with two ioctls instead of a netlink socket (opening pyroute2's
    IPRoute costs ~0.3 s here, a whole DHCP exchange ~20 ms)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            flags = _flags(sock, ifname)
            if bool(flags & link.IFF_UP) == up:
                return
            flags = flags | link.IFF_UP if up else flags & ~link.IFF_UP
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags))
            # A DISCOVER sent before the carrier is up is lost and costs a whole resend delay.
            deadline = time.monotonic() + (CARRIER_WAIT if wait_carrier else 0)
            while time.monotonic() < deadline and not _flags(sock, ifname) & IFF_RUNNING:
                time.sleep(0.005)
        except OSError as exc:
            raise CNIError(ERR, f"failed to lookup {rtnl.json_quote(ifname)}: {rtnl.errstr(exc)}") from None


# --- the client ---------------------------------------------------------------------------------

class Client:
    """One DHCP conversation on one interface (socket opened in the container netns)."""

    def __init__(self, ifname: str, cid: bytes) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        try:
            self.sock.bind((ifname, ETH_P_IP))
            self.mac: bytes = self.sock.getsockname()[4]
        except OSError:
            self.sock.close()
            raise
        self.ifname = ifname
        self.client_id = cid
        self.xid = int.from_bytes(os.urandom(4), "big")

    def close(self) -> None:
        self.sock.close()

    def send(self, msg_type: int, opts: List[Tuple[int, bytes]], ciaddr: bytes = b"\0" * 4,
             dst: bytes = b"\xff" * 4, dst_mac: bytes = b"\xff" * 6) -> None:
        payload = bootp(self.xid, self.mac, ciaddr) + encode_options(
            [(OPT_MSG_TYPE, bytes((msg_type,))), (OPT_CLIENT_ID, self.client_id)] + opts)
        self.sock.sendto(ip_udp(ciaddr, dst, payload), (self.ifname, ETH_P_IP, 0, 0, dst_mac))

    def exchange(self, msg_type: int, opts: List[Tuple[int, bytes]], want: Tuple[int, ...],
                 deadline: float, **dest: bytes) -> Tuple[bytes, Options, bytes]:
        """Send, resend with doubling delays, until a reply of a `want` type: (yiaddr, opts, server mac)."""
        delay = FIRST_RESEND
        while time.monotonic() < deadline:
            self.send(msg_type, opts, **dest)
            until = min(deadline, time.monotonic() + delay)
            delay *= 2
            while True:
                left = until - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    break
                frame, addr = self.sock.recvfrom(65535)
                if addr[2] == PACKET_OUTGOING:
                    continue
                reply = parse_reply(frame, self.xid, self.mac)
                if reply and reply[1][OPT_MSG_TYPE][0] in want:
                    return reply[0], reply[1], addr[4]
        raise CNIError(ERR, f"{self.client_id[1:].decode(errors='replace')}: no DHCP reply on "
                            f"{self.ifname} ({'DHCPOFFER' if msg_type == DISCOVER else 'DHCPACK'} timed out)")

    def acquire(self, request: List[int], provide: Options, timeout: float) -> Tuple[bytes, Options, bytes]:
        """DISCOVER -> OFFER -> REQUEST -> ACK (a NAK starts over); (yiaddr, ACK options, server mac)."""
        deadline = time.monotonic() + timeout
        extra = [(code, value) for code, value in provide.items() if code != OPT_CLIENT_ID]
        if OPT_CLIENT_ID in provide:
            self.client_id = provide[OPT_CLIENT_ID]
        params = [(OPT_PARAMS, bytes(request))]
        while True:
            offered, offer, _ = self.exchange(DISCOVER, params + extra, (OFFER,), deadline)
            server = offer.get(OPT_SERVER_ID, b"")
            got, ack, server_mac = self.exchange(
                REQUEST, [(OPT_REQUESTED_IP, offered), (OPT_SERVER_ID, server)] + params + extra, (ACK, NAK), deadline)
            if ack[OPT_MSG_TYPE][0] == ACK:
                return got, ack, server_mac
            self.xid = int.from_bytes(os.urandom(4), "big")

    def renew(self, ip: bytes, server: bytes, server_mac: bytes, rebind: bool,
              timeout: float) -> Tuple[bytes, Options, bytes]:
        """RENEWING: REQUEST unicast to the server that granted the lease; REBINDING: broadcast to
        any server. Both carry ciaddr and neither a server ID nor a requested IP (RFC 2131 4.3.2)."""
        dest = {} if rebind else {"dst": server, "dst_mac": server_mac}
        return self.exchange(REQUEST, [], (ACK, NAK), time.monotonic() + timeout, ciaddr=ip, **dest)

    def release(self, ip: bytes, server: bytes, server_mac: bytes) -> None:
        """RELEASE is unicast from the leased address to the server (RFC 2131 4.4.6)."""
        self.send(RELEASE, [(OPT_SERVER_ID, server)], ciaddr=ip, dst=server, dst_mac=server_mac)


# --- lease -> result ----------------------------------------------------------------------------

def _ip(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def _mask_bits(mask: bytes) -> int:
    bits = bin(int.from_bytes(mask, "big"))[2:].zfill(32)
    if "01" in bits:
        raise CNIError(ERR, f"DHCP option Subnet Mask {_ip(mask)} is not a valid mask")
    return bits.count("1")


def _classful(dst: bytes) -> str:
    """Go classfulSubnet: net.IP.DefaultMask (A/B, else C), host bits kept as sent."""
    bits = 8 if dst[0] < 0x80 else 16 if dst[0] < 0xC0 else 24
    return f"{_ip(dst)}/{bits}"


def lease_routes(opts: Options) -> List[Dict[str, str]]:
    """Go `DHCPLease.Routes`: option 121 alone if usable, else option 33 plus default via router."""
    routes: List[Dict[str, str]] = []
    data = opts.get(OPT_CLASSLESS, b"")
    while len(data) >= 5:
        width = data[0]
        octets = (width - 1) // 8 + 1 if width else 0
        if width > 32 or len(data) < 1 + octets + 4:
            routes = []
            break
        dst = data[1:1 + octets].ljust(4, b"\0")
        routes.append({"dst": f"{_ip(dst)}/{width}", "gw": _ip(data[1 + octets:5 + octets])})
        data = data[5 + octets:]
    if routes:
        return routes
    data = opts.get(OPT_STATIC_ROUTES, b"")
    while len(data) >= 8:
        routes.append({"dst": _classful(data[:4]), "gw": _ip(data[4:8])})
        data = data[8:]
    router = opts.get(OPT_ROUTER, b"")
    if len(router) == 4:
        routes.append({"dst": "0.0.0.0/0", "gw": _ip(router)})
    return routes


def lease_result(yiaddr: bytes, opts: Options) -> Dict[str, Any]:
    if OPT_MASK not in opts:
        raise CNIError(ERR, "DHCP option Subnet Mask not found in DHCPACK")
    if len(opts.get(OPT_LEASE_TIME, b"")) != 4:
        raise CNIError(ERR, "option LeaseTime not found")
    ip: Dict[str, Any] = {"address": f"{_ip(yiaddr)}/{_mask_bits(opts[OPT_MASK])}"}
    router = opts.get(OPT_ROUTER, b"")
    if len(router) == 4:
        ip["gateway"] = _ip(router)
    return spec.new_result(ips=[ip], routes=lease_routes(opts))


def _seconds(opts: Options, code: int) -> Optional[int]:
    value = opts.get(code, b"")
    return int.from_bytes(value, "big") if len(value) == 4 else None


def lease_record(client: Client, yiaddr: bytes, opts: Options, server_mac: bytes, netns: str,
                 now: float, netns_id: Tuple[int, int]) -> Dict[str, Any]:
    """What DEL and renewal need; T1/T2 defaulted as Go's DHCPLease.commit does. `netns_id` is the
    netns the lease was taken in (ns.thread_netns_id): renewal acts only where it still opens."""
    lease = _seconds(opts, OPT_LEASE_TIME) or 0
    t2 = _seconds(opts, OPT_REBINDING_TIME)
    t2 = lease * 85 // 100 if t2 is None or t2 > lease else t2
    t1 = _seconds(opts, OPT_RENEWAL_TIME)
    t1 = lease // 2 if t1 is None or t1 > t2 else t1
    return {"clientID": client.client_id.hex(), "ip": _ip(yiaddr),
            "server": _ip(opts.get(OPT_SERVER_ID, b"\0" * 4)), "serverMAC": server_mac.hex(),
            "mac": client.mac.hex(), "netns": netns, "netnsID": list(netns_id), "ifname": client.ifname,
            "leaseTime": lease, "t1": t1, "t2": t2, "acquired": now}


# --- lease records ------------------------------------------------------------------------------

def lease_path(net: str, cid: str, ifname: str) -> str:
    """/run/cni/dhcp/<net>/<cid>:<ifname>.json; ':' is in neither a container ID nor an ifname,
    and both were validated by the skel, so the name stays inside the directory."""
    spec.validate_name(net)
    skel.validate_container_id(cid)
    skel.validate_ifname(ifname)
    return os.path.join(LEASE_DIR, net, f"{cid}:{ifname}.json")


def write_lease(path: str, record: Dict[str, Any]) -> None:
    fsutil.state_dir(os.path.dirname(path), 0o700)
    fsutil.write_atomic(path, json.dumps(record).encode(), 0o600)


def read_lease(path: str) -> Optional[Dict[str, Any]]:
    """The recorded lease, None if absent or unreadable (a torn record is as good as none)."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


class Dhcp(Plugin):
    name = "dhcp"

    def add(self, ctx: skel.Context, conf: Dict[str, Any]) -> Dict[str, Any]:
        request, provide = prepare_options(conf, ctx.environ.get("CNI_ARGS", ""))
        timeout = (conf.get("ipam") or {}).get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid ipam.timeout {timeout!r}: must be between 0 and "
                           f"{MAX_TIMEOUT} seconds")
        path = lease_path(conf["name"], ctx.container_id, ctx.ifname)
        with ns.in_netns(ctx.netns):
            set_link_state(ctx.ifname, up=True, wait_carrier=True)  # Go's daemon sets it up too
            client = Client(ctx.ifname, client_id(ctx.container_id, conf["name"], ctx.ifname))
            netns_id = ns.thread_netns_id()
        try:
            yiaddr, opts, server_mac = client.acquire(request, provide, timeout)
            try:  # from here on the server holds a lease for us: a failed ADD gives it back
                result = lease_result(yiaddr, opts)
                try:
                    write_lease(path, lease_record(client, yiaddr, opts, server_mac, ctx.netns, time.time(), netns_id))
                except (OSError, CNIError) as exc:
                    why = rtnl.errstr(exc) if isinstance(exc, OSError) else exc.msg
                    raise CNIError(ERR, f"failed to record DHCP lease: {why}") from None
            except BaseException:
                client.release(yiaddr, opts.get(OPT_SERVER_ID, b"\0" * 4), server_mac)
                raise
        finally:
            client.close()
        return result

    def check(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        record = read_lease(lease_path(conf["name"], ctx.container_id, ctx.ifname))
        if record is None:
            raise CNIError(ERR, f"dhcp: no lease recorded for {ctx.container_id}/{conf['name']}/{ctx.ifname}")
        if record.get("acquired", 0) + record.get("leaseTime", 0) < time.time():  # renewal keeps it fresh
            raise CNIError(ERR, f"dhcp: lease of {record.get('ip')} has expired")

    def delete(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Send RELEASE if the lease, the netns and the interface are all still there; always
        forget the lease. Nothing here can fail the DEL (best effort, as the spec asks)."""
        path = lease_path(conf["name"], ctx.container_id, ctx.ifname)
        release_record(path, read_lease(path), ctx.netns, ctx.ifname)

    def gc(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Release every recorded lease of this network whose attachment is not listed."""
        spec.validate_name(conf["name"])
        keep = spec.valid_attachments(conf)
        netdir = os.path.join(LEASE_DIR, conf["name"])
        for name in sorted(os.listdir(netdir)) if os.path.isdir(netdir) else []:
            cid, sep, ifname = name[:-len(".json")].partition(":") if name.endswith(".json") else ("", "", "")
            if sep and (cid, ifname) not in keep:
                path = os.path.join(netdir, name)
                record = read_lease(path)
                release_record(path, record, (record or {}).get("netns", ""), ifname)

    def status(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Ready when leases can be recorded (whether a server answers is only known by asking)."""
        probe = os.path.join(LEASE_DIR, conf["name"])
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
            raise CNIError(spec.ERR_NOT_AVAILABLE, f"dhcp: lease directory {LEASE_DIR} is not writable")


def release_record(path: str, record: Optional[Dict[str, Any]], netns: str, ifname: str) -> None:
    """RELEASE a recorded lease from inside its netns when possible, then forget it; never fails."""
    if record is not None and netns:
        with contextlib.suppress(OSError, CNIError, KeyError, ValueError, TypeError):
            with ns.in_netns(netns):
                client = Client(ifname, bytes.fromhex(record["clientID"]))
            try:
                client.release(socket.inet_aton(record["ip"]), socket.inet_aton(record["server"]),
                               bytes.fromhex(record["serverMAC"]))
            finally:
                client.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --- renewal (`cnikit dhcp-renew`): what Go's dhcp daemon does for its leases -----------------

def maintain_one(path: str, record: Dict[str, Any], now: float, timeout: float = 5.0) -> str:
    """Move one lease along: "bound" (nothing due), "renewed" (after T1, unicast to its server),
    "rebound" (after T2, broadcast), "expired" (link set down, as Go's daemon does), "gone" (netns
    or interface no longer there) or "failed" (no ACK or a NAK; retried on the next round)."""
    acquired = float(record["acquired"])
    if now < acquired + record["t1"]:
        return "bound"
    ip, server = socket.inet_aton(record["ip"]), socket.inet_aton(record["server"])
    netns_id = record.get("netnsID")
    try:
        with ns.in_netns(record["netns"]):
            # Only the netns and the interface the lease was taken on: the path may now open another
            # netns, the name may now be another interface (a record without the netns id predates
            # this check and is not acted on either).
            if not isinstance(netns_id, list) or tuple(netns_id) != ns.thread_netns_id():
                return "gone"
            client = Client(record["ifname"], bytes.fromhex(record["clientID"]))
            if client.mac.hex() != record["mac"]:
                client.close()
                return "gone"
            if now >= acquired + record["leaseTime"]:
                client.close()
                set_link_state(record["ifname"], up=False)
                return "expired"
    except (OSError, CNIError):
        return "gone"
    rebind = now >= acquired + record["t2"]
    try:
        _, opts, server_mac = client.renew(ip, server, bytes.fromhex(record["serverMAC"]), rebind, timeout)
        if opts[OPT_MSG_TYPE][0] != ACK:
            return "failed"
        write_lease(path, lease_record(client, ip, opts, server_mac, record["netns"], time.time(), tuple(netns_id)))
        return "rebound" if rebind else "renewed"
    except (OSError, CNIError):
        return "failed"
    finally:
        client.close()


def maintain(now: Optional[float] = None, lease_dir: str = LEASE_DIR) -> Dict[str, str]:
    """One pass over every recorded lease: {record path: state}."""
    states: Dict[str, str] = {}
    try:
        networks = sorted(os.listdir(lease_dir))
    except OSError:
        return states
    for net in networks:
        netdir = os.path.join(lease_dir, net)
        for name in sorted(os.listdir(netdir)) if os.path.isdir(netdir) else []:
            path = os.path.join(netdir, name)
            record = read_lease(path) if name.endswith(".json") else None
            if record is None:
                continue
            try:
                states[path] = maintain_one(path, record, time.time() if now is None else now)
            except (KeyError, TypeError, ValueError):
                states[path] = "invalid"
            except Exception as exc:  # noqa: BLE001 - one lease must never stop the others' renewal
                sys.stderr.write(f"cnikit dhcp-renew: {path}: {type(exc).__name__}: {exc}\n")
                states[path] = "failed"
            if states[path] == "gone":
                # Without its netns or interface DEL could not RELEASE either: the record is
                # dead weight (also one a renewal re-wrote just after a DEL removed it).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    return states


def next_due(lease_dir: str = LEASE_DIR) -> Optional[float]:
    """The earliest T1 (or expiry, for leases past T1) over all records."""
    due = []
    for net in os.listdir(lease_dir) if os.path.isdir(lease_dir) else []:
        netdir = os.path.join(lease_dir, net)
        for name in os.listdir(netdir) if os.path.isdir(netdir) else []:
            record = read_lease(os.path.join(netdir, name))
            with contextlib.suppress(KeyError, TypeError, ValueError):
                due.append(float(record["acquired"]) + float(record["t1"]))  # type: ignore[index]
    return min(due) if due else None


def serve(interval: float = 30.0) -> None:
    """Renew leases until killed: wake at the next T1, at least every `interval` seconds (new
    leases), sooner while a renewal is failing."""
    while True:
        try:
            states, due = maintain(), next_due()
        except Exception as exc:  # noqa: BLE001 - the daemon outlives any one bad pass
            sys.stderr.write(f"cnikit dhcp-renew: {type(exc).__name__}: {exc}\n")
            states, due = {"pass": "failed"}, None
        pause = interval if due is None else min(interval, max(1.0, due - time.time()))
        if "failed" in states.values():
            pause = min(pause, 5.0)
        time.sleep(pause)


def renew_main(once: bool, interval: float) -> int:
    """`cnikit dhcp-renew [--once] [--interval S]`."""
    if not once:
        serve(interval)
    for path, state in maintain().items():
        sys.stdout.write(f"{state} {path}\n")
    return 0
