"The Bybit V5 simulator through the real pybit client over loopback sockets (HTTP and WebSocket)."
import json, queue, time, urllib.request
import pytest
import requests
from pybit.unified_trading import HTTP
from tradelab.bybit import BybitWebSocket
from pybit.exceptions import InvalidRequestError
from tradelab.simulator import start_in_thread, sign, DEFAULT_KEY, DEFAULT_SECRET

pytestmark = pytest.mark.timeout(180)  # a hang fails fast; a starved machine still passes


@pytest.fixture(scope="module")
def sim():
    h = start_in_thread(port=0, tick_seconds=0.05)
    yield h
    h.stop()


def http(sim, key=DEFAULT_KEY, secret=DEFAULT_SECRET, **kw):
    s = HTTP(testnet=False, api_key=key, api_secret=secret, max_retries=1, **kw)
    s.endpoint = sim.url  # the one override pybit needs to reach the simulator
    return s


class SimWebSocket(BybitWebSocket):
    """pybit's WebSocket (as our adapter subclasses it) pointed at the simulator: pybit formats
    wss://{SUBDOMAIN}.{DOMAIN}..., we swap the host part."""
    def __init__(self, base, channel_type, **kw):
        self._base = base; super().__init__(channel_type, **kw)
    def _connect(self, url):
        super()._connect(self._base + url[url.index("/v5/"):])


def ws(sim, channel, **kw): return SimWebSocket(sim.ws_url, channel, testnet=False, **kw)


def err(fn, **kw):
    with pytest.raises(InvalidRequestError) as ei: fn(**kw)
    return ei.value.status_code


def wait_for(q, pred, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try: m = q.get(timeout=0.2)
        except queue.Empty: continue
        if pred(m): return m
    raise AssertionError("message not received")


def test_market_endpoints_have_bybit_shapes(sim):
    s = http(sim)
    r = s.get_server_time()
    assert r["retCode"] == 0 and set(r) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    page = s.get_instruments_info(category="linear", limit=2)["result"]
    assert len(page["list"]) == 2 and page["nextPageCursor"]
    rest = s.get_instruments_info(category="linear", cursor=page["nextPageCursor"])["result"]["list"]
    btc = next(i for i in page["list"] + rest if i["symbol"] == "BTCUSDT")
    assert btc["priceFilter"]["tickSize"] == "0.1" and btc["lotSizeFilter"]["qtyStep"] == "0.001"
    assert btc["lotSizeFilter"]["minNotionalValue"] == "5" and btc["leverageFilter"]["maxLeverage"] == "100"
    t = s.get_tickers(category="linear", symbol="ETHUSDT")["result"]["list"][0]
    assert isinstance(t["lastPrice"], str) and float(t["bid1Price"]) < float(t["ask1Price"])
    rows = s.get_kline(category="linear", symbol="BTCUSDT", interval="15", limit=1000)["result"]["list"]
    assert len(rows) == 1000 and all(len(r) == 7 and all(isinstance(x, str) for x in r) for r in rows)
    starts = [int(r[0]) for r in rows]
    assert starts == sorted(starts, reverse=True) and starts[0] - starts[1] == 900_000  # newest first
    last = sim.call(lambda: str(sim.engine.last["BTCUSDT"]).rstrip("0").rstrip("."))
    assert rows[0][4] == last or rows[0][4]  # unfinished row present


def test_signed_requests_are_accepted_and_bad_credentials_refused(sim):
    assert http(sim).get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]["coin"][0]["coin"] == "USDT"
    assert err(http(sim, secret="wrong").get_wallet_balance, accountType="UNIFIED") == 10004
    assert err(http(sim, key="nobody").get_wallet_balance, accountType="UNIFIED") == 10003


