"""`cnikit reclaim` is node leak reclaim; `cnikit gc` stays as its alias (same options, same report)."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402,F401 - puts the engine on sys.path

from cni.node import cli  # noqa: E402


def test_gc_is_an_alias_of_reclaim():
    parser = cli.build_parser()
    a = parser.parse_args(["reclaim", "--dry-run", "--grace", "5"])
    b = parser.parse_args(["gc", "--dry-run", "--grace", "5"])
    assert a.func is b.func
    assert {k: v for k, v in vars(a).items() if k != "cmd"} == {k: v for k, v in vars(b).items() if k != "cmd"}


def test_reclaim_and_gc_print_the_same_report(tmp_path, capsys):
    reports = []
    for verb in ("reclaim", "gc"):
        rc = cli.main([verb, "--dry-run", "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(tmp_path / "data"),
                       "--conf-dir", str(tmp_path / "conf"), "--cni-path", str(tmp_path)])
        assert rc == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1]
    assert set(reports[0]) >= {"collected", "kept", "corrupt", "orphan_leases", "stray_files", "errors"}
