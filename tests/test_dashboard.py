"""The dashboard's server, without a browser: logins, sessions, cookies, roles, actions checked on the server, one
bus subscription per process. A real desk (tradelab.desk.Desk with the simulator, a bus and the database watcher)
served on a loopback port; requests are plain HTTP."""
import datetime as dt, time

import pytest
import requests
import websocket
from argon2 import PasswordHasher
from tornado.web import create_signed_value

from dashboard_desk import PASSWORD, Served, add_users, make_desk, open_position, stop_desk
from tradelab import auth, service
from tradelab.dashboard import SESSION_COOKIE, PositionsView, act, check_action, session_user
from tradelab.live import LiveStore, PageContext
from tradelab.server import routes


@pytest.fixture(scope="module", autouse=True)
def cheap_hashes():
    """Production keeps argon2's default cost; these tests hash with the cheapest parameters."""
    old, auth.HASHER = auth.HASHER, PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    yield
    auth.HASHER = old


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    desk = make_desk(tmp_path_factory.mktemp("dash"), streams=False)
    add_users(desk)
    srv = Served(desk, routes(desk), unused_session_lifetime_milliseconds=300,
                 check_unused_sessions_milliseconds=200)
    yield srv
    srv.stop(); stop_desk(desk)


def _login(url, name, password=PASSWORD, **form):
    s = requests.Session()
    r = s.post(url + "/login", data={"username": name, "password": password, **form}, allow_redirects=False)
    return s, r


def _refused_to_login_page(r):
    return r.status_code == 302 and "login" in r.headers["Location"]


def _ctx(desk, name, live=None):
    """A page context for `name` holding a live session, as a page built for them would."""
    user = auth.authenticate(desk.engine, name, PASSWORD, "127.0.0.1", desk.clock)
    return PageContext(desk, session_user(desk, auth.create_session(desk.engine, user, desk.clock)), live)


def _ws_refused(url, cookies=None, origin=None):
    """Whether the desk page's WebSocket handshake is refused."""
    header = [f"Cookie: {'; '.join(f'{k}={v}' for k, v in (cookies or {}).items())}"] if cookies else []
    try: websocket.create_connection(url.replace("http", "ws") + "/desk/ws", header=header, timeout=10,
                                     origin=origin or url).close()
    except websocket.WebSocketBadStatusException: return True
    return False


def test_only_health_and_the_login_page_answer_without_a_session(served):
    url = served.url
    assert requests.get(url + "/health").json()["database"]["ok"] is True
    assert 'name="username"' in requests.get(url + "/login").text
    for path in ("/desk", "/positions", "/analyses", "/performance", "/prompts", "/config", "/runs", "/users",
                 "/desk/autoload.js?bokeh-autoload-element=x"):
        assert _refused_to_login_page(requests.get(url + path, allow_redirects=False)), path
    assert requests.get(url + "/", allow_redirects=False).headers["Location"] == "/desk"
    assert _ws_refused(url)


