"""What the `dsv3` commands import before they work: NeMo-Run's own import takes seconds, so a command
that needs none of it (parser, --help, list, show, plan) must not trigger it, and none imports torch."""

import subprocess
import sys

import pytest

from dsv3_recipes import recipes

# Run in a fresh interpreter: which modules a command leaves in sys.modules is what it imported.
PROBE = """
import sys
from dsv3_recipes import cli
rc = cli.main(sys.argv[1:])
print("RC", rc)
heavy = {"nemo_run", "fiddle", "torch", "megatron", "transformer_engine"}
print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & heavy))
print("RECIPE_MODULES", sorted(m for m in sys.modules if m.startswith("dsv3_recipes.recipes.")))
"""


def probe(*argv: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = dict(
        line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("RC", "LOADED", "RECIPE"))
    )
    assert lines, out.stderr[-2000:]
    return lines


def test_list_imports_neither_nemo_run_nor_a_recipe_module():
    result = probe("list")
    assert result == {"RC": "0", "LOADED": "[]", "RECIPE_MODULES": "[]"}


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "proxy_1gpu", "--json"],
        ["plan", "gb200_mxfp8_256gpu"],
        ["plan", "proxy_1gpu", "--shrink", "1"],
    ],
)
def test_show_and_plan_build_with_fiddle_alone(argv):
    """Recipes build and plan with fiddle alone: NeMo-Run (seconds to import) only where tasks launch."""
    result = probe(*argv)
    assert result["RC"] == "0" and result["LOADED"] == "['fiddle']"


def test_pretrain_and_export_import_nemo_run_but_not_torch():
    result = probe("show", "proxy_1gpu", "--to-yaml", "-")
    assert result["RC"] == "0" and result["LOADED"] == "['fiddle', 'nemo_run']"


def test_list_reads_each_factorys_own_docstring():
    for name in recipes.names():
        assert recipes.summary(name) == recipes.factory(name).__doc__.strip().splitlines()[0]


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`dsv3 show NAME | head`: the closed pipe stops the command with SIGPIPE's status, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsv3_recipes.cli", "show", "proxy_1gpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    proc.stdout.close()  # before the command writes a line: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipeError" not in err, err
