"""benchmarks/tiny_training_gpu.py at a smoke size on the CPU: both data paths give a row (not a timing)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import tiny_training_gpu  # noqa: E402


def test_memory_and_streamed_rows_on_the_cpu(tmp_path, capsys):
    tiny_training_gpu.main(["--data", "memory", "streamed", "--workers", "0", "1", "--batches", "2", "--steps", "1",
                            "--modes", "eager", "--clips", "5", "--work", str(tmp_path), "--device", "cpu"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["memory", "eager"], ["streamed, 0 workers", "eager"],
                                                       ["streamed, 1 workers", "eager"]]
    assert all(row.endswith("| - |") for row in rows)  # no GPU memory on a CPU
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.safetensors", "index.json", "rays.safetensors"]
