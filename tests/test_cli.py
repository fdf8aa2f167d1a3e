"""The CLI's layout: one module per command (group), registered on the group without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mmadapt.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"ab", "advise", "ask", "batch", "compare", "data", "drift", "eval", "export", "launch", "models", "plan", "recipe", "registry",
            "report", "run", "serve"}


def test_every_command_is_registered_on_the_group():
    assert set(main.commands) == COMMANDS
    assert set(main.commands["registry"].commands) == {"list", "show", "rollback", "promote", "audit", "diff"}
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0 and all(f"  {name} " in out.output for name in COMMANDS), out.output


def test_help_loads_no_heavy_library():
    code = ("import sys; from click.testing import CliRunner; from mmadapt.cli import main; "
            "CliRunner().invoke(main, ['--help'], catch_exceptions=False); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pydantic', 'mmadapt.recipe') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_python_dash_m_runs_the_same_cli():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mmadapt.cli", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "Measure whether a prompt" in done.stdout, done.stderr
