"""tox plugin loaded from the project root: make every pyenv-installed Python visible.

On machines where pyenv provides 3.12 and 3.13 but selects only one version, the shims
for the others refuse to run, so tox could not find ``py312`` / ``py313``. Putting each
installed version's ``bin`` on PATH lets tox's normal discovery find them.
"""

import os
from pathlib import Path

from tox.plugin import impl


@impl
def tox_add_core_config(core_conf, state):  # noqa: ARG001 - tox hook signature
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not root.is_dir():
        return
    bins = [str(p / "bin") for p in sorted(root.iterdir()) if (p / "bin").is_dir()]
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *bins])
