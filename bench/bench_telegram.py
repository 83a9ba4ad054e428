"""Telegram notifier: bus event -> sendMessage request at the fake Bot API server (python-telegram-bot for real).

Run: make bench   (or: .venv/bin/python bench/bench_telegram.py [--events 50] [--gap 1.2] [--burst-gap 0.1])
Latency counts everything between `bus.publish` and the request reaching the server: the bus's dispatcher thread,
the hand-over to the bot's loop, the gather window (50 ms), the wait for the chat's slot (Telegram allows about one
message a second per chat) and the HTTP call. Two paces: events slower than the chat's limit (--gap), and a
steady stream faster than it (--burst-gap), where events wait for the next slot and are batched. (A chat's next
slot is booked from Telegram's answer, so events arriving exactly once a second chain on each other and their
latency creeps up by one round trip per message: --gap 1.0 shows it.)
"""
import argparse, os, sys, tempfile, time
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tradelab.core import SystemClock
from tradelab.db import make_engine
from tradelab.events import LocalBus
from tradelab.faketelegram import start_fake_telegram
from tradelab.migrate import upgrade
from tradelab.settings import Settings
from tradelab.telegram import Telegram

CHAT = 4242


def pct(xs, q): xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * q))]


def run(n: int, gap: float, tag: str, engine) -> tuple[list[float], int]:
    "Publish `n` events `gap` seconds apart; each one's latency (ms) to its first sendMessage, and messages sent."
    bus, fake = LocalBus().start(), start_fake_telegram()
    desk = NS(engine=engine, port=None, venue="sim", clock=SystemClock(), settings=Settings)
    bot = Telegram("123456:bench-token", {CHAT}, desk, bus, base_url=fake.base_url).start()
    try:
        sent_at = {}
        for i in range(n):
            t0 = time.monotonic()
            sent_at[f"{tag}-{i}:"] = t0
            bus.publish("run.failed", pipeline="bench", run_key=f"{tag}-{i}", error="x")
            time.sleep(max(0.0, gap - (time.monotonic() - t0)))
        end = time.monotonic() + 10
        msgs = lambda: [(p["text"], at) for m, p, at in list(fake.requests) if m == "sendMessage"]
        while time.monotonic() < end and sum(t.count(" x") for t, _ in msgs()) < n: time.sleep(0.01)
        lat = []
        for key, t0 in sent_at.items():
            at = next((at for t, at in msgs() if f" {key} " in t), None)
            if at is not None: lat.append((at - t0) * 1000)
        return lat, len(msgs())
    finally:
        bot.stop(); fake.stop(); bus.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50)
    ap.add_argument("--gap", type=float, default=1.2)
    ap.add_argument("--burst-gap", type=float, default=0.1)
    a = ap.parse_args()
    engine = make_engine(f"sqlite:///{tempfile.mkdtemp()}/bench.db"); upgrade(engine)
    cmd = f".venv/bin/python bench/bench_telegram.py --events {a.events} --gap {a.gap} --burst-gap {a.burst_gap}"
    for label, gap in (("paced", a.gap), ("stream", a.burst_gap)):
        lat, msgs = run(a.events, gap, label, engine)
        print(f"event -> sendMessage at the fake server, one every {gap:g} s ({label}): p50 {pct(lat, .5):.0f} ms, "
              f"p95 {pct(lat, .95):.0f} ms, max {max(lat):.0f} ms over {len(lat)}/{a.events} events "
              f"in {msgs} messages (aim p95 <= 500 ms)")
    print(f"command: {cmd}")


if __name__ == "__main__":
    main()
