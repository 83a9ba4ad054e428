"Matching engine: Bybit's validation codes, fills, PnL, fees, margin, reduce-only, TP/SL -- exact Decimals."
from decimal import Decimal
import pytest
from tradelab.core import D, ManualClock
from tradelab.matching import Engine, SimError


@pytest.fixture
def eng():
    e = Engine(clock=ManualClock("2024-06-01T00:00:00Z"), spread_bps="0")
    e.on_price("BTCUSDT", "50000"); e.on_price("ETHUSDT", "3000")
    return e


def code(fn, *a, **kw):
    with pytest.raises(SimError) as ei: fn(*a, **kw)
    return ei.value.ret_code


def test_market_buy_fills_at_the_touch_and_charges_taker_fee_exactly(eng):
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.1"})
    (p,) = eng.positions()
    assert (p["side"], p["size"], p["avgPrice"]) == ("Buy", "0.1", "50000")
    assert eng.execs[-1]["execFee"] == "2.75"  # 5000 x 0.00055
    assert eng.balance == Decimal("9997.25")


def test_round_trip_realises_pnl_minus_both_fees_exactly(eng):
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.1"})
    eng.on_price("BTCUSDT", "50100.1")
    eng.place({"symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.1", "reduceOnly": True})
    pnl = D("0.1") * D("100.1")
    fees = D("5000") * D("0.00055") + D("5010.01") * D("0.00055")
    assert eng.balance == D("10000") + pnl - fees.quantize(D("0.00000001"))
    assert eng.positions() == []
    assert D(eng.closed[-1]["closedPnl"]) == pnl - (D("5010.01") * D("0.00055")).quantize(D("0.00000001"))


def test_short_gains_when_price_falls(eng):
    eng.place({"symbol": "ETHUSDT", "side": "Sell", "orderType": "Market", "qty": "1"})
    eng.on_price("ETHUSDT", "2900")
    assert D(eng.positions("ETHUSDT")[0]["unrealisedPnl"]) == D("100")


def test_resting_limit_fills_only_when_price_crosses_and_pays_maker_fee(eng):
    ack = eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01", "price": "49000"})
    assert eng.find(open_only=True)[0]["orderId"] == ack["orderId"]
    eng.on_price("BTCUSDT", "49000.1")
    assert eng.find(open_only=True)
    eng.on_price("BTCUSDT", "48999.9")
    assert not eng.find(open_only=True)
    assert eng.execs[-1]["execPrice"] == "49000" and eng.execs[-1]["isMaker"] is True
    assert eng.execs[-1]["execFee"] == "0.098"  # 490 x 0.0002


def test_take_profit_and_stop_loss_trigger_on_last_price(eng):
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01", "takeProfit": "51000",
               "stopLoss": "49000"})
    eng.on_price("BTCUSDT", "50900"); assert eng.positions()
    eng.on_price("BTCUSDT", "51000"); assert eng.positions() == []
    assert eng.orders[eng.execs[-1]["orderId"]]["stopOrderType"] == "TakeProfit"
    eng.place({"symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.01", "stopLoss": "51500"})
    eng.on_price("BTCUSDT", "51600"); assert eng.positions() == []
    assert eng.orders[eng.execs[-1]["orderId"]]["stopOrderType"] == "StopLoss"


def test_trading_stop_zero_cancels_a_level(eng):
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01", "stopLoss": "49000"})
    eng.trading_stop("BTCUSDT", stop_loss="0")
    eng.on_price("BTCUSDT", "48000")
    assert eng.positions()[0]["stopLoss"] == "0" and eng.positions()[0]["size"] == "0.01"


def test_reduce_only_never_opens_or_flips(eng):
    sell = {"symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.01", "reduceOnly": True}
    assert code(eng.place, sell) == 110017
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01"})
    eng.place({"symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.05", "reduceOnly": True})
    assert eng.positions() == []


def test_opposite_order_larger_than_position_flips_it(eng):
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01"})
    eng.place({"symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.03"})
    (p,) = eng.positions()
    assert (p["side"], p["size"], p["avgPrice"]) == ("Sell", "0.02", "50000")


