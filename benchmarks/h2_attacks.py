"""The known HTTP/2 attacks against the gateway's gRPC port, side by side for each transport.

    .venv/bin/python benchmarks/h2_attacks.py [--transports native,grpcio]

Each attack (tests/transport/attacks.py) runs from its own sockets while a well-behaved client on
another connection keeps calling ModelInfer; the table gives what the attacker got, the good
client's latency during the attack against its own baseline, and the daemon's RSS growth. Every
attack is bounded in count and time and targets 127.0.0.1 only. Their pass/fail form is
tests/transport/test_native_attacks.py; this prints the numbers quoted in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "transport"), str(ROOT / "tests" / "reliability"),
                str(ROOT / "examples")]

import attacks  # noqa: E402
from transport_helpers import write_transport_repository  # noqa: E402

ATTACKS = [
    ("rapid reset: 20,000 HEADERS + RST_STREAM", attacks.rapid_reset),
    ("CONTINUATION flood: empty frames, no END_HEADERS", attacks.continuation_flood),
    ("150 connections x unfinished 1 MiB header block", attacks.big_header_blocks),
    ("error echo: 4 KB :path in HPACK, 4,000 references", lambda url: attacks.error_echo(url)[0]),
    ("PING flood, client never reads", attacks.ping_flood_no_read),
    ("SETTINGS flood, client never reads", attacks.settings_flood_no_read),
    ("SETTINGS with 87k entries, 100 streams open", attacks.settings_many_entries),
    ("zero window: 8 conns x 1,000 calls, 16 KB answers", attacks.zero_window),
    ("unread streams: 4 conns x 8 ModelStreamInfer x 100 requests, 16 KB answers", attacks.unread_streams),
    ("64 unfinished 60 MiB messages (4 MiB sent each)", attacks.unfinished_messages),
    ("300 silent TCP connections", attacks.silent_connections),
]


def run_transport(transport: str, repository: Path) -> list[tuple[str, str, str, str]]:
    from daemons import Gateway  # tests/conftest.py

    gw = Gateway(repository, "--grpc-transport", transport, "--max-request-bytes", str(64 << 20),
                 "--header-timeout-s", "5", "--idle-timeout-s", "30")
    rows = []
    try:
        with attacks.GoodClient(gw.grpc_url) as good:
            good.wait_for(200, 10)
            base_p50 = attacks.percentile(good.since(0), 0.5)
            for name, attack in ATTACKS:
                rss0, mark, failures = attacks.rss_mib(gw.proc.pid), good.mark(), good.failures
                t = time.perf_counter()
                try:
                    seen = attack(gw.grpc_url).summary()
                except Exception as exc:  # noqa: BLE001 - a table row, not a crash of the run
                    seen = f"attack raised {type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - t
                during = good.since(mark)
                alive = gw.proc.poll() is None
                rows.append((
                    name, seen if alive else f"{seen}; DAEMON DIED",
                    f"p50 {attacks.percentile(during, 0.5):.1f} / p90 {attacks.percentile(during, 0.9):.1f} / "
                    f"max {max(during, default=float('nan')):.0f} ms ({len(during)} calls, "
                    f"{good.failures - failures} failed; baseline p50 {base_p50:.1f}) in {elapsed:.1f} s",
                    f"{attacks.rss_mib(gw.proc.pid) - rss0:+.0f}",
                ))
                print(f"  {transport}: {name}: {rows[-1][1]}", file=sys.stderr)
                if not alive:
                    break
    finally:
        gw.terminate()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transports", default="native,grpcio")
    args = ap.parse_args()
    repository = write_transport_repository(Path(tempfile.mkdtemp(prefix="h2-attacks-")) / "models")
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.2f}\n")
    for transport in args.transports.split(","):
        rows = run_transport(transport, repository)
        print(f"### grpc_transport: {transport}\n")
        print("| attack | what the attacker got | good client during the attack | RSS MiB |")
        print("| --- | --- | --- | ---: |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
