"""Fuzzing with hypothesis: model replies through the real analyzer and cycle, and the risk rules as properties.

Short by default (a few hundred examples in `make test`); `make soak` (TRADELAB_SOAK=full) runs 1,000 replies and
more risk examples.
"""
import collections, itertools, json, os
from decimal import Decimal
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy.orm import Session
from tradelab.analyzer import OpenAIAnalyzer, analyze
from tradelab.bybit import BybitPort, make_http
from tradelab.candles import synthetic_candles
from tradelab.core import D, ManualClock
from tradelab.cycle import act_all
from tradelab.db import Analysis, Order, make_engine
from tradelab.fakellm import start_fake_llm
from tradelab.migrate import upgrade
from tradelab.prompts import ModelUnavailable, load_prompts
from tradelab.risk import Account, Limits, OpenPosition, Signal, drawdown, day_loss, validate
from tradelab.settings import RiskSection, Settings
from tradelab.simulator import DEFAULT_KEY, DEFAULT_SECRET, start_in_thread

FULL = os.environ.get("TRADELAB_SOAK") == "full"
REPLIES = 1000 if FULL else 100
RISK_EXAMPLES = 5000 if FULL else 200
CANDLES = synthetic_candles("BTCUSDT", "60", "2024-03-01", "2024-03-10").iloc[-200:]
PX = D(f"{CANDLES.close.iloc[-1]:.10g}")
PROMPT = load_prompts("prompts")["chart_read@1"]
FIGURES = {"replies": 0, "valid": 0, "invalid": 0, "accepted": 0, "rejected": 0, "error": 0, "orders": 0,
           "orders_from_invalid": 0, "unrecorded": 0}
