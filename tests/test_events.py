"""The event bus carries what happened on the desk to every subscriber, in order, once, in-process or over Redis."""
import threading
from decimal import Decimal
import pytest
from tradelab.events import KINDS, Event, LocalBus, make_bus


def test_subscribers_get_events_on_a_dispatcher_thread_in_publish_order():
    bus, got, threads = LocalBus().start(), [], set()
    bus.subscribe(lambda e: (got.append(e.data["n"]), threads.add(threading.get_ident())))
    for n in range(200): bus.publish("tick", n=n, symbol="BTCUSDT", mark=Decimal("100.5"))
    assert bus.flush(5)
    assert got == list(range(200)) and threading.get_ident() not in threads and len(threads) == 1
    bus.stop()


def test_a_raising_subscriber_is_logged_and_the_others_still_get_every_event(caplog):
    bus, got = LocalBus().start(), []
    bus.subscribe(lambda e: 1 / 0)
    bus.subscribe(got.append)
    bus.publish("trade.opened", trade_id=1); bus.publish("trade.closed", trade_id=1, pnl=Decimal("-3.25"))
    assert bus.flush(5)
    assert [e.kind for e in got] == ["trade.opened", "trade.closed"] and got[1].data["pnl"] == "-3.25"
    assert bus.state()["subscriber_errors"] == 2 and "event subscriber" in caplog.text
    bus.stop()


def test_a_subscriber_for_some_kinds_gets_only_those_and_can_unsubscribe():
    bus, closes = LocalBus().start(), []
    off = bus.subscribe(closes.append, kinds=["trade.closed"])
    bus.publish("trade.opened", trade_id=1); bus.publish("trade.closed", trade_id=1)
    assert bus.flush(5) and [e.kind for e in closes] == ["trade.closed"]
    off(); bus.publish("trade.closed", trade_id=2)
    assert bus.flush(5) and len(closes) == 1
    with pytest.raises(ValueError, match="unknown event kind"): bus.publish("trade.opend")
    bus.stop()


def test_stop_delivers_what_was_published_then_stops_the_thread_and_is_idempotent():
    bus, got = LocalBus(), []
    bus.subscribe(got.append)
    bus.start()
    for _ in range(50): bus.publish("tick")
    bus.stop(); bus.stop()
    assert len(got) == 50 and not bus.state()["running"]
    bus.publish("tick")  # after stop: dropped, no thread comes back
    assert len(got) == 50 and not bus.state()["running"]


def test_an_event_round_trips_through_json_with_money_as_exact_strings():
    e = Event("trade.closed", {"pnl": Decimal("0.1000000001")})
    back = Event.from_json(e.to_json())
    assert back == Event("trade.closed", {"pnl": "0.1000000001"}, e.at, e.id, e.source) and back.kind in KINDS


def test_make_bus_without_redis_is_in_process():
    bus = make_bus(None)
    assert type(bus) is LocalBus and bus.state()["mode"] == "in-process"