def test_stale_timestamp_is_10002(sim):
    ts, rw, q = str(int(time.time() * 1000) - 60_000), "5000", "accountType=UNIFIED"
    h = {"X-BAPI-API-KEY": DEFAULT_KEY, "X-BAPI-TIMESTAMP": ts, "X-BAPI-RECV-WINDOW": rw,
         "X-BAPI-SIGN": sign(DEFAULT_SECRET, ts + DEFAULT_KEY + rw + q)}
    assert requests.get(f"{sim.url}/v5/account/wallet-balance?{q}", headers=h).json()["retCode"] == 10002


def test_market_order_ack_then_position_and_executions(sim):
    s = http(sim)
    ack = s.place_order(category="linear", symbol="SOLUSDT", side="Buy", orderType="Market", qty="1.5",
                        orderLinkId="t-mkt-1")["result"]
    assert set(ack) == {"orderId", "orderLinkId"} and ack["orderLinkId"] == "t-mkt-1"
    pos = s.get_positions(category="linear", symbol="SOLUSDT")["result"]["list"][0]
    assert pos["side"] == "Buy" and pos["size"] == "1.5"
    ex = s.get_executions(category="linear", orderId=ack["orderId"])["result"]["list"]
    assert len(ex) == 1 and ex[0]["execQty"] == "1.5" and ex[0]["orderLinkId"] == "t-mkt-1"
    assert s.get_order_history(category="linear", orderLinkId="t-mkt-1")["result"]["list"][0]["orderStatus"] == "Filled"
    s.place_order(category="linear", symbol="SOLUSDT", side="Sell", orderType="Market", qty="1.5", reduceOnly=True)
    assert s.get_closed_pnl(category="linear", symbol="SOLUSDT")["result"]["list"][0]["closedSize"] == "1.5"


def test_duplicate_order_link_id_is_110072(sim):
    s = http(sim)
    s.place_order(category="linear", symbol="XRPUSDT", side="Buy", orderType="Market", qty="10", orderLinkId="dup-1")
    assert err(s.place_order, category="linear", symbol="XRPUSDT", side="Buy", orderType="Market", qty="10",
               orderLinkId="dup-1") == 110072


def test_qty_below_minimum_is_refused_with_bybit_codes(sim):
    s = http(sim)
    assert err(s.place_order, category="linear", symbol="BTCUSDT", side="Buy", orderType="Market",
               qty="0.0001") == 10001
    assert err(s.place_order, category="linear", symbol="DOGEUSDT", side="Buy", orderType="Market", qty="1") == 110094


def test_limit_order_fills_when_price_crosses_and_tp_sl_trigger(sim):
    s = http(sim)
    sim.set_price("ETHUSDT", "3000")
    ack = s.place_order(category="linear", symbol="ETHUSDT", side="Buy", orderType="Limit", qty="0.1", price="2990",
                        takeProfit="3100", stopLoss="2900")["result"]
    open_ = s.get_open_orders(category="linear", symbol="ETHUSDT")["result"]["list"]
    assert [o["orderId"] for o in open_] == [ack["orderId"]]
    sim.set_price("ETHUSDT", "2989.99")
    assert s.get_open_orders(category="linear", symbol="ETHUSDT")["result"]["list"] == []
    pos = s.get_positions(category="linear", symbol="ETHUSDT")["result"]["list"][0]
    assert (pos["size"], pos["takeProfit"], pos["stopLoss"]) == ("0.1", "3100", "2900")
    s.set_trading_stop(category="linear", symbol="ETHUSDT", takeProfit="0", positionIdx=0)
    sim.set_price("ETHUSDT", "3200")
    assert s.get_positions(category="linear", symbol="ETHUSDT")["result"]["list"][0]["size"] == "0.1"
    sim.set_price("ETHUSDT", "2899")
    assert s.get_positions(category="linear", symbol="ETHUSDT")["result"]["list"][0]["size"] == "0"


def test_set_leverage_unchanged_is_110043(sim):
    s = http(sim)
    s.set_leverage(category="linear", symbol="DOGEUSDT", buyLeverage="5", sellLeverage="5")
    assert err(s.set_leverage, category="linear", symbol="DOGEUSDT", buyLeverage="5", sellLeverage="5") == 110043