FUZZ = settings(max_examples=REPLIES, deadline=None, derandomize=not FULL, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ---------- model replies ----------

def _num(x, places=2) -> float:
    return float(round(x, places))


@st.composite
def good_levels(draw, side=None, tradeable=False):
    """A LONG or SHORT the contract accepts: levels ordered and within 25% of the last price (`tradeable`: one the
    default risk rules can approve too)."""
    side = side or draw(st.sampled_from(["LONG", "SHORT"]))
    e = PX * D(str(1 + draw(st.floats(-0.05, 0.05))))
    a = D(str(draw(st.floats(0.005, 0.05 if tradeable else 0.15))))
    b = a * 2 if tradeable else D(str(draw(st.floats(0.005, 0.15))))
    s, t = (e * (1 - a), e * (1 + b)) if side == "LONG" else (e * (1 + a), e * (1 - b))
    return {"recommendation": side, "entry_price": _num(e), "stop_loss": _num(s), "take_profit": _num(t),
            "confidence": draw(st.floats(0.7 if tradeable else 0, 1)), "reasoning": draw(st.text(max_size=40)),
            "time_horizon": draw(st.sampled_from(["scalp", "day", "swing"])), "key_levels": [_num(s), _num(t)]}


HOLD = st.fixed_dictionaries({"recommendation": st.sampled_from(["HOLD", "hold", " Hold "]),
                              "confidence": st.floats(0, 1), "reasoning": st.text(max_size=40)})
THINK = st.text(max_size=60).map(lambda t: f"<think>{t.replace('<', '')}</think>\n")


@st.composite
def valid_reply(draw):
    """(kind, text) of a reply that must be accepted."""
    obj = draw(st.one_of(good_levels(tradeable=True), good_levels(), HOLD))
    if draw(st.booleans()): obj["confidence"] = round(obj["confidence"] * 98 + 1.5, 1)  # "72" meaning 72% (1.5..99.5)
    body = json.dumps(obj)
    wrap = draw(st.sampled_from(["plain", "fenced", "think"]))
    if wrap == "fenced": body = f"Here you go:\n```json\n{body}\n```"
    if wrap == "think": body = draw(THINK) + body
    return "text", body


@st.composite
def wrong_side(draw):
    obj = draw(good_levels())
    k = draw(st.sampled_from(["stop_loss", "take_profit", "swap"]))
    if k == "swap": obj["stop_loss"], obj["take_profit"] = obj["take_profit"], obj["stop_loss"]
    else: obj[k] = obj["entry_price"] + (obj["entry_price"] - obj[k])  # mirrored through the entry
    return obj


@st.composite
def far_levels(draw):
    """A LONG with one level further than 25% from the last price."""
    k, v = draw(st.sampled_from([("stop_loss", PX * D("0.6")), ("take_profit", PX * 3), ("take_profit", PX * 10**6),
                                 ("entry_price", PX * D("1.3"))]))
    obj = draw(good_levels(side="LONG"))
    obj[k] = _num(v)
    if k == "entry_price": obj["take_profit"] = _num(v * 2)  # still ordered: only the distance is wrong
    return obj


NOT_NUMBERS = ["NaN", "nan", "Infinity", "-Infinity", "inf", "-inf", "", "12abc", "1,5", [], {}, True]
HUGE = ["9" * 5000, "1e999999999", "1" + "0" * 400]  # past Python's digit limit, past the database, past reason
BAD_NUMBERS = {"confidence": NOT_NUMBERS + HUGE + [None, "-0.5"], "entry_price": NOT_NUMBERS + HUGE + ["-0", "1e-99"],
               "stop_loss": NOT_NUMBERS + HUGE + ["0"], "take_profit": NOT_NUMBERS + HUGE + ["-1"],
               "risk_reward_ratio": NOT_NUMBERS + HUGE + ["-1", "1e12"], "key_levels": NOT_NUMBERS + [None, "9" * 5000]}


@st.composite
def bad_number(draw):
    """A good LONG/SHORT with one number that is not a number, not finite, or absurd (as a string or bare JSON)."""
    obj = draw(good_levels())
    k = draw(st.sampled_from(sorted(BAD_NUMBERS)))
    v = draw(st.sampled_from(BAD_NUMBERS[k]))
    obj[k] = [v] if k == "key_levels" else v
    text = json.dumps(obj)
    bare = isinstance(v, str) and v and (v in ("NaN", "Infinity", "-Infinity") or v.lstrip("-")[0].isdigit())
    if bare and draw(st.booleans()): text = text.replace(f'"{v}"', v)  # a bare JSON number (or NaN, JSON5-style)
    return text


def _truncated(draw, body: str) -> str:
    return body[:draw(st.integers(0, len(body) - 1))]


@st.composite
def invalid_reply(draw):
    """(kind, text) of a reply that must never become an order."""
    kind = draw(st.sampled_from(["truncated", "prose", "broken", "think_only", "think_draft", "refusal", "wrong_side",
                                 "far", "bad_number", "bad_confidence", "unknown_field_values", "missing", "not_object",
                                 "empty"]))
    good = json.dumps(draw(good_levels()))
    if kind == "truncated": return "text", _truncated(draw, draw(st.sampled_from([good, f"```json\n{good}\n```"])))
    if kind == "prose": return "text", draw(st.text(max_size=200).filter(lambda t: "{" not in t))
    if kind == "broken":
        return "text", draw(st.sampled_from([good.replace('"', "'"), good[:-1] + ",}", good.replace(":", "=", 1),
                                             "{" + good, good.replace("{", "[", 1)]))
    if kind == "think_only": return "text", f"<think>{good}"  # the model ran out of tokens while thinking
    if kind == "think_draft":  # a draft inside the thinking; the answer itself says no trade in prose
        return "text", f"<think>maybe\n```json\n{good}\n```\n</think>\nOn reflection I would not trade this chart."
    if kind == "refusal": return "refusal", draw(st.sampled_from(["I can't help with trading advice.", "Sorry."]))
    if kind == "wrong_side": return "text", json.dumps(draw(wrong_side()))
    if kind == "far": return "text", json.dumps(draw(far_levels()))
    if kind == "bad_number": return "text", draw(bad_number())
    obj = json.loads(good)
    if kind == "bad_confidence": obj["confidence"] = draw(st.sampled_from([-0.1, 101, 1000, "high", "1e5"]))
    if kind == "unknown_field_values":
        k, v = draw(st.sampled_from([("recommendation", "BUY"), ("recommendation", ""), ("recommendation", 1),
                                     ("time_horizon", "forever"), ("market_conditions", "sunny")]))
        obj[k] = v
    if kind == "missing": obj.pop(draw(st.sampled_from(["recommendation", "confidence", "entry_price", "stop_loss",
                                                        "take_profit"])))
    if kind == "not_object": return "text", json.dumps(draw(st.sampled_from([[obj], "LONG", 1, None])))
    if kind == "empty": return "text", draw(st.sampled_from(["", "   ", "\n", "```json\n```"]))
    return "text", json.dumps(obj)


@pytest.fixture(scope="module")
def desk(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    eng = make_engine(f"sqlite:///{d}/fuzz.db"); upgrade(eng)
    fake, sim = start_fake_llm(), start_in_thread(rate_limits={"order": 10**6, "read": 10**6, "position": 10**6})
    sim.set_price("BTCUSDT", str(PX))
    port = BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, sim.url, timeout=5), "sim", backoff=0.01)
    an = OpenAIAnalyzer("not-a-key", fake.base_url, "fake-vision", timeout=5, max_retries=0)
    yield eng, fake, port, an, Settings(), ManualClock("2024-03-10T00:05:00Z"), itertools.count(), sim
    fake.stop(); sim.stop(); eng.dispose()