def test_a_login_sets_a_signed_http_only_session_cookie_that_opens_the_pages(served):
    s, r = _login(served.url, "tia", next="/positions")
    assert r.status_code == 302 and r.headers["Location"] == "/positions"
    cookie = next(c for c in s.cookies if c.name == SESSION_COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Strict"
    page = s.get(served.url + "/positions", allow_redirects=False)
    assert page.status_code == 200 and "tradelab · Positions" in page.content.decode()
    assert not _ws_refused(served.url, dict(s.cookies))
    assert _ws_refused(served.url, dict(s.cookies), origin="http://evil.example:8080")  # another site's page


def test_after_logout_a_copied_session_cookie_is_refused_on_pages_and_websockets(served):
    s, _ = _login(served.url, "tia")
    copied = dict(s.cookies)
    assert s.get(served.url + "/desk", allow_redirects=False).status_code == 200
    assert "Logged out" in s.get(served.url + "/logout").text
    assert _refused_to_login_page(requests.get(served.url + "/desk", cookies=copied, allow_redirects=False))
    assert _ws_refused(served.url, copied)
    assert service.audit_entries(served.desk.engine, 5, actor="tia", action="logout")


def test_a_forged_tampered_or_expired_session_cookie_is_refused(served):
    desk = served.desk
    secret = auth.cookie_secret(desk.data_dir)
    tia = auth.authenticate(desk.engine, "tia", PASSWORD, "127.0.0.1", desk.clock)
    expired = auth.create_session(desk.engine, tia, desk.clock, ttl=dt.timedelta(seconds=-1))
    s, _ = _login(served.url, "tia")
    good = s.cookies[SESSION_COOKIE]
    for value in (create_signed_value("not our secret", SESSION_COOKIE, auth.create_session(desk.engine, tia,
                                                                                              desk.clock)),
                  create_signed_value(secret, SESSION_COOKIE, "a-token-the-server-never-issued"),
                  create_signed_value(secret, SESSION_COOKIE, expired),
                  good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb"), "plain-text"):
        cookies = {SESSION_COOKIE: value if isinstance(value, str) else value.decode()}
        assert _refused_to_login_page(requests.get(served.url + "/desk", cookies=cookies, allow_redirects=False))


def test_a_viewer_may_read_but_is_refused_the_users_page_and_the_refusal_is_audited(served):
    vic, _ = _login(served.url, "vic")
    assert vic.get(served.url + "/desk", allow_redirects=False).status_code == 200
    assert vic.get(served.url + "/users", allow_redirects=False).status_code == 403
    ann, _ = _login(served.url, "ann")
    assert ann.get(served.url + "/users", allow_redirects=False).status_code == 200
    (entry,) = service.audit_entries(served.desk.engine, 1, actor="vic", action="page.refused")
    assert entry["target"] == "/users"


def test_a_viewer_gets_no_action_buttons_and_the_server_refuses_a_close_anyway(served):
    desk = served.desk
    open_position(desk, "ETHUSDT", "Sell", "0.1", price="3000")
    view = PositionsView(_ctx(desk, "vic"))
    assert not view.can and "Close selected" not in repr(view.layout())
    ok, why = act(view.ctx, "positions.close", "ETHUSDT",
                  lambda: service.close_position(desk.engine, desk.port, desk.venue, "ETHUSDT", desk.clock))
    assert not ok and why == "a viewer may not positions.close"
    assert [p["symbol"] for p in service.positions(desk.port)] == ["ETHUSDT"]
    (entry,) = service.audit_entries(desk.engine, 1, actor="vic", action="positions.close.refused")
    assert entry["details"]["reason"] == why
    service.close_position(desk.engine, desk.port, desk.venue, "ETHUSDT", desk.clock)


def test_a_stop_loss_on_the_wrong_side_is_refused_with_the_reason_and_nothing_changes(served):
    desk = served.desk
    open_position(desk, "BTCUSDT", "Buy", "0.01", price="60000")
    view = PositionsView(_ctx(desk, "tia"))
    view.positions.selection = [0]
    view.sl.value = "61000"
    view.modify_selected(); view.confirm.run()
    assert view.msg.alert_type == "danger" and "stop loss" in view.msg.object
    assert service.positions(desk.port)[0]["stop_loss"] is None
    assert service.audit_entries(desk.engine, 1, actor="tia")[0]["action"] == "positions.tpsl.refused"
    view.sl.value, view.tp.value = "59000", ""
    view.modify_selected(); view.confirm.run()
    assert view.msg.alert_type == "success" and service.positions(desk.port)[0]["stop_loss"] == 59000
    view.positions.selection = [0]; view.close_selected(); view.confirm.run()
    assert "trade" in view.msg.object and service.positions(desk.port) == []


def test_a_session_ended_after_the_page_opened_cannot_act(served):
    desk = served.desk
    ctx = _ctx(desk, "tia")
    auth.revoke_session(desk.engine, ctx.user["token"], desk.clock)
    assert check_action(ctx, "killswitch.halt", desk.venue) == "your session has ended: log in again"
    assert service.status(desk.engine, desk.port, desk.settings(), desk.clock)["halted"] is False


def test_every_open_page_shares_one_bus_subscription_and_a_closed_page_leaves_no_watcher(served):
    s, _ = _login(served.url, "tia")
    live = served.dash.live
    for _ in range(3): assert s.get(served.url + "/desk", allow_redirects=False).status_code == 200
    assert [sub for sub in served.desk.bus._subs if getattr(sub[0], "__self__", None) is live].__len__() == 1
    deadline = time.monotonic() + 30  # unused sessions are dropped after 0.3 s here (15 s by default)
    while live.watchers and time.monotonic() < deadline: time.sleep(0.1)
    assert live.watchers == 0


def test_on_the_live_venue_trading_actions_need_a_fresh_totp_code(tmp_path):
    import pyotp
    desk = make_desk(tmp_path, venue="live", watcher=False, streams=False)
    try:
        add_users(desk, {"tia": "trader"})
        secret = auth.enroll_totp(desk.engine, "tia", desk.data_dir, "test", desk.clock)["secret"]
        ctx, code = _ctx(desk, "tia", LiveStore()), pyotp.TOTP(secret).now()
        wrong = "000000" if code != "000000" else "111111"
        assert check_action(ctx, "positions.close", "BTCUSDT", wrong) == "TOTP refused: wrong TOTP code"
        assert check_action(ctx, "positions.close", "BTCUSDT", None).startswith("TOTP refused")
        assert check_action(ctx, "positions.close", "BTCUSDT", code) is None
        assert "already used" in check_action(ctx, "positions.tpsl", "BTCUSDT", code)
        assert check_action(ctx, "killswitch.halt", "live") is None  # halting never waits for a code
    finally:
        stop_desk(desk)


def test_wrong_passwords_are_refused_then_throttled_even_with_the_right_one(tmp_path):
    desk = make_desk(tmp_path, watcher=False, streams=False)
    srv = Served(desk)
    try:
        add_users(desk, {"tia": "trader"})
        for _ in range(auth.LIMIT):
            _, r = _login(srv.url, "tia", "a wrong password")
            assert r.status_code == 401 and "wrong user name or password" in r.text
        s, r = _login(srv.url, "tia")
        assert r.status_code == 429 and "too many attempts" in r.text and SESSION_COOKIE not in s.cookies
        actions = [e["action"] for e in service.audit_entries(desk.engine, 10, actor="tia")]
        assert "login.throttled" in actions and "login.failed" in actions
    finally:
        srv.stop(); stop_desk(desk)
    with pytest.raises(requests.ConnectionError): requests.get(srv.url + "/login", timeout=5)


def test_a_user_with_totp_enrolled_logs_in_only_with_a_fresh_code(tmp_path):
    import pyotp
    from tradelab.core import ManualClock
    desk = make_desk(tmp_path, watcher=False, streams=False)
    desk.clock = clock = ManualClock("2026-01-05T12:00:00Z")  # the login handler reads the desk's clock
    srv = Served(desk)
    try:
        add_users(desk, {"tia": "trader"})
        totp = pyotp.TOTP(auth.enroll_totp(desk.engine, "tia", desk.data_dir, "test", clock)["secret"])
        auth.verify_totp(desk.engine, "tia", totp.at(clock.now()), desk.data_dir, clock)  # enrolment confirmed
        _, r = _login(srv.url, "tia")
        assert r.status_code == 401 and "tia needs a TOTP code to log in" in r.text
        _, r = _login(srv.url, "tia", totp=totp.at(clock.now()))
        assert r.status_code == 401 and "already used" in r.text
        clock.advance(30)
        s, r = _login(srv.url, "tia", totp=totp.at(clock.now()))
        assert r.status_code == 302 and SESSION_COOKIE in s.cookies
    finally:
        srv.stop(); stop_desk(desk)
