"""The README's two commands and the CLI's surface."""
import re
import subprocess
import sys
from pathlib import Path

from bltkit.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    main_job, tests = readme_commands()
    assert main_job.endswith("bltkit demo")
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_every_command_module_exists_with_its_interface():
    import importlib

    for name, (module, _) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), name
        assert mod.__doc__, f"{name} needs a docstring (its --help)"


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_console_script_forward_runs():
    r = subprocess.run([sys.executable, "-m", "bltkit.cli", "forward"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "logits: (1, " in r.stdout and "bits per byte" in r.stdout
