"""cnikit.cni.cni_config through ansible-playbook: validated write, idempotence, text diff, bad configs
failing before anything is written, shadowing warning, absent."""
from __future__ import annotations

import json


def test_cni_config_lifecycle(play, tmp_path):
    conf_dir = tmp_path / "net.d"
    mv = {"cniVersion": "1.0.0", "plugins": [{"type": "macvlan", "master": "ens33", "mode": "bridge",
                                             "ipam": {"type": "host-local", "subnet": "192.168.80.0/24"}}]}

    def c(config=None, **kw):
        return {"cnikit.cni.cni_config": {"name": "mvnet", "config": mv if config is None else config,
                                          "conf_dir": str(conf_dir), "cni_path": [str(tmp_path / "bin")], **kw}}
    vepa = {**mv, "plugins": [{**mv["plugins"][0], "mode": "vepa"}]}
    path = conf_dir / "10-mvnet.conflist"
    r = play([
        {"name": "predict", "check_mode": True, **c()},
        {"name": "write", "diff": True, **c()},
        {"name": "again", **c()},
        {"name": "vepa predicted", "check_mode": True, "diff": True, **c(vepa)},
        {"name": "vepa", **c(vepa)},
        {"name": "single plugin", **c({"cniVersion": "0.4.0", "type": "loopback"}, name="lo")},
        {"name": "shadow file", "copy": {"dest": str(conf_dir / "05-old.conflist"), "content": json.dumps({**mv, "name": "mvnet"})}},
        {"name": "shadowed", **c(vepa)},
        {"name": "unknown plugin", "ignore_errors": True, **c({**mv, "plugins": [{"type": "nosuch"}]}, filename="20-x.conflist")},
        {"name": "bad version", "ignore_errors": True, **c({**mv, "cniVersion": "9.9.9"}, filename="20-x.conflist")},
        {"name": "no plugins", "ignore_errors": True, **c({"cniVersion": "1.0.0", "plugins": []}, filename="20-x.conflist")},
        {"name": "name mismatch", "ignore_errors": True, **c({**mv, "name": "other"}, filename="20-x.conflist")},
        {"name": "bad network name", "ignore_errors": True, **c(name="bad name!", filename="20-x.conflist")},
        {"name": "bad filename", "ignore_errors": True, **c(filename="../escape.conflist")},
        {"name": "remove predicted", "check_mode": True, **c(state="absent")},
        {"name": "remove", **c(state="absent")},
        {"name": "remove again", **c(state="absent")},
    ]).ok()
    assert r["predict"]["changed"] is True
    assert r["write"]["changed"] is True and r["write"]["path"] == str(path)
    assert r["write"]["diff"]["before"] == "" and r["write"]["diff"]["after_header"] == str(path)
    assert json.loads(r["write"]["content"]) == {**mv, "name": "mvnet"}
    assert r["again"]["changed"] is False
    pred = r["vepa predicted"]
    assert pred["changed"] is True and '"mode": "bridge"' in pred["diff"]["before"] and '"mode": "vepa"' in pred["diff"]["after"]
    assert r["vepa"]["changed"] is True and r["shadowed"]["changed"] is False
    assert any("05-old.conflist defines network 'mvnet' too" in w for w in r["shadowed"].get("warnings", []))
    assert r["single plugin"]["path"].endswith("/10-lo.conf")
    assert 'failed to find plugin "nosuch"' in r.failure("unknown plugin")
    assert "incompatible CNI versions" in r.failure("bad version")
    assert "no plugins in list" in r.failure("no plugins")
    assert "config names network 'other' but name is 'mvnet'" in r.failure("name mismatch")
    assert "invalid characters found in network name" in r.failure("bad network name")
    assert "invalid config file name '../escape.conflist'" in r.failure("bad filename")
    assert not (conf_dir / "20-x.conflist").exists() and not (tmp_path / "escape.conflist").exists()
    assert r["remove predicted"]["changed"] is True
    assert r["remove"]["changed"] is True and r["remove again"]["changed"] is False
    assert sorted(p.name for p in conf_dir.iterdir()) == ["05-old.conflist", "10-lo.conf"]
    assert (conf_dir / "10-lo.conf").stat().st_mode & 0o777 == 0o600  # CIS: CNI files 0600 by default
