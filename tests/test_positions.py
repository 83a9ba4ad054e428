"""Positions rebuilt from fills agree with simple arithmetic, in exact decimals."""
import random
from decimal import Decimal
from tradelab.core import D
from tradelab.positions import Book, book_from_fills, trade_pnl


def test_a_round_trip_realises_exactly_the_price_difference_times_size_minus_fees():
    b = book_from_fills("ETHUSDT", [dict(side="Buy", qty="0.37", price="3012.55", fee="0.61"),
                                    dict(side="Sell", qty="0.37", price="3100.05", fee="0.63")])
    assert b.size == 0 and b.realised == D("32.375") and b.net_realised == D("31.135")
    assert b.net_realised == trade_pnl("LONG", "0.37", "3012.55", "3100.05", "1.24")


def test_a_fill_larger_than_the_position_flips_it_at_the_fill_price():
    b = Book("BTCUSDT").apply("Buy", "0.5", 100).apply("Sell", "0.8", 90)
    assert b.side == "SHORT" and b.size == D("-0.3") and b.avg_entry == 90 and b.realised == D(-5)


def test_realised_plus_unrealised_equals_cash_flow_for_random_fill_sequences():
    rng = random.Random(7)
    for _ in range(200):
        b, cash = Book("X"), Decimal(0)
        for _ in range(rng.randint(1, 12)):
            side, q, p = rng.choice(["Buy", "Sell"]), D(rng.randint(1, 50)) / 10, D(rng.randint(900, 1100))
            b.apply(side, q, p)
            cash += -q * p if side == "Buy" else q * p
        last = D(1000)
        # the average entry is a ratio: equal to 28 significant digits
        assert abs(b.realised + b.unrealised(last) - (cash + b.size * last)) < D("1e-18")
