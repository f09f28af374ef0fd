"""Commands that need no neural network never import torch or transformers (fast start-up)."""
import subprocess
import sys

import pytest

from conftest import ROOT

LIGHT = ["prepare", "make_batches", "score", "index", "search"]


@pytest.mark.parametrize("module", LIGHT)
def test_light_commands_do_not_import_torch(module):
    code = (f"import sys; sys.argv=['x','--help']\n"
            f"from hbt_tools.commands.{module} import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
