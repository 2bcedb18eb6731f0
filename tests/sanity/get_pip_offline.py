"""Offline stand-in for ansible-test's pip bootstrap script (get-pip.py, normally downloaded from
ci-files.testing.ansible.com): pip comes from the interpreter's own ensurepip, then pip installs what
ansible-test asked for from the configured (local) indexes. ansible-test's documented workaround for
an unreachable download is to place a bootstrap script in its cache; this is that script."""
import ensurepip
import subprocess
import sys

# get-pip.py's own flags; pip does not know them
ARGS = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
ensurepip.bootstrap()
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *ARGS]))
