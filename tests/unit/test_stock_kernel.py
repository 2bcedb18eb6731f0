"""tools/stock_kernel.py without booting anything: the boot-module order it derives from a kernel's
modules.dep (dependencies first, each once, built-ins skipped, unknown names refused). The boot
itself runs in `make test-kernel`."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools"))
import stock_kernel  # noqa: E402

DEP = """kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko kernel/fs/fscache/fscache.ko
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko: kernel/fs/fscache/fscache.ko
kernel/fs/fscache/fscache.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
"""


@pytest.fixture
def moddir(tmp_path):
    (tmp_path / "modules.dep").write_text(DEP)
    (tmp_path / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    return str(tmp_path)


def test_dependencies_first_each_once(moddir):
    order = stock_kernel.load_order(moddir, ["virtio_pci", "9pnet_virtio", "9p", "overlay"])
    names = [os.path.basename(p)[:-3] for p in order]
    assert len(names) == len(set(names))
    for mod, deps in (("virtio_pci", ["virtio_pci_modern_dev", "virtio_ring", "virtio"]),
                      ("9pnet_virtio", ["9pnet", "virtio_ring", "virtio"]), ("9p", ["9pnet", "netfs", "fscache"]),
                      ("netfs", ["fscache"])):
        assert all(names.index(d) < names.index(mod) for d in deps), names
    assert "overlay" not in names  # built in


def test_unknown_module_is_refused(moddir):
    with pytest.raises(SystemExit, match="nope"):
        stock_kernel.load_order(moddir, ["nope"])