def test_rate_limit_is_10006_with_limit_headers():
    h = start_in_thread(port=0, rate_limits={"order": 10, "read": 3, "position": 10})
    try:
        codes, last = [], None
        for _ in range(8):  # pybit raises on 10006 after retries: read the raw responses instead
            ts, rw, q = str(int(time.time() * 1000)), "5000", "category=linear"
            hd = {"X-BAPI-API-KEY": DEFAULT_KEY, "X-BAPI-TIMESTAMP": ts, "X-BAPI-RECV-WINDOW": rw,
                  "X-BAPI-SIGN": sign(DEFAULT_SECRET, ts + DEFAULT_KEY + rw + q)}
            last = requests.get(f"{h.url}/v5/position/list?{q}", headers=hd)
            codes.append(last.json()["retCode"])
        assert 10006 in codes and codes[0] == 0
        assert last.headers["X-Bapi-Limit"] == "3" and "X-Bapi-Limit-Status" in last.headers
        assert int(last.headers["X-Bapi-Limit-Reset-Timestamp"]) > time.time() * 1000 - 1000
    finally: h.stop()


def test_faults_change_at_runtime_through_handle_and_admin_endpoint(sim):
    sim.faults.http5xx = 1.0
    assert requests.get(f"{sim.url}/v5/market/time").status_code >= 500
    req = urllib.request.Request(f"{sim.url}/sim/faults", data=json.dumps({"http5xx": 0}).encode(), method="POST")
    assert json.loads(urllib.request.urlopen(req).read())["http5xx"] == 0
    assert requests.get(f"{sim.url}/v5/market/time").json()["retCode"] == 0
    assert requests.get(f"{sim.url}/sim/health").json()["ok"] is True


def test_dropped_response_after_accept_leaves_the_order_on_the_exchange(sim):
    sim.faults.drop_after_accept = 1.0
    try:
        with pytest.raises(Exception):
            http(sim, timeout=5).place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market",
                                             qty="0.001", orderLinkId="drop-1")
    finally: sim.faults.drop_after_accept = 0.0
    rows = http(sim).get_open_orders(category="linear", orderLinkId="drop-1")["result"]["list"]
    assert len(rows) == 1 and rows[0]["orderStatus"] == "Filled"


def test_public_ticker_snapshot_then_delta_through_pybit_websocket(sim):
    raw = queue.Queue()
    w = ws(sim, "linear")
    orig = w._on_message
    w._on_message = lambda m: (raw.put(json.loads(m)), orig(m))
    got = queue.Queue()
    try:
        w.ticker_stream(symbol="BTCUSDT", callback=got.put)
        first = wait_for(raw, lambda m: m.get("topic") == "tickers.BTCUSDT")
        assert first["type"] == "snapshot" and "lastPrice" in first["data"]
        delta = wait_for(raw, lambda m: m.get("topic") == "tickers.BTCUSDT" and m["type"] == "delta")
        assert delta["data"]["symbol"] == "BTCUSDT" and set(delta["data"]) < set(first["data"])  # only changed fields
        merged = wait_for(got, lambda m: True)
        assert merged["data"]["symbol"] == "BTCUSDT" and "bid1Price" in merged["data"]
    finally: w.exit()


def test_kline_stream_pushes_candles(sim):
    got = queue.Queue()
    w = ws(sim, "linear")
    try:
        w.kline_stream(interval=1, symbol="BTCUSDT", callback=got.put)
        m = wait_for(got, lambda m: m.get("topic") == "kline.1.BTCUSDT")
        k = m["data"][0]
        assert {"start", "end", "interval", "open", "close", "high", "low", "volume", "turnover", "confirm",
                "timestamp"} <= set(k)
    finally: w.exit()


