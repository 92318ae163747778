"""benchmarks/fast_paths.py runs (one implementation, a tiny shape, one repeat) and prints the row of
each mode it applies to, with the ratios and the load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chanattn.fast import implementations


def test_fast_paths_script_runs(tmp_path):
    impl = next(i for i in implementations() if i.requires is None)  # one that needs no build
    modes = {False: ["infer"], True: ["train"], None: ["infer", "train"]}[impl.autograd]
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "fast.txt"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "fast_paths.py"), "--impls",
                           impl.name, "--shapes", "2x16x6x6", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(impl.name)]
    assert [r[:3] for r in rows] == [[impl.name, mode, "2x16x6x6"] for mode in modes]
    assert all(float(v) > 0 for r in rows for v in r[3:6])  # the medians (ms); then the ratios
    assert all(float(v) >= 0 for r in rows for v in r[6:8])
    text = out.read_text()
    assert "load at start" in text
    assert sum(line.startswith(impl.name) for line in text.splitlines()) == len(modes)
