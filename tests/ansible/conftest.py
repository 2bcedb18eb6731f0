"""Fixtures for the Ansible tests (helpers in ansible_harness.py)."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ansible_harness import Play, make_collections_root, run_playbook  # noqa: E402


@pytest.fixture(scope="session")
def collections_root(tmp_path_factory) -> str:
    return make_collections_root(str(tmp_path_factory.mktemp("colls")))


@pytest.fixture
def play(collections_root, tmp_path, sandbox):
    """play(tasks, **play_keywords) -> Play; tasks are dicts as in YAML."""

    def run(tasks: List[Dict[str, Any]], extra_vars: Optional[Dict[str, Any]] = None, **keywords: Any) -> Play:
        book = tmp_path / "play.yml"
        book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, **keywords, "tasks": tasks}]))
        return run_playbook(collections_root, str(book), extra_vars)

    return run
