"""Offline stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test downloads get-pip.py from a host that is unreachable here; it
caches it under ~/.ansible/test/cache/get_pip_<version>.py. `make setup` puts
this file there: it bootstraps pip with ensurepip (bundled with CPython), keeps
the environment's pip configuration (index mirrors, certificates) and then runs
`pip install` with the arguments ansible-test passes.
"""

import ensurepip
import os
import runpy
import sys

# ensurepip clears PIP_* variables and points PIP_CONFIG_FILE at /dev/null;
# restore the environment so pip keeps the machine's mirrors and certificates.
saved = dict(os.environ)
ensurepip.bootstrap(upgrade=True)
os.environ.clear()
os.environ.update(saved)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.argv = ["pip", "install"] + args
runpy.run_module("pip", run_name="__main__", alter_sys=True)
