"""Conntrack entries (Go pkg/utils conntrack helpers), on pyroute2's netfilter socket."""
from __future__ import annotations

import contextlib
import socket
from typing import List


def delete_udp_by_dport(ports: List[int], versions: List[int]) -> None:
    """Delete the UDP conntrack entries whose original destination port is one of `ports`, for IP
    `versions` (4, 6). pyroute2's conntrack socket is imported only when called; errors propagate."""
    from .rtnl import skip_pyroute2_init  # noqa: PLC0415

    skip_pyroute2_init()  # and pyroute2's logging kept off stderr
    from pyroute2.conntrack import Conntrack, NFCTAttrTuple  # noqa: PLC0415 - lazy on purpose

    with contextlib.closing(Conntrack()) as ct:
        for v in versions:
            family = socket.AF_INET if v == 4 else socket.AF_INET6
            for port in ports:
                tup = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP, dport=port)
                for entry in list(ct.dump_entries(tuple_orig=tup)):
                    ct.delete(entry)
