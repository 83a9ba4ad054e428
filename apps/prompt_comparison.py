"""Prompt comparison: win rate with its 95% interval, PnL, cost per trade, calibration and a paired comparison.

Serve with `.venv/bin/panel serve apps/prompt_comparison.py` (reads DATABASE_URL or data/tradelab.db); the page is
the dashboard's Prompts page (`tradelab.pages.prompt_comparison`, numbers from `tradelab.service`), over the
real-money record (legacy + live) unless `?venue=paper&venue=live` says otherwise, or `?run=NAME` for a backtest run.
"""
import panel as pn
from tradelab.db import make_engine
from tradelab.pages import prompt_comparison as build

__all__ = ["build"]

if __name__.startswith("bokeh"):
    pn.extension("tabulator")
    _args = pn.state.session_args
    _venues = [v.decode() for v in _args.get("venue", [])] or None
    build(make_engine(), _args.get("run", [b""])[0].decode() or None, _venues).servable(title="tradelab: prompts")
