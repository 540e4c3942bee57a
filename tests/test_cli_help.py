import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["dash", "model"])
def test_help_answers(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"python -m {module}" in out.stdout