def _flatten(engine):
    for p in engine.positions():
        engine.place({"symbol": p["symbol"], "side": "Sell" if p["side"] == "Buy" else "Buy", "orderType": "Market",
                      "qty": p["size"], "reduceOnly": True})


def _one(desk, reply, valid: bool, symbol: str = "BTCUSDT") -> dict:
    """One reply through the fake model, the analyzer and the cycle's act step; what became of it."""
    eng, fake, port, an, st_, clock, n, sim = desk
    fake.push(*reply)
    try: res = analyze(eng, an, PROMPT, symbol, "60", st_, clock, image_png=b"chart-%d" % next(n), candles=CANDLES,
                       save_image=False, venue="sim")
    except ModelUnavailable: res = None
    with Session(eng) as s: row = s.scalars(sa.select(Analysis).order_by(Analysis.id.desc()).limit(1)).first()
    acts = act_all(eng, port, [res], st_, "sim", clock, halted=False) if res else []
    with Session(eng) as s: orders = s.scalars(sa.select(Order).where(Order.analysis_id == row.id)).all()
    if orders: sim.call(_flatten, sim.engine)  # the position closes (its stop, say): the next signal has a free slot
    FIGURES["replies"] += 1; FIGURES["valid" if valid else "invalid"] += 1; FIGURES[row.status] += 1
    FIGURES["orders"] += len(orders); FIGURES["orders_from_invalid"] += 0 if valid else len(orders)
    FIGURES["unrecorded"] += row.status != "accepted" and not row.reject_reason
    for act in acts: FIGURES.setdefault("decisions", collections.Counter())[act["decision"]] += 1
    return {"row": row, "orders": orders, "acts": acts}


@FUZZ
@given(st.one_of(valid_reply().map(lambda r: (r, True)), invalid_reply().map(lambda r: (r, False))))
def test_fuzzed_model_replies_are_each_recorded_and_only_valid_ones_can_become_orders(desk, case):
    reply, valid = case
    out = _one(desk, reply, valid)
    row = out["row"]
    assert row.raw_response == reply[1] or (reply[0] == "refusal" and row.raw_response == reply[1])
    if valid: assert row.status == "accepted", (reply, row.reject_reason)
    else:
        assert row.status in ("rejected", "error") and row.reject_reason, (reply, row.status)
        assert out["orders"] == [] and out["acts"] == []
    for act in out["acts"]:  # an accepted LONG/SHORT: placed, or refused by risk with the rule named
        assert act["decision"] in ("placed", "rejected", "in doubt") and (act["decision"] == "placed" or act["reason"])


def test_a_valid_reply_for_a_symbol_the_exchange_does_not_list_places_no_order_and_says_why(desk):
    reply = ("text", json.dumps({"recommendation": "LONG", "confidence": 0.9, "entry_price": float(PX),
                                 "stop_loss": float(PX * D("0.98")), "take_profit": float(PX * D("1.06"))}))
    out = _one(desk, reply, True, symbol="FOOUSDT")
    assert out["orders"] == [] and out["acts"][0]["decision"] in ("rejected", "error") and out["acts"][0]["reason"]


