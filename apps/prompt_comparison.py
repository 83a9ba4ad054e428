"""Prompt comparison: win rate with its 95% interval, PnL and calibration per prompt version.

Serve with `.venv/bin/panel serve apps/prompt_comparison.py` (reads DATABASE_URL or data/tradelab.db);
the numbers are those of `tradelab report prompts` and `tradelab report calibration`: both come from
`tradelab.service`, over the real-money record (legacy + live) unless `?venue=paper&venue=live` says otherwise.
"""
import pandas as pd
import panel as pn
import hvplot.pandas  # noqa: F401  (registers .hvplot)
from tradelab import service
from tradelab.db import make_engine


def frames(engine, run: str | None = None, venues=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    "Per-prompt statistics and calibration buckets over `venues` as frames (floats for display only)."
    stats = pd.DataFrame(service.prompt_stats(engine, venues=venues))
    if len(stats):
        stats["ci_low"] = stats["win_rate_ci95"].map(lambda c: float(c[0]) if c else None)
        stats["ci_high"] = stats["win_rate_ci95"].map(lambda c: float(c[1]) if c else None)
        for col in ("total_pnl", "win_rate", "avg_confidence"): stats[col] = pd.to_numeric(stats[col], errors="coerce")
    calib = pd.DataFrame(service.calibration(engine, run=run, venues=venues))
    for col in ("hit_rate", "avg_confidence"):
        if col in calib: calib[col] = pd.to_numeric(calib[col], errors="coerce")
    return stats, calib


def build(engine, run: str | None = None, venues=None) -> pn.viewable.Viewable:
    "The comparison page for one database, over `venues` (default: the real-money record)."
    stats, calib = frames(engine, run, venues)
    covered = pn.pane.Markdown(f"Trades of venues: **{', '.join(venues or service.DEFAULT_VENUES)}**")
    if not len(stats):
        return pn.Column("# Prompt comparison", covered,
                         "No analyses yet: run `tradelab migrate-legacy` or a trading cycle.")
    win = stats.hvplot.bar(x="prompt_version", y="win_rate", ylim=(0, 1), title="Win rate by prompt (closed trades)",
                           height=300)
    pnl = stats.hvplot.bar(x="prompt_version", y="total_pnl", title="Total PnL by prompt", height=300)
    shown = stats.drop(columns=[c for c in ("win_rate_ci95", "venues") if c in stats])
    table = pn.widgets.Tabulator(shown, disabled=True, show_index=False)
    parts = [pn.pane.Markdown("# Prompt comparison"), covered, pn.Row(win, pnl), table]
    if len(calib):
        parts += [pn.pane.Markdown("## Calibration" + (f" (backtest run `{run}`)" if run else " (closed trades)")),
                  calib.hvplot.line(x="avg_confidence", y="hit_rate", title="Hit rate by confidence", height=250)]
    return pn.Column(*parts)


if __name__.startswith("bokeh"):
    pn.extension("tabulator")
    _args = pn.state.session_args
    _venues = [v.decode() for v in _args.get("venue", [])] or None
    build(make_engine(), _args.get("run", [b""])[0].decode() or None, _venues).servable(title="tradelab: prompts")
