"""Shared fixtures: real SQLite and PostgreSQL databases, Redis, a clean data directory; markers derived from them."""
import os, uuid
import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("TRADELAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("TRADELAB_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _pg_admin():
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test run (created here, dropped at the end)."""
    name = f"tradelab_t_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'create database "{name}"')
    except Exception as e:  # tests needing PostgreSQL fail, never skip
        pytest.fail(f"PostgreSQL is needed at {PG_ADMIN_URL} (run `make services`): {e}")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as c:
        c.exec_driver_sql(f'drop database if exists "{name}" with (force)')
    admin.dispose()


@pytest.fixture(scope="session")
def _pg_migrated(pg_url):
    from tradelab.db import make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(pg_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _truncate(eng):
    from tradelab.db import Base
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with eng.begin() as c:
        c.exec_driver_sql(f"truncate {names} restart identity cascade")


@pytest.fixture
def sqlite_engine(tmp_path):
    """A migrated SQLite database in a temporary directory."""
    from tradelab.db import make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(f"sqlite:///{tmp_path}/tradelab.db")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def pg_engine(_pg_migrated):
    """The run's migrated PostgreSQL database, emptied before the test."""
    _truncate(_pg_migrated)
    yield _pg_migrated


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request):
    """Each storage test runs against both databases."""
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


@pytest.fixture
def redis_url():
    """Redis database 15, flushed before and after the test."""
    import redis
    r = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        r.flushdb()
    except Exception as e:
        pytest.fail(f"Redis is needed at {REDIS_TEST_URL} (run `make services`): {e}")
    yield REDIS_TEST_URL
    r.flushdb()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty TRADELAB_DATA_DIR, and no DATABASE_URL: the embedded default."""
    d = tmp_path / "data"
    monkeypatch.setenv("TRADELAB_DATA_DIR", str(d))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return d


# Markers are derived here, from what a test uses, so no test file has to remember them (pyproject declares them).
# `pytest -m "not slow"` is the inner loop; `make test` runs everything.
PG_FIXTURES = {"pg_url", "_pg_migrated", "pg_engine"}
# The long tests, node ids without their parameters: over ~3 s each on an idle 2-core machine (measured with
# `pytest --durations`, setup included), plus the kill -9 and browser tests, which start processes by design.
SLOW = {f"tests/{t}" for t in """
test_legacy.py::test_the_full_history_migrates_and_reproduces_the_owners_win_rate
test_legacy.py::test_an_interrupted_run_rerun_ends_complete_without_duplicates
test_legacy.py::test_a_second_run_imports_nothing
test_legacy.py::test_migrate_legacy_command_prints_the_contract_json
test_exchange.py::test_1000_orders_under_random_faults_end_as_one_order_or_one_recorded_rejection_each
test_exchange.py::test_a_crash_between_accept_and_response_is_recovered_without_a_second_order
test_paper.py::test_a_real_second_process_sees_the_account_and_adds_to_it
test_paper.py::test_two_processes_trading_one_paper_account_at_the_same_time_lose_nothing
test_backtest.py::test_backtest_command_prints_json
test_backtest.py::test_backtesting_the_migrated_history_stores_one_outcome_per_analysis_and_run
test_logs.py::test_a_pipeline_run_from_the_cli_logs_json_lines_with_its_run_id_on_stderr
test_apps.py::test_the_prompt_comparison_page_shows_the_report_numbers
test_cli.py::test_db_upgrade_works_on_postgresql
test_cli.py::test_db_upgrade_creates_the_embedded_sqlite_database
test_pipelines.py::test_a_redis_lock_is_shared_between_machines_and_released_only_by_its_owner
test_pipelines.py::test_queued_runs_are_taken_by_a_worker_and_recorded
test_pipelines.py::test_an_unknown_pipeline_names_the_available_ones
test_replay.py::test_replayed_answers_are_dated_in_the_past_on_real_prices_and_scored_by_the_backtest
test_killswitch.py::test_halt_and_resume_commands_flip_the_switch
test_killswitch.py::test_halt_close_all_closes_every_position_on_the_venue_and_says_so
test_analysis.py::test_the_refusal_is_exit_code_2_from_the_console_script
test_crash.py::test_kill_9_at_20_seeded_points_then_reconcile_leaves_the_database_equal_to_the_exchange
test_crash.py::test_kill_9_around_the_entry_on_postgresql_is_repaired_the_same_way
test_browser.py::test_the_served_prompt_comparison_page_lists_every_prompt_with_its_win_rate
test_browser.py::test_a_research_notebook_renders_as_a_voila_page
test_desk.py::test_up_serves_health_and_the_api_runs_the_due_cycle_and_stops_on_sigterm_leaving_no_child
test_api.py::test_analyse_now_by_symbol_or_an_uploaded_chart
test_desk.py::test_health_says_503_and_names_the_exchange_when_it_is_down_and_the_desk_keeps_going
test_desk.py::test_with_redis_unreachable_events_fall_back_to_in_process_and_health_reports_it
test_scheduler.py::test_stop_leaves_no_process_of_a_run_behind
test_scheduler.py::test_a_run_that_raises_is_failed_with_its_error_and_one_that_dies_unrecorded_from_its_exit_code
test_events.py::test_two_processes_on_redis_see_each_others_events_once_each
test_events.py::test_the_watcher_publishes_what_another_process_changes_in_the_database_once_in_order
test_auth.py::test_users_add_reads_the_password_from_stdin_and_users_key_prints_the_key_on_its_last_line
test_streams.py::test_after_the_sockets_drop_the_stream_reconnects_reauthenticates_resubscribes_and_resyncs
test_browser_dashboard.py::test_a_trader_sees_a_tick_move_the_unrealised_pnl_then_closes_the_position_and_finds_the_trade
test_browser_dashboard.py::test_a_viewer_sees_positions_without_any_way_to_close_them
test_browser_dashboard.py::test_every_page_draws_for_an_admin_from_this_server_alone
test_browser_dashboard.py::test_on_the_live_venue_a_wrong_totp_code_is_refused_and_the_position_stays
test_dashboard.py::test_a_viewer_may_read_but_is_refused_the_users_page_and_the_refusal_is_audited
test_dashboard.py::test_every_open_page_shares_one_bus_subscription_and_a_closed_page_leaves_no_watcher
test_dashboard.py::test_a_login_sets_a_signed_http_only_session_cookie_that_opens_the_pages
""".split()}


def _uses_postgresql(item):
    """A PostgreSQL fixture, or the PostgreSQL side of a parametrisation over both databases (`engine[postgresql]`)."""
    callspec = getattr(item, "callspec", None)
    return bool(PG_FIXTURES & set(getattr(item, "fixturenames", ()))) or bool(
        callspec and "postgresql" in callspec.params.values())


def pytest_collection_modifyitems(config, items):
    known, files = {i.nodeid.split("[")[0] for i in items}, {i.nodeid.split("::")[0] for i in items}
    stale = sorted(t for t in SLOW - known if t.split("::")[0] in files and "-k" not in config.invocation_params.args)
    if stale and all("::" not in a for a in config.invocation_params.args):  # a renamed slow test must not go unmarked
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that no longer exist: {stale}")
    for item in items:
        if _uses_postgresql(item): item.add_marker(pytest.mark.pg)
        if "redis_url" in getattr(item, "fixturenames", ()): item.add_marker(pytest.mark.redis)
        if item.path.name.startswith("test_browser"): item.add_marker(pytest.mark.browser)
        if item.nodeid.split("[")[0] in SLOW: item.add_marker(pytest.mark.slow)
