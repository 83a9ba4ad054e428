"""Cut the shipped sample of real candles (data/sample/candles/) out of ../shared/data.

    .venv/bin/python tools/make_sample.py [SHARED_DATA_DIR] [OUT_DIR]

BTCUSDT, ETHUSDT, SOLUSDT: 1h (Binance spot) and 15m (Bybit USDT perpetual) for 2024-01-01 .. 2025-12-31,
one Parquet file per symbol, interval and calendar year (each well under the 2 MB a file may weigh),
rows and values unchanged (schema: start timestamp[ms, UTC], open high low close volume float64), zstd level 19.
Prints one line per file: name, rows, first and last candle, missing candles, size.
"""
import sys
from pathlib import Path
import pandas as pd

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
SOURCES = {"1h": "binance_spot", "15m": "bybit_perp"}
STEP = {"1h": pd.Timedelta(hours=1), "15m": pd.Timedelta(minutes=15)}
YEARS = [2024, 2025]
MAX_BYTES = 2_000_000


def cut(src: Path, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    for sym in SYMBOLS:
        for iv, venue in SOURCES.items():
            df = pd.read_parquet(src / f"{sym}_{iv}_{venue}.parquet")
            for y in YEARS:
                part = df[df["start"].dt.year == y].reset_index(drop=True)
                name = f"{sym}_{iv}_{venue}_{y}.parquet"
                part.to_parquet(out / name, index=False, compression="zstd", compression_level=19)
                size = (out / name).stat().st_size
                assert size < MAX_BYTES, f"{name} is {size} bytes"
                full = pd.date_range(f"{y}-01-01", f"{y + 1}-01-01", freq=STEP[iv], inclusive="left", tz="UTC")
                gaps = len(full) - len(part)
                print(f"{name}\t{len(part)}\t{part['start'].iat[0]}\t{part['start'].iat[-1]}\t{gaps}\t{size}")


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    cut(Path(sys.argv[1] if len(sys.argv) > 1 else root.parent / "shared" / "data"),
        Path(sys.argv[2] if len(sys.argv) > 2 else root / "data" / "sample" / "candles"))
