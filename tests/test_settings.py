"""Trading settings are validated at start; secrets stay in the environment."""
from decimal import Decimal

import pytest

from tradelab.config_store import effective_settings, set_setting
from tradelab.core import TradelabError
from tradelab.db import AuditLog, BotConfigHistory
from tradelab.settings import load_env, load_settings, parse_ini

import sqlalchemy as sa
from sqlalchemy.orm import Session


def test_the_shipped_settings_file_is_valid():
    s = load_settings("settings.ini")
    assert s.trading.venue == "sim" and s.analysis.analyzer == "technical"
    assert s.risk.max_risk_per_trade == Decimal("0.02") and s.risk.max_slots == 5


def test_no_settings_file_means_the_documented_defaults(tmp_path):
    s = load_settings(tmp_path / "absent.ini")
    assert s.risk.max_drawdown == Decimal("0.10") and s.risk.max_correlation == Decimal("0.8")


@pytest.mark.parametrize("text, expected", [
    ("[risk]\nmax_slotz = 3\n", "[risk] max_slotz = '3': unknown key"),
    ("[risk]\nmax_slots = three\n", "[risk] max_slots = 'three'"),
    ("[risk]\nmax_risk_per_trade = 1.5\n", "[risk] max_risk_per_trade = '1.5'"),
    ("[trading]\nvenue = moon\n", "[trading] venue = 'moon'"),
    ("[trading]\ntimeframes = 60, 7m\n", "unknown timeframe(s) ['7m']"),
    ("[tradng]\nsymbols = BTCUSDT\n", "[tradng]"),
    ("risk without a section\n", "settings.ini"),
])
def test_a_bad_settings_file_names_the_section_key_and_value(tmp_path, text, expected):
    p = tmp_path / "settings.ini"
    p.write_text(text)
    with pytest.raises(TradelabError) as e:
        load_settings(p)
    assert expected in str(e.value) and str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_secrets_are_refused_in_settings_ini(tmp_path):
    p = tmp_path / "settings.ini"
    p.write_text("[trading]\nbybit_api_secret = abc\n")
    with pytest.raises(TradelabError, match="secrets are never read from settings.ini"):
        load_settings(p)


def test_symbols_are_normalised():
    raw = parse_ini("[trading]\nsymbols = btcusdt, ETH/USDT\n")
    assert load_settings(None, raw).trading.symbols == ["BTCUSDT", "ETHUSDT"]


def test_secrets_print_masked(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "not-a-key-masking-probe-2")
    monkeypatch.setenv("BYBIT_API_SECRET", "s3cr3t-value")
    env = load_env()
    shown = repr(env) + str(env.masked())
    assert "masking-probe" not in shown and "s3cr3t" not in shown
    assert env.openai_api_key.get_secret_value()== "not-a-key-masking-probe-2"


def test_dashboard_overrides_are_validated_stored_and_audited(engine):
    s = set_setting(engine, "risk.max_slots", 3, "alice", "settings.ini")
    assert s.risk.max_slots == 3 and effective_settings(engine, "settings.ini").risk.max_slots == 3
    with pytest.raises(TradelabError, match="max_slots"):
        set_setting(engine, "risk.max_slots", -1, "mallory", "settings.ini")
    set_setting(engine, "risk.max_slots", None, "alice", "settings.ini")
    assert effective_settings(engine, "settings.ini").risk.max_slots == 5
    with Session(engine) as ses:
        hist = ses.scalars(sa.select(BotConfigHistory).order_by(BotConfigHistory.id)).all()
        audits = ses.scalars(sa.select(AuditLog).order_by(AuditLog.id)).all()
    assert [(h.old_value, h.new_value) for h in hist] == [(None, 3), (3, None)]
    assert [(a.actor, a.action, a.target) for a in audits] == [("alice", "config.set", "risk.max_slots"),
                                                                ("alice", "config.unset", "risk.max_slots")]