def test_leverage_sets_margin_and_insufficient_balance_is_110007(eng):
    big = {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "3"}
    assert code(eng.place, big) == 110007  # 150k / 10x > 10k
    eng.set_leverage("BTCUSDT", "50")
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "3"})
    assert D(eng.wallet()["list"][0]["coin"][0]["totalPositionIM"]) == D("3000")
    assert code(eng.set_leverage, "BTCUSDT", "50") == 110043
    assert code(eng.set_leverage, "BTCUSDT", "101") == 10001


def test_validation_codes_match_bybit(eng):
    base = {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market"}
    assert code(eng.place, {**base, "qty": "0.0005"}) == 10001          # not a multiple of qtyStep
    assert code(eng.place, {**base, "qty": "0"}) == 10001
    assert code(eng.place, {**base, "symbol": "NOPEUSDT", "qty": "1"}) == 10001
    assert code(eng.place, {**base, "orderType": "Limit", "qty": "0.001", "price": "50000.05"}) == 10001  # off tick
    assert code(eng.place, {**base, "orderType": "Limit", "qty": "0.001", "price": "4000"}) == 110094     # 4 USDT < 5
    eng.place({**base, "qty": "0.001", "orderLinkId": "x-1"})
    assert code(eng.place, {**base, "qty": "0.001", "orderLinkId": "x-1"}) == 110072
    assert code(eng.place, {**base, "qty": "0.001", "orderLinkId": "bad id!"}) == 10001


def test_cancel_removes_open_order_and_unknown_is_110001(eng):
    a = eng.place({"symbol": "BTCUSDT", "side": "Sell", "orderType": "Limit", "qty": "0.01", "price": "60000",
                   "orderLinkId": "c1"})
    eng.cancel({"orderLinkId": "c1"})
    assert eng.orders[a["orderId"]]["orderStatus"] == "Cancelled" and not eng.find(open_only=True)
    assert code(eng.cancel, {"orderId": a["orderId"]}) == 110001


def test_events_reach_subscribers_in_order(eng):
    got = []
    eng.listeners.append(lambda topic, data: got.append(topic))
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01"})
    assert got == ["order", "order", "execution", "position", "wallet"]


def test_exec_time_comes_from_the_injected_clock(eng):
    eng.clock.advance(60)
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01"})
    assert eng.execs[-1]["execTime"] == str(eng.clock.ms())


def test_a_position_whose_margin_is_gone_is_liquidated_as_a_bust_trade(eng):
    eng.set_leverage("BTCUSDT", "20")
    eng.place({"symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.1"})  # 250 USDT of margin
    (p,) = eng.positions()
    assert (p["liqPrice"], p["bustPrice"]) == ("52250", "52500")
    eng.on_price("BTCUSDT", "52249.9"); assert eng.positions()
    eng.on_price("BTCUSDT", "52250")
    x = eng.execs[-1]
    assert eng.positions() == [] and (x["execType"], x["createType"], x["stopOrderType"], x["execPrice"]) == (
        "BustTrade", "CreateByLiq", "", "52500")
    assert eng.balance == D(10000) - 250 - D("2.75") - D("2.8875")


def test_the_account_survives_a_round_trip_through_json_exactly(eng):
    import json
    eng.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.013", "takeProfit": "51000.1"})
    eng.place({"symbol": "ETHUSDT", "side": "Sell", "orderType": "Limit", "qty": "0.5", "price": "3100.01",
               "orderLinkId": "r"})
    eng.set_leverage("ETHUSDT", "3")
    back = Engine.from_state(json.loads(json.dumps(eng.state())), clock=eng.clock, spread_bps="0")
    assert back.state() == eng.state() and back.equity() == eng.equity() and back.wallet() == eng.wallet()
    back.on_price("BTCUSDT", "51000.1")
    assert back.positions() == []
    assert back.execs[-1]["stopOrderType"] == "TakeProfit" and back.execs[-1]["seq"] == eng.seq + 1
