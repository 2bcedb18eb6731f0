"""docs/modules.md is generated from the modules' DOCUMENTATION/EXAMPLES/RETURN and must match them.
Regenerate with: .venv/bin/python tests/ansible/test_docs.py"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List

import yaml
from ansible.utils.plugin_docs import merge_fragment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = os.path.join(ROOT, "plugins", "modules")
DOC = os.path.join(ROOT, "docs", "modules.md")


INTRO = """\
Every module is a thin client (`plugins/module_utils/ansible_cni.py`) over one engine call in
`plugins/module_utils/cni/state/netstate.py`, which reads the kernel (or the runtime's cache, or the file),
compares, changes only the difference and returns the state before and after. So, for all of them:

- `changed` is true only when something changed; in check mode the same comparison runs without the
  change, so the prediction is exact (cni_network runs the read-only CHECK in check mode).
- With `--diff`, `before`/`after` are the visible state (links: kind, mode, master, MTU, MAC, up,
  addresses, routes asked for; a file's text for cni_config).
- Bad input fails the task with the engine's message and the CNI error code (`cni_code`) before
  anything is touched; a link a task created is deleted again if a later step of the same task fails.
- `addresses` are exclusive (others are removed, the kernel's IPv6 link-local kept); `routes` are
  additive (listed routes are added when missing, others are left alone); a link of the wrong kind
  under the name is never deleted (error), a veth paired elsewhere or a macvlan on another master
  is re-created.
- `netns` options take a name under `/run/netns` or an absolute path; a missing namespace is an
  error for present and "nothing to do" for absent.

Tests: `tests/ansible/` runs each module through `ansible-playbook` inside the sandbox (first run
changed, second not, check mode predicts and changes nothing, diff, absent, bad input), the seed's
manual lab (`examples/seed_lab.yml`), the galaxy tarball installed and run, `ansible-test sanity` and
`ansible-lint` (production profile)."""


def _plain(text: Any) -> str:
    """Ansible doc markup as Markdown: O(x)/V(x)/C(x)/RV(x) -> `x`, I(x) -> *x*."""
    text = str(text)
    text = re.sub(r"O\(([\w.]+)#module:([^)]+)\)", r"`\2` of `\1`", text)
    text = re.sub(r"\b(?:O|V|C|RV)\(([^)]*)\)", r"`\1`", text)
    text = re.sub(r"\bI\(([^)]*)\)", r"*\1*", text)
    return text.replace("|", "\\|").replace("\n", " ")


def _strings(path: str) -> Dict[str, str]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    return {n.targets[0].id: n.value.value for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
            and n.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN") and isinstance(n.value, ast.Constant)}


def _fragment(slug: str) -> Dict[str, Any]:
    """One of the collection's doc fragments, `cnikit.cni.<file>` or a variant `cnikit.cni.<file>.<var>`,
    loaded (imported, as Ansible's loader does: a variant may be built in code) and parsed."""
    name, *variant = slug.removeprefix("cnikit.cni.").split(".", 1)
    path = os.path.join(ROOT, "plugins", "doc_fragments", name + ".py")
    spec = importlib.util.spec_from_file_location(f"_doc_fragment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return yaml.safe_load(getattr(module.ModuleDocFragment, (variant or ["DOCUMENTATION"])[0].upper()))


def _with_fragments(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The module's DOCUMENTATION as ansible-doc shows it: its fragments merged in the order and the
    way of ansible.utils.plugin_docs.add_fragments (notes appended, options/attributes merged key by
    key with the module's own keys winning, lists such as requirements joined and sorted)."""
    doc = dict(doc)
    for slug in doc.pop("extends_documentation_fragment", None) or []:
        fragment = _fragment(slug)
        doc["notes"] = (doc.get("notes") or []) + (fragment.pop("notes", None) or [])
        for key in ("options", "attributes"):
            if key in fragment:
                if key in doc:
                    merge_fragment(doc[key], fragment.pop(key))
                else:
                    doc[key] = fragment.pop(key)
        merge_fragment(doc, fragment)
    return doc


def _options(opts: Dict[str, Any], prefix: str = "") -> List[str]:
    rows = []
    for name, o in (opts or {}).items():
        desc = o.get("description", "")
        desc = " ".join(_plain(d) for d in desc) if isinstance(desc, list) else _plain(desc)
        typ = o.get("type", "str") + (f" of {o['elements']}" if o.get("elements") else "")
        extra = []
        if o.get("required"):
            extra.append("**required**")
        if "default" in o:
            extra.append(f"default: `{yaml.safe_dump(o['default'], default_flow_style=True).strip().removesuffix('...').strip()}`")
        if o.get("choices"):
            extra.append("choices: " + ", ".join(f"`{c}`" for c in o["choices"]))
        if o.get("aliases"):
            extra.append("aliases: " + ", ".join(f"`{a}`" for a in o["aliases"]))
        rows.append(f"| `{prefix}{name}` | {typ} | {'; '.join(extra)} | {desc} |")
        rows += _options(o.get("suboptions"), f"{prefix}{name}.")
    return rows


def render() -> str:
    out = ["# Modules", "",
           "Generated from each module's DOCUMENTATION, EXAMPLES and RETURN by `tests/ansible/test_docs.py`",
           "(run it with Python to regenerate; the test fails when this file is stale).",
           "`ansible-doc cnikit.cni.<name>` shows the same text.", "", INTRO, ""]
    names = sorted(f[:-3] for f in os.listdir(MODULES) if f.endswith(".py") and not f.startswith("_"))
    out += [f"- [`cnikit.cni.{n}`](#cnikitcni{n.replace('_', '')})" for n in names] + [""]
    for name in names:
        s = _strings(os.path.join(MODULES, name + ".py"))
        doc = _with_fragments(yaml.safe_load(s["DOCUMENTATION"]))
        out += [f"## cnikit.cni.{name}", "", f"**{_plain(doc['short_description'])}**", ""]
        out += [f"- {_plain(d)}" for d in doc.get("description", [])] + [""]
        if doc.get("requirements"):
            out += ["Requirements: " + "; ".join(_plain(r) for r in doc["requirements"]), ""]
        attrs = doc.get("attributes") or {}
        if attrs:
            out += ["Attributes: " + ", ".join(f"{k} **{v.get('support')}**" for k, v in sorted(attrs.items())), ""]
        options = dict(sorted((doc.get("options") or {}).items()))
        out += ["| Option | Type | | Description |", "|---|---|---|---|"] + _options(options) + [""]
        if doc.get("notes"):
            out += ["Notes:", ""] + [f"- {_plain(n)}" for n in doc["notes"]] + [""]
        out += ["Examples:", "", "```yaml", s["EXAMPLES"].strip(), "```", ""]
        ret = yaml.safe_load(s["RETURN"]) or {}
        if ret:
            out += ["| Returns | Type | When | Description |", "|---|---|---|---|"]
            for key, r in ret.items():
                desc = r.get("description", "")
                desc = " ".join(_plain(d) for d in desc) if isinstance(desc, list) else _plain(desc)
                out.append(f"| `{key}` | {r.get('type', '')} | {_plain(r.get('returned', ''))} | {desc} |")
            out.append("")
    return "\n".join(out)


def test_fragments_merge_as_ansible_doc_shows_them(tmp_path):
    """The merge above is what ansible-doc itself makes of each module's fragments (variants too)."""
    root = tmp_path / "ansible_collections" / "cnikit"
    root.mkdir(parents=True)
    (root / "cni").symlink_to(ROOT)
    names = sorted(f[:-3] for f in os.listdir(MODULES) if f.endswith(".py") and not f.startswith("_"))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "--json",
                           *[f"cnikit.cni.{n}" for n in names]], capture_output=True, text=True, check=False,
                          cwd=tmp_path, timeout=300, env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(tmp_path),
                                                          "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    for name in names:
        ours = _with_fragments(yaml.safe_load(_strings(os.path.join(MODULES, name + ".py"))["DOCUMENTATION"]))
        doc = shown[f"cnikit.cni.{name}"]["doc"]
        for key in ("options", "attributes", "requirements", "notes"):
            assert _bare(doc.get(key)) == (ours.get(key) or None), (name, key)
        assert doc["author"] == ours["author"], name


def _bare(value: Any) -> Any:
    """ansible-doc's output without the keys it adds (which collection a version belongs to)."""
    if isinstance(value, dict):
        return {k: _bare(v) for k, v in value.items() if k != "version_added_collection"}
    if isinstance(value, list):
        return [_bare(v) for v in value]
    return value


def test_modules_doc_is_current():
    with open(DOC, encoding="utf-8") as fh:
        assert fh.read() == render(), f"docs/modules.md is stale: run `.venv/bin/python {os.path.relpath(__file__, ROOT)}`"


if __name__ == "__main__":
    with open(DOC, "w", encoding="utf-8") as fh:
        fh.write(render())
    sys.exit(0)
