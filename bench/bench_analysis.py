"""Chart analysis: render time, pipeline overhead without the model, cache hits.

Run: make bench   (or: .venv/bin/python bench/bench_analysis.py)
"""
import os, sys, tempfile, time
import statistics as stt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRADELAB_DATA_DIR", tempfile.mkdtemp())
from tradelab.analyzer import OpenAIAnalyzer, analyze
from tradelab.candles import synthetic_candles
from tradelab.charts import render_chart, ChartSpec
from tradelab.db import make_engine
from tradelab.fakellm import start_fake_llm
from tradelab.migrate import upgrade
from tradelab.prompts import load_prompts
from tradelab.settings import Settings

CMD = "python bench/bench_analysis.py"


def timed(f, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    return stt.median(ts), ts[int(len(ts) * 0.95) - 1]


def main():
    print(f"== {CMD}")
    days = synthetic_candles("BTCUSDT", "60", "2024-01-01", "2024-04-01")
    frames = [days.iloc[i:i + 200] for i in range(0, 1500, 7)]
    spec = ChartSpec(emas=(20, 50))
    render_chart(frames[0], "BTCUSDT", "60", spec)
    it = iter(frames * 3)
    med, p95 = timed(lambda: render_chart(next(it), "BTCUSDT", "60", spec), 100)
    print(f"chart render, 200 candles + volume + 2 EMAs, 1024x640 PNG: median {med:.0f} ms, p95 {p95:.0f} ms")
    try:
        import mplfinance  # noqa: F401
    except ImportError:
        print("(mplfinance is not installed here; the issue quotes ~350 ms per chart for it)")
    eng = make_engine(f"sqlite:///{os.environ['TRADELAB_DATA_DIR']}/bench.db"); upgrade(eng)
    good = ("json", {"recommendation": "HOLD", "confidence": 0.5, "reasoning": "bench"})
    fake = start_fake_llm(default=good)
    an = OpenAIAnalyzer("sk-bench", fake.base_url, "gpt-4o", timeout=5, max_retries=0)
    pr, st = load_prompts("prompts")["chart_read@1"], Settings()
    it2 = iter(frames * 3)
    def full():
        c = next(it2)
        analyze(eng, an, pr, "BTCUSDT", "60", st, image_png=render_chart(c, "BTCUSDT", "60", spec), candles=c)
    full()
    med, p95 = timed(full, 60)
    print("pipeline without the model (render -> request -> parse -> validate -> store, zero-latency fake): "
          f"median {med:.0f} ms, p95 {p95:.0f} ms")
    img, c = render_chart(frames[0], "BTCUSDT", "60", spec), frames[0]
    analyze(eng, an, pr, "BTCUSDT", "60", st, image_png=img, candles=c)
    med, p95 = timed(lambda: analyze(eng, an, pr, "BTCUSDT", "60", st, image_png=img, candles=c), 200)
    print(f"cache hit (same image, prompt, model): median {med:.1f} ms, p95 {p95:.1f} ms")
    fake.stop()


if __name__ == "__main__":
    main()
