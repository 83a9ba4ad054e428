"""The full fault soak of issue 14: 1,000 order intents under faults, 50 stream drops of 1-30 s, and the fuzzing
at its full size (1,000 model replies, the risk properties).

Run: make soak   (or: TRADELAB_SOAK=full .venv/bin/python tools/soak.py; SOAK_PARTS=orders,streams,fuzz picks parts)
The short version of the same code runs in `make test` (tests/test_soak.py, tests/test_fuzz.py).
"""
import json, os, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
os.environ["TRADELAB_SOAK"] = "full"
import logging  # noqa: E402
import pytest  # noqa: E402
from tradelab.db import make_engine  # noqa: E402
from tradelab.migrate import upgrade  # noqa: E402
import test_soak  # noqa: E402

CMD = "make soak"


def engine(d, name):
    e = make_engine(f"sqlite:///{d}/{name}.db"); upgrade(e)
    return e


def main() -> int:
    logging.basicConfig(level=logging.CRITICAL)  # the injected faults log warnings and errors by the thousand
    t0, bad, rc = time.monotonic(), 0, 0
    parts = os.environ.get("SOAK_PARTS", "orders,streams,fuzz").split(",")
    with tempfile.TemporaryDirectory() as d:
        if "orders" in parts:
            orders = test_soak.order_soak(engine(d, "orders"), int(os.environ.get("SOAK_INTENTS", 1000)))
            print("orders:", json.dumps({k: v for k, v in orders.items() if k != "examples"}), flush=True)
            bad += any(orders[k] for k in ("duplicates", "lost", "mismatched", "stray_on_exchange", "fills_missing",
                                           "fills_extra"))
        if "streams" in parts:
            streams = test_soak.stream_soak(engine(d, "streams"), int(os.environ.get("SOAK_DROPS", 50)), 1, 30)
            print("streams:", json.dumps(streams), flush=True)
            bad += bool(streams["fills_missed"] or streams["fills_applied_twice"])
    if "fuzz" in parts:
        rc = pytest.main(["-q", "-s", "-p", "no:cacheprovider", os.path.join(ROOT, "tests", "test_fuzz.py")])
    print(f"soak: {'FAILED' if bad or rc else 'ok'} in {time.monotonic() - t0:.0f}s  ({CMD})")
    return 1 if bad or rc else 0


if __name__ == "__main__":
    sys.exit(main())