def test_private_order_and_execution_topics_after_auth(sim):
    orders, execs = queue.Queue(), queue.Queue()
    w = ws(sim, "private", api_key=DEFAULT_KEY, api_secret=DEFAULT_SECRET)
    try:
        w.order_stream(callback=orders.put); w.execution_stream(callback=execs.put)
        time.sleep(0.3)
        ack = http(sim).place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.002",
                                    orderLinkId="ws-1")["result"]
        e = wait_for(execs, lambda m: any(x["orderId"] == ack["orderId"] for x in m["data"]))
        assert e["topic"] == "execution" and {"id", "creationTime"} <= set(e)
        o = wait_for(orders, lambda m: any(x["orderLinkId"] == "ws-1" and x["orderStatus"] == "Filled"
                                           for x in m["data"]))
        assert o["topic"] == "order"
    finally: w.exit()


def test_private_auth_and_subscribe_acks_and_ping_pong_on_the_wire(sim):
    import websocket
    c = websocket.create_connection(sim.ws_url + "/v5/private", timeout=5)
    try:
        c.send(json.dumps({"op": "subscribe", "req_id": "s0", "args": ["order"]}))
        assert json.loads(c.recv())["success"] is False  # no auth yet
        expires = int(time.time() * 1000) + 10_000
        c.send(json.dumps({"op": "auth", "args": [DEFAULT_KEY, expires, sign("wrong", f"GET/realtime{expires}")]}))
        assert json.loads(c.recv())["success"] is False
        signature = sign(DEFAULT_SECRET, f"GET/realtime{expires}")
        c.send(json.dumps({"op": "auth", "args": [DEFAULT_KEY, expires, signature]}))
        ok = json.loads(c.recv()); assert ok["op"] == "auth" and ok["success"] is True
        c.send(json.dumps({"op": "subscribe", "req_id": "s1", "args": ["order", "execution"]}))
        ack = json.loads(c.recv()); assert ack["success"] is True and ack["req_id"] == "s1" and ack["op"] == "subscribe"
        c.send(json.dumps({"op": "ping", "req_id": "p1"}))
        assert json.loads(c.recv())["op"] == "pong"
    finally: c.close()
    pub = websocket.create_connection(sim.ws_url + "/v5/public/linear", timeout=5)
    try:
        pub.send(json.dumps({"op": "ping", "req_id": "p2"}))
        pong = json.loads(pub.recv()); assert pong["ret_msg"] == "pong" and pong["success"] is True
    finally: pub.close()


def test_bad_auth_is_refused_with_success_false(sim):
    import websocket
    c = websocket.create_connection(sim.ws_url + "/v5/private", timeout=5)
    try:
        expires = int(time.time() * 1000) + 10_000
        c.send(json.dumps({"op": "auth", "args": [DEFAULT_KEY, expires, sign("wrong", f"GET/realtime{expires}")]}))
        r = json.loads(c.recv()); assert r["op"] == "auth" and r["success"] is False
        c.send(json.dumps({"op": "subscribe", "req_id": "s", "args": ["execution"]}))
        assert json.loads(c.recv())["success"] is False
    finally: c.close()


def test_a_subscription_answer_that_arrives_before_pybit_records_the_request_is_not_fatal(sim):
    import threading
    w = ws(sim, "linear")
    try:
        sub = json.dumps({"op": "subscribe", "req_id": "late-1", "args": ["tickers.BTCUSDT"]})
        # pybit sends, then records; here the answer is handled while the record is still 50 ms away
        threading.Timer(0.05, lambda: w.subscriptions.__setitem__("late-1", sub)).start()
        w._process_subscription_message({"success": True, "ret_msg": "", "conn_id": "sim", "req_id": "late-1",
                                         "op": "subscribe"})
        assert w.is_connected()
        got = queue.Queue(); w.ticker_stream(symbol="ETHUSDT", callback=got.put)
        assert wait_for(got, lambda m: m.get("topic") == "tickers.ETHUSDT")  # the socket still works
    finally: w.exit()
