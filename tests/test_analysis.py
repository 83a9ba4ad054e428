"""Chart analysis end to end: the real openai client against a fake model server on loopback."""
import io, json, shutil
from decimal import Decimal
import pytest
import sqlalchemy as sa
from PIL import Image
from tradelab.analyzer import OpenAIAnalyzer, ModelUnavailable, analyze, spent_today
from tradelab.candles import synthetic_candles
from tradelab.charts import render_chart, ChartSpec, pending_images
from tradelab.cli import main
from tradelab.core import ManualClock, TradelabError
from tradelab.fakellm import start_fake_llm
from tradelab.images import clean_image, load_image
from tradelab.prompts import load_prompts, get_prompt, sync_prompts
from tradelab.settings import Settings
from tradelab.technical import TechnicalAnalyzer

CANDLES = synthetic_candles("BTCUSDT", "60", "2024-03-01", "2024-03-10").iloc[-200:]
PX = float(CANDLES.close.iloc[-1])
PROMPTS = load_prompts("prompts")
GOOD = {"recommendation": "LONG", "confidence": 0.72, "entry_price": PX, "stop_loss": PX * 0.98,
        "take_profit": PX * 1.05, "reasoning": "higher lows", "key_levels": [PX * 0.98, PX * 1.05],
        "time_horizon": "day", "risk_reward_ratio": 2.5, "market_conditions": "trending"}


@pytest.fixture
def fake():
    f = start_fake_llm()
    yield f
    f.stop()


@pytest.fixture
def setup(engine, data_dir):
    return engine, Settings(), ManualClock("2024-03-10T00:05:00Z")


def run(setup, fake, *behaviours, image=None, prompt="chart_read@1", retries=2, timeout=5):
    engine, st, clock = setup
    for b in behaviours: fake.push(*b)
    an = OpenAIAnalyzer("not-a-key-test", fake.base_url, "gpt-4o", timeout=timeout, max_retries=retries)
    img = image or render_chart(CANDLES, "BTCUSDT", "60", ChartSpec(levels=(PX,)))
    return analyze(engine, an, PROMPTS[prompt], "BTCUSDT", "60", st, clock, image_png=img, candles=CANDLES)


def stored(engine):
    with engine.connect() as c:
        return c.exec_driver_sql("select status, reject_reason, raw_response from analyses order by id").fetchall()


