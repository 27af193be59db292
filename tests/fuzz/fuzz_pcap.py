"""Coverage-guided fuzzing of ``fuzz.targets.pcap_one`` (see docs/fuzzing.md).

.venv/bin/python tests/fuzz/fuzz_pcap.py -max_total_time=600 tests/data/fuzz/pcap
"""

from __future__ import annotations

import sys

from harness import run

if __name__ == "__main__":
    run("targets", "pcap_one", sys.argv)