def test_fuzz_figures(desk):
    """Runs last in the module: the totals of the fuzzing above (printed in the full soak)."""
    print("fuzz:", json.dumps(FIGURES))
    assert FIGURES["orders_from_invalid"] == 0 and FIGURES["unrecorded"] == 0, FIGURES


# ---------- risk rules as properties ----------

STEPS = [D("0.001"), D("0.01"), D("0.1"), D(1), D(10)]
money = lambda lo, hi: st.decimals(lo, hi, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def risk_section(draw):
    f = lambda lo, hi: st.decimals(lo, hi, places=3, allow_nan=False, allow_infinity=False)
    return RiskSection(max_risk_per_trade=draw(f("0.001", "0.2")), max_total_exposure=draw(f("0.01", "1")),
                       max_drawdown=draw(f("0.01", "1")), daily_loss_limit=draw(f("0.01", "1")),
                       min_confidence=draw(f("0", "1")), min_reward_risk=draw(f("0", "5")),
                       max_slots=draw(st.integers(1, 10)), confidence_floor=draw(f("0", "1")))


@st.composite
def case(draw):
    risk = draw(risk_section())
    equity = draw(money("-100", "10000000"))
    peak = max(equity, D(0)) + draw(money("0", "1000000"))
    day0 = draw(money("0", "10000000"))
    price = draw(st.decimals("0.0001", "200000", places=4, allow_nan=False, allow_infinity=False))
    step = draw(st.sampled_from(STEPS))
    limits = Limits(step, step * draw(st.integers(1, 10)), draw(money("0", "100")))
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "AVAXUSDT"]
    book = tuple(OpenPosition(sym, draw(st.sampled_from(["LONG", "SHORT"])), draw(money("0.01", "1000")),
                              draw(money("0.01", "100000")))
                 for sym in draw(st.lists(st.sampled_from(syms), unique=True, max_size=6)))
    side = draw(st.sampled_from(["LONG", "SHORT", "HOLD"]))
    a, b = (draw(st.decimals("-0.5", "0.9", places=4, allow_nan=False, allow_infinity=False)) for _ in range(2))
    sl, tp = (price * (1 - a), price * (1 + b)) if side != "SHORT" else (price * (1 + a), price * (1 - b))
    sig = Signal(draw(st.sampled_from(syms)), side, price, sl, tp, draw(st.decimals("0", "1", places=3)))
    acct = Account(equity, peak, day0, book, draw(st.booleans()))
    return sig, acct, risk, limits, draw(st.integers(1, 100))


@settings(max_examples=RISK_EXAMPLES, deadline=None, derandomize=not FULL, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case())
def test_no_order_the_risk_rules_approve_breaks_a_rule(c):
    sig, acct, risk, limits, lev = c
    d = validate(sig, acct, risk, limits, lev)
    if not d.approved:
        assert d.qty == 0 and d.failures and d.reason
        return
    q, e = d.qty, sig.entry
    assert q > 0 and q % limits.qty_step == 0 and q >= limits.min_qty and q * e >= limits.min_notional
    assert q * abs(e - sig.stop_loss) <= risk.max_risk_per_trade * acct.equity, "max risk per trade"
    held = sum((p.notional for p in acct.positions), Decimal(0))
    assert held + q * e <= risk.max_total_exposure * acct.equity * lev, "total exposure"
    assert len(acct.positions) < risk.max_slots, "slots"
    assert sig.symbol not in {p.symbol for p in acct.positions}, "one position per symbol"
    assert sig.reward_risk >= risk.min_reward_risk, "min reward/risk"
    assert sig.confidence >= risk.min_confidence, "confidence"
    assert drawdown(acct) < risk.max_drawdown and day_loss(acct) < risk.daily_loss_limit, "drawdown / daily loss"
    assert not acct.halted and acct.equity > 0
    if sig.side == "LONG": assert 0 < sig.stop_loss < e < sig.take_profit
    else: assert sig.side == "SHORT" and 0 < sig.take_profit < e < sig.stop_loss