def test_a_valid_answer_is_accepted_with_tokens_cost_and_latency(setup, fake):
    r = run(setup, fake, ("json", GOOD))
    assert r["status"] == "accepted" and r["recommendation"] == "LONG" and r["tokens_in"] == 1200
    assert Decimal(r["cost_usd"]) == Decimal("0.0045") and r["latency_ms"] >= 0
    body = fake.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object"} and body["model"] == "gpt-4o"
    assert body["messages"][-1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_fenced_json_is_accepted(setup, fake):
    assert run(setup, fake, ("fenced", GOOD))["status"] == "accepted"


@pytest.mark.parametrize("answer, reason", [
    ({"recommendation": "LONG", "reasoning": "x"}, "confidence: Field required"),
    ({**GOOD, "stop_loss": PX * 1.01}, "LONG needs stop_loss < entry_price < take_profit"),
    ({**GOOD, "take_profit": PX * 1.5}, "50% from the last price"),
    ({**GOOD, "recommendation": "MOON"}, "recommendation"),
])
def test_invalid_answers_are_stored_rejected_with_the_reason(setup, fake, answer, reason):
    r = run(setup, fake, ("json", answer))
    assert r["status"] == "rejected" and reason in r["reject_reason"]
    assert stored(setup[0])[0][2]  # the raw answer is kept


def test_a_confidence_given_as_a_percent_is_read_as_a_fraction(setup, fake):
    r = run(setup, fake, ("json", {**GOOD, "confidence": 87}))
    assert r["status"] == "accepted" and Decimal(r["confidence"]) == Decimal("0.87")


def test_a_refusal_is_stored_and_never_traded(setup, fake):
    r = run(setup, fake, ("refusal", "I can't help with trading advice."))
    assert r["status"] == "rejected" and r["reject_reason"].startswith("model refused") and r["recommendation"] is None


def test_prose_instead_of_json_is_rejected(setup, fake):
    r = run(setup, fake, ("text", "The chart looks bullish to me!"))
    assert r["status"] == "rejected" and "not JSON" in r["reject_reason"]


def test_a_429_then_success_is_retried(setup, fake):
    r = run(setup, fake, ("status", 429), ("json", GOOD))
    assert r["status"] == "accepted" and len(fake.requests) == 2


def test_a_500_storm_gives_up_after_bounded_retries_and_is_recorded(setup, fake):
    for _ in range(6): fake.push("status", 500)
    with pytest.raises(ModelUnavailable, match="error 500"):
        run(setup, fake, retries=2)
    assert len(fake.requests) == 3 and stored(setup[0])[0][0] == "error"


def test_a_model_that_hangs_past_the_timeout_is_an_error_and_the_next_call_works(setup, fake):
    with pytest.raises(ModelUnavailable, match="did not answer"):
        run(setup, fake, ("hang", 3), retries=0, timeout=0.5)
    img2 = render_chart(CANDLES.iloc[:-1], "BTCUSDT", "60")
    assert run(setup, fake, ("json", GOOD), image=img2)["status"] == "accepted"
    assert [r[0] for r in stored(setup[0])] == ["error", "accepted"]


def test_the_same_chart_prompt_and_model_is_served_from_the_cache(setup, fake):
    a = run(setup, fake, ("json", GOOD))
    b = run(setup, fake)
    assert b["cached"] and b["id"] == a["id"] and len(fake.requests) == 1


def test_the_daily_budget_stops_new_calls(setup, fake):
    engine, st, clock = setup
    analysis = {**st.analysis.model_dump(), "daily_budget_usd": "0.004"}
    st = Settings.model_validate({**st.model_dump(), "analysis": analysis})
    run((engine, st, clock), fake, ("json", GOOD))  # 0.0045 spent
    assert spent_today(engine, clock) == Decimal("0.0045")
    with pytest.raises(ModelUnavailable, match="budget"):
        run((engine, st, clock), fake, ("json", GOOD), image=render_chart(CANDLES.iloc[:-2], "BTCUSDT", "60"))
    assert len(fake.requests) == 1


def test_the_technical_analyzer_answers_the_same_contract_offline(setup):
    engine, st, clock = setup
    r = analyze(engine, TechnicalAnalyzer(), PROMPTS["technical@1"], "BTCUSDT", "60", st, clock, candles=CANDLES)
    assert r["status"] == "accepted" and r["model"] == "technical" and Decimal(r["cost_usd"]) == 0
    if r["recommendation"] != "HOLD":
        assert r["stop_loss"] and r["take_profit"]


@pytest.mark.parametrize("data, why", [(b"", "empty"), (b"GIF89a....", "not a PNG"),
                                       (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot be decoded")])
def test_bad_image_files_are_refused_with_the_cause(data, why):
    with pytest.raises(TradelabError, match=why):
        clean_image(data, "x.png")


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    buf = io.BytesIO(); Image.new("1", (20000, 20000)).save(buf, "PNG")  # tiny file, 400M pixels
    p = tmp_path / "bomb.png"; p.write_bytes(buf.getvalue())
    assert p.stat().st_size < 1_000_000
    with pytest.raises(TradelabError, match="pixel limit"):
        load_image(p, max_pixels=40_000_000)


def test_a_huge_file_is_refused(tmp_path):
    p = tmp_path / "huge.png"; p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 2000)
    with pytest.raises(TradelabError, match="byte limit"):
        load_image(p, max_bytes=1000)


def test_charts_are_deterministic():
    assert render_chart(CANDLES, "BTCUSDT", "60") == render_chart(CANDLES, "BTCUSDT", "60")
    assert render_chart(CANDLES, "BTCUSDT", "60") != render_chart(CANDLES.iloc[1:], "BTCUSDT", "60")


def test_the_watched_folder_yields_each_new_image_once_and_reports_bad_files(sqlite_engine, tmp_path):
    (tmp_path / "a.png").write_bytes(render_chart(CANDLES, "BTCUSDT", "60"))
    (tmp_path / "notes.png").write_text("not an image")
    got = list(pending_images(tmp_path, sqlite_engine))
    assert [(p.name, d is not None, e is None) for p, d, e in got] == [("a.png", True, True),
                                                                        ("notes.png", False, False)]


def test_an_unknown_prompt_version_names_the_available_ones():
    with pytest.raises(TradelabError, match="unknown prompt version 'chart_read@9'.*chart_read@1"):
        get_prompt("chart_read@9", "prompts")


def test_editing_a_used_prompt_version_is_refused(engine, tmp_path):
    root = tmp_path / "prompts"; shutil.copytree("prompts", root)
    sync_prompts(engine, root)
    with engine.begin() as c:
        c.exec_driver_sql("insert into analyses (symbol, timeframe, source, status, prompt_version, created_at) "
                          "values ('BTCUSDT', '60', 'manual', 'accepted', 'confluence@1', '2024-01-01T00:00:00+00:00')")
    f = root / "confluence" / "1.md"; f.write_text(f.read_text().replace("three", "two"))
    with pytest.raises(TradelabError, match="immutable"):
        sync_prompts(engine, root)


def test_analyze_command_stores_a_technical_analysis_offline(data_dir, capsys):
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--symbol", "ETHUSDT", "--timeframe", "4h", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] in ("accepted", "rejected")
    assert out["prompt_version"] == "technical@1" and out["timeframe"] == "240"


def test_analyze_command_with_an_image_against_the_fake_model(data_dir, fake, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "not-a-key-test"); monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    img = tmp_path / "shot.png"; img.write_bytes(render_chart(CANDLES, "BTCUSDT", "60"))
    fake.push("json", GOOD)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--image", str(img), "--symbol", "BTCUSDT", "--timeframe", "60",
                 "--prompt", "risk_first@1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "accepted" and out["prompt_version"] == "risk_first@1" and fake.requests


def test_analyze_command_fails_clearly_without_a_model_or_with_a_bad_image(data_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False); monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["db", "upgrade"]) == 0
    assert main(["analyze", "--symbol", "BTCUSDT", "--timeframe", "60", "--prompt", "chart_read@1"]) == 1
    assert "needs a model" in capsys.readouterr().err
    bad = tmp_path / "x.png"; bad.write_text("hello")
    assert main(["analyze", "--image", str(bad), "--prompt", "technical@1"]) == 1
    assert "not a PNG" in capsys.readouterr().err


def analyses_count(data_dir):
    with sa.create_engine(f"sqlite:///{data_dir}/tradelab.db").connect() as c:
        return c.exec_driver_sql("select count(*) from analyses").scalar()


@pytest.fixture
def chart_png(tmp_path):
    p = tmp_path / "chart.png"; p.write_bytes(render_chart(CANDLES, "BTCUSDT", "60"))
    return p


def test_an_image_on_default_settings_without_a_model_is_refused_before_anything_is_stored(
        data_dir, monkeypatch, capsys, chart_png):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False); monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--image", str(chart_png), "--json"]) == 2
    err = capsys.readouterr().err
    assert "--prompt chart_read@1" in err and "OPENAI_API_KEY" in err and "[analysis] analyzer = openai" in err
    assert len(err.strip().splitlines()) == 1 and analyses_count(data_dir) == 0


def test_an_image_sent_to_the_technical_prompt_is_refused_even_with_a_key(data_dir, fake, monkeypatch, capsys,
                                                                          chart_png):
    monkeypatch.setenv("OPENAI_API_KEY", "not-a-key-test"); monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--image", str(chart_png), "--prompt", "technical@1"]) == 2
    assert "--prompt chart_read@1" in capsys.readouterr().err
    assert analyses_count(data_dir) == 0 and not fake.requests


def test_the_refusal_is_exit_code_2_from_the_console_script(tmp_path, chart_png):
    import os, subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["TRADELAB_DATA_DIR"] = str(tmp_path / "d")
    tl = lambda *a: subprocess.run([str(root / ".venv/bin/tradelab"), *a], capture_output=True, text=True, env=env,
                                   cwd=root, timeout=280)
    assert tl("db", "upgrade").returncode == 0
    r = tl("analyze", "--image", str(chart_png))
    assert r.returncode == 2 and "--prompt chart_read@1" in r.stderr and r.stdout == ""


def test_an_image_without_a_prompt_goes_to_the_first_vision_prompt_of_the_registry(data_dir, fake, monkeypatch, capsys,
                                                                                   chart_png):
    monkeypatch.setenv("OPENAI_API_KEY", "not-a-key-test"); monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    fake.push("json", GOOD)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--image", str(chart_png), "--symbol", "BTCUSDT", "--timeframe", "60", "--json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert res["status"] == "accepted" and res["prompt_version"] == "chart_read@1" and res["venue"] is None
    assert "using chart_read@1" in err and "registry" in err and len(fake.requests) == 1
    assert analyses_count(data_dir) == 1


def test_an_image_without_a_prompt_goes_to_the_first_configured_vision_prompt(data_dir, fake, monkeypatch, capsys,
                                                                              chart_png, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "not-a-key-test"); monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    ini = tmp_path / "settings.ini"; ini.write_text("[analysis]\nprompts = technical@1, risk_first@1, confluence@1\n")
    fake.push("json", GOOD)
    assert main([f"--settings={ini}", "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main([f"--settings={ini}", "analyze", "--image", str(chart_png), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["prompt_version"] == "risk_first@1" and "[analysis] prompts" in err


def test_every_model_call_is_logged_with_id_prompt_model_latency_and_cost_but_never_the_key(setup, fake, caplog):
    caplog.set_level("INFO", logger="tradelab.analyzer")
    ok = run(setup, fake, ("json", GOOD))
    bad = run(setup, fake, ("text", "bullish!"), image=render_chart(CANDLES.iloc[:-1], "BTCUSDT", "60"))
    with pytest.raises(ModelUnavailable):
        run(setup, fake, ("status", 500), ("status", 500), retries=1,
            image=render_chart(CANDLES.iloc[:-2], "BTCUSDT", "60"))
    recs = [r for r in caplog.records if r.name == "tradelab.analyzer"]
    assert [r.getMessage() for r in recs] == ["model call started", "model call answered", "model call started",
                                              "model call rejected", "model call started", "model call failed"]
    answered, rejected, failed = recs[1], recs[3], recs[5]
    assert (answered.analysis_id, answered.prompt, answered.model, answered.cost_usd) == (ok["id"], "chart_read@1",
                                                                                          "gpt-4o", "0.0045")
    assert answered.latency_ms >= 0 and rejected.analysis_id == bad["id"] and "not JSON" in rejected.reason
    assert failed.levelname == "WARNING" and "error 500" in failed.reason and failed.analysis_id
    assert not any("not-a-key-test" in str(vars(r)) for r in recs)


def test_analyze_stores_the_venue_it_was_given(setup):
    engine, st, clock = setup
    r = analyze(engine, TechnicalAnalyzer(), PROMPTS["technical@1"], "BTCUSDT", "60", st, clock, candles=CANDLES,
                venue="paper")
    with engine.connect() as c:
        assert r["venue"] == "paper" and c.exec_driver_sql("select venue from analyses").scalar() == "paper"


def test_the_technical_analyzer_does_not_import_the_model_analyzer():
    import subprocess, sys
    code = "import sys, tradelab.technical; print('tradelab.analyzer' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
