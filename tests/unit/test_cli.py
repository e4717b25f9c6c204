import subprocess
import sys

from tests.services import ROOT


def test_help_lists_subcommands_without_loading_torch():
    code = (
        "import sys; from controlplane.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("demo", "serve", "manage"):
        assert command in result.stdout
    assert result.stdout.strip().endswith("False")


def test_unknown_subcommand_is_an_error():
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "frobnicate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr
