"""Run every benchmark in bench/ in turn (`make bench`); each prints its own side-by-side ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["storage.py", "codec_quality.py", "regen.py", "trainer.py", "topk.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    failures = 0
    for name in BENCHES:
        print(f"\n=== bench/{name} ===", flush=True)
        failures += subprocess.run([sys.executable, str(here / name)], check=False).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
