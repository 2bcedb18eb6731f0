# Test-only stdout callback: print every task result as one JSON document at the end of the run
# (ansible-core 2.21 no longer ships the `json` callback).
from __future__ import annotations

import json
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: results_json
type: stdout
short_description: all task results as one JSON document (tests only)
description: Collects each task's result per host and prints them as JSON when the run ends.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "results_json"

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list = []
        self.started = time.monotonic()

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self.started = time.monotonic()

    def _record(self, result, status: str) -> None:
        data = dict(result._result)  # pylint: disable=protected-access
        data["_status"] = status
        data["_seconds"] = round(time.monotonic() - self.started, 3)
        data["_ignore_errors"] = bool(result._task.ignore_errors)  # pylint: disable=protected-access
        self.tasks.append({"name": result._task.get_name(), "host": result._host.get_name(), "result": data})

    def v2_runner_on_ok(self, result) -> None:
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result) -> None:
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats) -> None:
        hosts = sorted(stats.processed.keys())
        self._display.display(json.dumps({"tasks": self.tasks,
                                          "stats": {h: stats.summarize(h) for h in hosts}}, default=str))
