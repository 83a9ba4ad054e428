"""Rebuild the fixtures in this folder from Bybit's public V5 docs (github.com/bybit-exchange/docs).

Usage: python tests/bybit_examples/extract.py DOCS_GIT_DIR  (a clone or mirror of bybit-exchange/docs)
Each NAME.json holds the page's path, the docs commit, the "Response Example" (REST) or "Stream Example"
(WebSocket) as Bybit prints it, and every field name its "Response Parameters" table documents.
"""
import json, re, subprocess, sys
from pathlib import Path

PAGES = {"rest_market_time": "market/time", "rest_instruments_info": "market/instrument",
         "rest_tickers": "market/tickers", "rest_kline": "market/kline",
         "rest_wallet_balance": "account/wallet-balance",
         "rest_order_create": "order/create-order", "rest_order_cancel": "order/cancel-order",
         "rest_order_realtime": "order/open-order", "rest_order_history": "order/order-list",
         "rest_execution_list": "order/execution", "rest_closed_pnl": "position/close-pnl",
         "rest_position_list": "position/position", "rest_trading_stop": "position/trading-stop",
         "rest_set_leverage": "position/leverage", "ws_order": "websocket/private/order",
         "ws_execution": "websocket/private/execution", "ws_position": "websocket/private/position",
         "ws_wallet": "websocket/private/wallet", "ws_tickers": "websocket/public/ticker",
         "ws_kline": "websocket/public/kline"}


def example(text: str) -> dict:
    "The first JSON object of the page's first json block after its Response/Stream Example heading."
    at = max(text.find("### Response Example"), text.find("### Stream Example"))
    block = text[text.index("```json", at) + 7:]
    return json.JSONDecoder().raw_decode(block[block.index("{"):])[0]


def documented(text: str) -> list[str]:
    "Every field name in the page's Response Parameters table."
    at = text.find("### Response Parameters")
    end = text.find("\n###", at + 5)
    section = text[at:end if end > 0 else None].split("</TabItem>")[0]  # tabbed pages: the linear tab comes first
    names = []
    for line in section.splitlines():
        m = re.match(r"^\s*(?:\||<td>)\s*(?:>|&gt;)*\s*(?:\[|<a [^>]*>)?([A-Za-z0-9_]+)", line)
        if m: names.append(m.group(1))
    return sorted(set(names) - {"Parameter"})


def main(docs: str):
    commit = subprocess.check_output(["git", "-C", docs, "rev-parse", "HEAD"], text=True).strip()
    for name, page in PAGES.items():
        path = f"docs/v5/{page}.mdx"
        text = subprocess.check_output(["git", "-C", docs, "show", f"HEAD:{path}"], text=True)
        out = {"doc": path, "source": "https://github.com/bybit-exchange/docs", "docs_commit": commit,
               "example": example(text), "documented": documented(text)}
        Path(__file__).with_name(f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
