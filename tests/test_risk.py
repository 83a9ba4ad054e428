"""Slot sizing and the pre-trade validator (BRIEF §5)."""
from tradelab.core import D
from tradelab.risk import Account, Limits, OpenPosition, Signal, validate, correlation, slot_qty
from tradelab.settings import RiskSection

RISK = RiskSection()
BTC = Limits(D("0.001"), D("0.001"), D(5))
FLAT = Account(D(10000), D(10000), D(10000))


def long(entry=50000, stop=49000, tp=52000, conf="0.8", sym="BTCUSDT"):
    return Signal(sym, "LONG", D(entry), D(stop), D(tp), D(conf))


def test_a_signal_takes_one_slot_scaled_by_confidence():
    d = validate(long(conf="1"), FLAT, RISK, BTC, 5)
    assert d.approved and d.qty == D("0.200")  # 2000 margin x 5 / 50000


def test_confidence_below_the_floor_is_sized_at_the_floor():
    q, _ = slot_qty(long(conf="0.1"), FLAT, RISK, 5)
    assert q == D(10000) / 5 * 5 * RISK.confidence_floor / 50000


def test_risk_per_trade_caps_the_size_when_the_stop_is_wide():
    d = validate(long(stop=45000, tp=60000, conf="1"), FLAT, RISK, BTC, 5)
    assert d.approved and abs(D(50000) - D(45000)) * d.qty <= D("0.02") * FLAT.equity
    assert d.qty == D("0.040")


def test_quantity_is_rounded_down_to_the_instrument_step_not_to_two_decimals():
    lim = Limits(D("0.001"), D("0.001"), D(5))
    d = validate(long(entry=43210, stop=42000, tp=46000, conf="0.77"), FLAT, RISK, lim, 3)
    assert d.qty == d.qty.quantize(D("0.001")) and d.qty * 43210 <= D(2000) * 3


def test_every_failed_rule_is_reported_with_its_reason():
    acct = Account(D(8500), D(10000), D(10000), tuple(OpenPosition(f"X{i}USDT", "LONG", D(1), D(10)) for i in range(5)))
    d = validate(Signal("BTCUSDT", "LONG", D(50000), D(51000), D(50500), D("0.3")), acct, RISK, BTC, 5)
    rules = {f.rule for f in d.failures}
    assert not d.approved and d.qty == 0
    assert rules >= {"levels", "min_confidence", "max_drawdown", "daily_loss_limit", "slots"}
    assert "confidence 0.3 < 0.6" in d.reason


def test_short_levels_must_be_inverted():
    bad = Signal("BTCUSDT", "SHORT", D(50000), D(49000), D(52000), D("0.9"))
    assert [f.rule for f in validate(bad, FLAT, RISK, BTC, 5).failures] == ["levels"]


def test_a_size_under_the_instrument_minimum_is_rejected_not_rounded_up():
    tiny = Account(D(10), D(10), D(10))
    d = validate(long(conf="1"), tiny, RISK, BTC, 1)
    assert not d.approved and d.failures[0].rule == "min_qty"


def test_total_exposure_shrinks_the_new_position():
    open_ = (OpenPosition("ETHUSDT", "LONG", D(3), D(3000)),)  # 9,000 of 10,000 room
    d = validate(long(conf="1"), Account(D(10000), D(10000), D(10000), open_), RISK, BTC, 5)
    assert d.approved and d.adjusted and d.qty * 50000 <= D(1000)


def test_correlated_positions_are_refused():
    a = [0.01, -0.02, 0.03, 0.01, -0.01, 0.02]
    b = [x * 2 + 0.001 for x in a]
    assert correlation(a, b) > 0.99
    acct = Account(D(10000), D(10000), D(10000), (OpenPosition("ETHUSDT", "LONG", D("0.1"), D(3000)),))
    d = validate(long(), acct, RISK, BTC, 5, returns={"BTCUSDT": a, "ETHUSDT": b})
    assert [f.rule for f in d.failures] == ["correlation"]


def test_the_kill_switch_refuses_new_entries():
    d = validate(long(), Account(D(10000), D(10000), D(10000), halted=True), RISK, BTC, 5)
    assert [f.rule for f in d.failures] == ["kill_switch"]
