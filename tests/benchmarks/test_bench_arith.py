"""Smoke test: the arithmetic benchmark runs (``--quick``) and writes well-formed JSON.

Timings are not asserted (they live in benchmarks/RESULTS.md); correctness flags are.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bench_arith_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_arith.py"), "--quick", "--out", str(out)],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )
    data = json.loads(out.read_text())
    text = json.dumps(data)
    for fmt in ("bf16", "fp16", "fp8_e4m3", "fp4_e2m1"):
        assert fmt in text
    assert "emulate" in data
    # every recorded bit-exactness check against ml_dtypes must hold
    flags = []

    def collect(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k.startswith("round_to_bitwise_equal"):
                    flags.append(v)
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(data)
    assert flags and all(f is True for f in flags), flags
