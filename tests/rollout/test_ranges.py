"""The per-node range planner (pure): seed layout, stability, every conflict, scale."""
from __future__ import annotations

import ipaddress
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "module_utils"))
from cni.state import ranges  # noqa: E402

SEED = dict(subnet="192.168.80.0/24", pool_start="192.168.80.120", size=10, gateway="192.168.80.2")
NODES = ["k8s-master", "k8s-node01", "k8s-node02"]


def layout(plan):
    return {n: r.text() for n, r in plan.items()}


def test_seed_layout_falls_out_of_pool_start_and_size():
    plan = ranges.plan(NODES, **SEED)
    assert layout(plan) == {
        "k8s-master": "192.168.80.120-192.168.80.129",
        "k8s-node01": "192.168.80.130-192.168.80.139",
        "k8s-node02": "192.168.80.140-192.168.80.149",
    }
    assert {r.source for r in plan.values()} == {"computed"}


def test_order_is_the_given_order_and_duplicates_count_once():
    plan = ranges.plan(["k8s-node02", "k8s-master", "k8s-node02"], **SEED)
    assert list(plan) == ["k8s-node02", "k8s-master"]
    assert plan["k8s-node02"].text() == "192.168.80.120-192.168.80.129"


def persist_all(plan, network="macvlannet", subnet=SEED["subnet"]):
    """What each node would read back on the next run."""
    return {n: ranges.load_persisted(ranges.dump_persisted(network, subnet, r), network, subnet) for n, r in plan.items()}


def test_join_keeps_existing_ranges_even_when_the_newcomer_sorts_first():
    first = ranges.plan(NODES, **SEED)
    # a second control-plane node joins: it is planned before the workers but must not move them
    second = ranges.plan(["k8s-master", "k8s-master2"] + NODES[1:], persisted=persist_all(first), **SEED)
    for n in NODES:
        assert second[n].text() == first[n].text()
        assert second[n].source == "persisted"
    assert second["k8s-master2"].text() == "192.168.80.150-192.168.80.159"


def test_leave_keeps_the_others_and_the_freed_slot_is_reused():
    first = ranges.plan(NODES, **SEED)
    persisted = persist_all(first)
    del persisted["k8s-node01"]  # node01 left: nobody reads its file back
    second = ranges.plan(["k8s-master", "k8s-node02"], persisted=persisted, **SEED)
    assert layout(second) == {"k8s-master": "192.168.80.120-192.168.80.129", "k8s-node02": "192.168.80.140-192.168.80.149"}
    third = ranges.plan(["k8s-master", "k8s-node02", "k8s-node03"], persisted=persist_all(second), **SEED)
    assert third["k8s-node03"].text() == "192.168.80.130-192.168.80.139"
    assert third["k8s-node02"].text() == "192.168.80.140-192.168.80.149"


def test_override_wins_and_computed_slots_skip_it():
    plan = ranges.plan(NODES, overrides={"k8s-node01": "192.168.80.200-192.168.80.209",
                                         "k8s-master": {"rangeStart": "192.168.80.125", "rangeEnd": "192.168.80.134"}}, **SEED)
    assert plan["k8s-node01"].text() == "192.168.80.200-192.168.80.209"
    assert plan["k8s-master"].source == "override"
    # .120-.129 and .130-.139 both touch the master's override: node02 gets the next aligned slot
    assert plan["k8s-node02"].text() == "192.168.80.140-192.168.80.149"


def test_persisted_file_for_another_subnet_or_garbage_is_ignored():
    rng = ranges.NodeRange("k8s-master", ipaddress.ip_address("10.0.0.10"), ipaddress.ip_address("10.0.0.19"), "computed")
    text = ranges.dump_persisted("macvlannet", "10.0.0.0/24", rng)
    assert ranges.load_persisted(text, "macvlannet", "10.0.0.0/24") == {"rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"}
    assert ranges.load_persisted(text, "macvlannet", "192.168.80.0/24") is None
    assert ranges.load_persisted(text, "othernet", "10.0.0.0/24") is None
    for junk in ("", "{", "[]", '{"format": "x"}', "\x00\xff"):
        assert ranges.load_persisted(junk, "macvlannet", "10.0.0.0/24") is None


