"""benchmarks/gpu_check.py's small path: every check runs end to end on tiny shapes on the CPU."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_prints_one_table_of_every_check(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    rows = gpu_check.main(["--cpu-smoke"])
    table = {(row[0].split(" (")[0], row[1]): row for row in rows}
    assert set(table) == {
        ("scoring", "tokens/s"),
        ("scoring", "MFU"),
        ("scoring", "ShareGPT projected"),
        ("full SFT step", "step time"),
        ("full SFT step", "peak memory"),
        ("full SFT step", "weights moved"),
        ("QLoRA step", "step time"),
        ("QLoRA step", "peak memory"),
        ("NIH grid", "prompts/s"),
    }
    # bf16-mixed moves every weight of the probed layer at lr 2e-5; QLoRA trains fp32 adapters on nf4 layers
    assert table[("full SFT step", "weights moved")][2] == "100.0%"
    assert "float32" in table[("QLoRA step", "step time")][3]
    assert table[("QLoRA step", "peak memory")][3].endswith("14 nf4 layers")  # 2 layers x 7 projections
    assert table[("NIH grid", "prompts/s")][3].startswith("4 prompts")
    printed = capsys.readouterr().out
    assert printed.count("| scoring") == 3 and "| NIH grid" in printed
