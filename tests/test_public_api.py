"""The names ``import mmadapt`` offers resolve, and importing it stays light (no torch)."""

import subprocess
import sys

import mmadapt


def test_every_public_name_resolves():
    for name in mmadapt.__all__:
        assert callable(getattr(mmadapt, name)) or name == "__version__", name
    assert mmadapt.advise.__name__ == "advise_recipe" and mmadapt.compare.__module__ == "mmadapt.govern.compare"


def test_importing_mmadapt_does_not_import_torch():
    code = "import sys, mmadapt; mmadapt.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