CONFLICTS = [
    ("overlap", dict(overrides={"k8s-node01": "192.168.80.120-192.168.80.125"},
                     persisted={"k8s-master": {"rangeStart": "192.168.80.120", "rangeEnd": "192.168.80.129"}}),
     "ranges overlap: k8s-master (persisted) 192.168.80.120-192.168.80.129 and k8s-node01 (override) 192.168.80.120-192.168.80.125"),
    ("pool exhausted", dict(pool_end="192.168.80.139"),
     "pool exhausted: no free 10-address slot in 192.168.80.120-192.168.80.139 for k8s-node02"),
    ("gateway in computed range", dict(gateway="192.168.80.125"),
     "gateway 192.168.80.125 lies inside k8s-master's computed range 192.168.80.120-192.168.80.129"),
    ("gateway in override", dict(overrides={"k8s-node02": "192.168.80.1-192.168.80.9"}),
     "gateway 192.168.80.2 lies inside k8s-node02's override range 192.168.80.1-192.168.80.9"),
    ("reserved shim address", dict(reserved={"macv-host address of k8s-master": "192.168.80.131"}),
     "macv-host address of k8s-master 192.168.80.131 lies inside k8s-node01's computed range"),
    ("override outside subnet", dict(overrides={"k8s-node01": "192.168.81.10-192.168.81.19"}),
     "k8s-node01: override range 192.168.81.10-192.168.81.19 is outside subnet 192.168.80.0/24"),
    ("range reaches broadcast", dict(overrides={"k8s-node01": "192.168.80.250-192.168.80.255"}),
     "is outside subnet 192.168.80.0/24 (usable 192.168.80.1-192.168.80.254)"),
    ("pool outside subnet", dict(pool_start="10.0.0.1"), "pool_start 10.0.0.1 is outside subnet 192.168.80.0/24"),
    ("bad size", dict(size=0), "range size must be a positive integer"),
    ("reversed override", dict(overrides={"k8s-node01": "192.168.80.60-192.168.80.50"}), "ends before it starts"),
    ("bad subnet", dict(subnet="192.168.80.1/24"), "invalid subnet '192.168.80.1/24'"),
]


@pytest.mark.parametrize("name,change,message", CONFLICTS, ids=[c[0] for c in CONFLICTS])
def test_every_conflict_fails_with_its_message(name, change, message):
    args = dict(SEED, **change)
    with pytest.raises(ranges.PlanError) as err:
        ranges.plan(NODES, **args)
    assert message in str(err.value)


def test_thousand_nodes_planned_without_overlap_in_time():
    import time

    nodes = [f"node{i:04d}" for i in range(1000)]
    t0 = time.monotonic()
    plan = ranges.plan(nodes, subnet="10.64.0.0/16", pool_start="10.64.0.10", size=32, gateway="10.64.0.1")
    elapsed = time.monotonic() - t0
    spans = sorted((int(r.start), int(r.end)) for r in plan.values())
    assert len(spans) == 1000
    assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert all(r.size == 32 for r in plan.values())
    net = ipaddress.ip_network("10.64.0.0/16")
    assert all(r.start in net and r.end in net for r in plan.values())
    assert elapsed < 2.0
    # and the 1001st node does not fit a pool sized for 1000
    with pytest.raises(ranges.PlanError, match="pool exhausted"):
        ranges.plan(nodes + ["one-more"], subnet="10.64.0.0/16", pool_start="10.64.0.10",
                    pool_end=str(ipaddress.ip_address(int(ipaddress.ip_address("10.64.0.10")) + 32000 - 1)), size=32)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 40),
    size=st.integers(1, 12),
    fixed=st.dictionaries(st.integers(0, 39), st.tuples(st.integers(1, 200), st.integers(0, 15)), max_size=8),
    gone=st.sets(st.integers(0, 39), max_size=10),
)
def test_property_disjoint_inside_pool_and_stable(n, size, fixed, gone):
    nodes = [f"n{i}" for i in range(n)]
    overrides = {f"n{i}": f"10.1.0.{s}-10.1.0.{min(s + w, 254)}" for i, (s, w) in fixed.items() if i < n}
    try:
        plan = ranges.plan(nodes, subnet="10.1.0.0/24", pool_start="10.1.0.1", size=size, overrides=overrides)
    except ranges.PlanError as exc:
        assert "overlap" in str(exc) or "pool exhausted" in str(exc)
        return
    spans = sorted((int(r.start), int(r.end)) for r in plan.values())
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    # nodes leave, the rest re-read their files: nobody moves
    stay = [x for i, x in enumerate(nodes) if i not in gone]
    again = ranges.plan(stay, subnet="10.1.0.0/24", pool_start="10.1.0.1", size=size,
                        overrides=overrides, persisted=persist_all(plan, subnet="10.1.0.0/24"))
    assert {x: again[x].text() for x in stay} == {x: plan[x].text() for x in stay}


def test_cidrs_cover_exactly_the_range():
    plan = ranges.plan(NODES, **SEED)
    assert plan["k8s-master"].cidrs() == ["192.168.80.120/29", "192.168.80.128/31"]
    for rng in plan.values():
        ips = [ip for c in rng.cidrs() for ip in ipaddress.ip_network(c)]
        assert ips[0] == rng.start and ips[-1] == rng.end and len(ips) == rng.size
