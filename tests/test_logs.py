"""Logs: stderr lines or JSON lines, levels from the environment, secrets never written."""
import io, json, logging, os, subprocess
from pathlib import Path

import pytest
from tradelab.logs import setup_logging

ROOT = Path(__file__).resolve().parents[1]
PROBE = "not-a-key-log-probe-7f3a"  # plainly not a key: what a key in the environment would be
SECRET = "not-a-secret-log-probe-91c2"


@pytest.fixture
def logs():
    "Configure logging into a buffer for the given environment; the handler is removed afterwards."
    handlers, buf = [], io.StringIO()
    def setup(env):
        handlers.append(setup_logging(env, stream=buf)); return buf
    yield setup
    for h in handlers: logging.getLogger().removeHandler(h)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_api_key_in_a_log_record_comes_out_masked(logs, fmt):
    buf = logs({"TRADELAB_LOG": fmt, "BYBIT_API_KEY": PROBE, "BYBIT_API_SECRET": SECRET})
    log = logging.getLogger("tradelab.test")
    log.info("signing with %s and %s", PROBE, SECRET, extra={"header": f"X-BAPI-API-KEY: {PROBE}"})
    log.warning("GET /v5/order/realtime?api_key=abc123&sign=deadbeef&symbol=BTCUSDT")
    try: raise RuntimeError(f"refused key {PROBE}")
    except RuntimeError: log.exception("order failed")
    out = buf.getvalue()
    assert PROBE not in out and SECRET not in out and "abc123" not in out and "deadbeef" not in out
    assert "api_key=***" in out and "sign=***" in out and "symbol=BTCUSDT" in out and "refused key ***" in out


def test_json_mode_gives_one_parseable_object_per_line_with_the_ids(logs):
    buf = logs({"TRADELAB_LOG": "json", "TRADELAB_LOG_LEVEL": "debug"})
    log = logging.getLogger("tradelab.cycle")
    log.debug("entry placed", extra={"trade_id": 7, "order_link_id": "tl-7-entry"})
    log.info("two\nlines")
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["message"] for r in rows] == ["entry placed", "two\nlines"]
    assert rows[0]["trade_id"] == 7 and rows[0]["order_link_id"] == "tl-7-entry"
    assert {"time", "level", "logger"} <= rows[0].keys()
    assert rows[0]["level"] == "DEBUG" and rows[0]["logger"] == "tradelab.cycle"


def test_other_libraries_stay_quiet_below_warning_and_setup_twice_logs_once(logs):
    buf = logs({}); logs({})
    logging.getLogger("urllib3.connectionpool").info("chatter")
    logging.getLogger("tradelab.x").info("decision")
    assert buf.getvalue().count("decision") == 1 and "chatter" not in buf.getvalue()


def test_a_pipeline_run_from_the_cli_logs_json_lines_with_its_run_id_on_stderr(tmp_path):
    import nbformat as nbf
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbf.v4.new_code_cell("run_id = None"); p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbf.v4.new_code_cell("1 + 1")]
    (tmp_path / "pipes").mkdir(); nbf.write(nb, tmp_path / "pipes" / "tiny.ipynb")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(TRADELAB_DATA_DIR=str(tmp_path / "data"), TRADELAB_LOG="json", OPENAI_API_KEY=PROBE,
               TRADELAB_PIPELINES_DIR=str(tmp_path / "pipes"))
    tl = str(ROOT / ".venv" / "bin" / "tradelab")
    subprocess.run([tl, "db", "upgrade"], capture_output=True, text=True, env=env, check=True, timeout=120)
    r = subprocess.run([tl, "run", "tiny"], capture_output=True, text=True, env=env, timeout=280)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pipeline tiny run 1: ok")
    # the notebook's kernel writes its own stderr; our lines are the JSON objects
    rows = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert [(x["logger"], x["run_id"]) for x in rows] == [("tradelab.pipelines", 1)] * 2
    assert "started" in rows[0]["message"] and "finished" in rows[1]["message"] and PROBE not in r.stderr
