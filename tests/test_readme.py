import subprocess
import sys

from smk_helpers import ROOT


def test_readme_rule_graph_is_the_generated_one():
    result = subprocess.run(
        [sys.executable, ".ci/readme_rulegraph.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
