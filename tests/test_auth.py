"""Dashboard and API auth: passwords, throttling, sessions, TOTP, API keys, roles, the users command, migration 0006."""
import datetime as dt, os, subprocess, uuid
from pathlib import Path

import pyotp
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from tradelab import auth
from tradelab.auth import AuthError, Forbidden
from tradelab.core import ManualClock, TradelabError
from tradelab.db import ApiKey, AuditLog, User, UserSession, make_engine, sessions
from tradelab.migrate import downgrade, head_revision, upgrade

ROOT = Path(__file__).resolve().parents[1]
TL = str(ROOT / ".venv" / "bin" / "tradelab")
PW = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch):
    """Production keeps argon2's default cost; these tests hash with the cheapest parameters."""
    monkeypatch.setattr(auth, "HASHER", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))


@pytest.fixture
def clock():
    return ManualClock("2024-06-01T12:00:00Z")


def _users(eng, clock):
    auth.add_user(eng, "ann", PW, "admin", "setup", clock)
    auth.add_user(eng, "tia", "trader password 1", "trader", "ann", clock)
    return eng


def _refused(fn, *args, says=""):
    with pytest.raises(AuthError) as e:
        fn(*args)
    assert says in str(e.value)
    return str(e.value)


# --- passwords and throttling ---

def test_the_right_password_logs_in_and_a_wrong_one_is_refused(engine, clock):
    _users(engine, clock)
    assert auth.authenticate(engine, "ann", PW, "10.0.0.1", clock).role == "admin"
    assert _refused(auth.authenticate, engine, "ann", PW + "!", "10.0.0.1", clock) == "wrong user name or password"


def test_an_unknown_name_is_refused_exactly_like_a_wrong_password(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    assert _refused(auth.authenticate, sqlite_engine, "nobody", PW, "10.0.0.1", clock) == "wrong user name or password"


def test_the_sixth_attempt_is_refused_even_with_the_right_password_until_the_window_passes(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    for _ in range(5):
        _refused(auth.authenticate, sqlite_engine, "ann", "guess", "10.0.0.9", clock, says="wrong")
        clock.advance(10)
    msg = _refused(auth.authenticate, sqlite_engine, "ann", PW, "10.0.0.1", clock, says="too many attempts")
    assert msg == "too many attempts, try again in 850 s"  # the first failure leaves the 15-minute window then
    clock.advance(849)
    _refused(auth.authenticate, sqlite_engine, "ann", PW, "10.0.0.1", clock, says="too many attempts, try again in 1 s")
    clock.advance(1)
    assert auth.authenticate(sqlite_engine, "ann", PW, "10.0.0.1", clock).name == "ann"


def test_one_address_guessing_many_names_is_throttled_while_other_addresses_are_not(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    for name in ("ann", "tia", "bob", "eve", "joe"):
        _refused(auth.authenticate, sqlite_engine, name, "guess", "203.0.113.7", clock, says="wrong")
    _refused(auth.authenticate, sqlite_engine, "tia", "trader password 1", "203.0.113.7", clock, says="too many")
    assert auth.authenticate(sqlite_engine, "tia", "trader password 1", "10.0.0.2", clock).name == "tia"


def test_a_success_clears_the_names_count_but_not_the_addresses(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    for _ in range(4):
        _refused(auth.authenticate, sqlite_engine, "ann", "guess", "203.0.113.7", clock)
    auth.authenticate(sqlite_engine, "tia", "trader password 1", "203.0.113.7", clock)  # the attacker's own account
    auth.authenticate(sqlite_engine, "ann", PW, "10.0.0.1", clock)
    _refused(auth.authenticate, sqlite_engine, "ann", "guess", "203.0.113.7", clock, says="wrong")
    _refused(auth.authenticate, sqlite_engine, "ann", PW, "203.0.113.7", clock, says="too many")
    assert auth.authenticate(sqlite_engine, "ann", PW, "10.0.0.1", clock).name == "ann"


def test_a_password_shorter_than_12_characters_is_refused_without_echoing_it(sqlite_engine, clock):
    with pytest.raises(TradelabError) as e:
        auth.add_user(sqlite_engine, "bob", "hunter2", "viewer", "ann", clock)
    assert "at least 12 characters" in str(e.value) and "hunter2" not in str(e.value)


def test_a_reset_gives_a_one_time_password_that_must_be_changed_and_ends_sessions(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    token = auth.create_session(sqlite_engine, auth.authenticate(sqlite_engine, "tia", "trader password 1"), clock)
    otp = auth.reset_password(sqlite_engine, "tia", "ann", clock)
    assert auth.check_session(sqlite_engine, token, clock) is None
    _refused(auth.authenticate, sqlite_engine, "tia", "trader password 1", None, clock)
    assert auth.authenticate(sqlite_engine, "tia", otp, None, clock).must_change_password
    auth.change_password(sqlite_engine, "tia", otp, "a new long password", None, clock)
    assert not auth.authenticate(sqlite_engine, "tia", "a new long password", None, clock).must_change_password


def test_a_disabled_user_cannot_log_in_and_their_sessions_and_keys_stop_working(engine, clock):
    _users(engine, clock)
    token = auth.create_session(engine, auth.authenticate(engine, "tia", "trader password 1", None, clock), clock)
    key = auth.create_api_key(engine, "tia", "bot", "ann", clock)
    auth.disable_user(engine, "tia", "ann", clock)
    _refused(auth.authenticate, engine, "tia", "trader password 1", None, clock, says="tia is disabled")
    assert auth.check_session(engine, token, clock) is None and auth.check_api_key(engine, key, clock) is None
    auth.disable_user(engine, "tia", "ann", clock, disabled=False)
    assert auth.check_api_key(engine, key, clock).name == "tia"


def test_the_last_enabled_admin_can_be_neither_demoted_nor_disabled(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    for change in (lambda: auth.set_role(sqlite_engine, "ann", "trader", "ann", clock),
                   lambda: auth.disable_user(sqlite_engine, "ann", "ann", clock)):
        with pytest.raises(TradelabError, match="last enabled admin"):
            change()
    auth.set_role(sqlite_engine, "tia", "admin", "ann", clock)
    assert auth.set_role(sqlite_engine, "ann", "viewer", "tia", clock).role == "viewer"


# --- sessions ---

def test_a_session_works_until_it_expires(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    token = auth.create_session(sqlite_engine, auth.authenticate(sqlite_engine, "ann", PW, None, clock), clock,
                                ttl=dt.timedelta(hours=1))
    clock.advance(3599)
    assert auth.check_session(sqlite_engine, token, clock).name == "ann"
    clock.advance(1)
    assert auth.check_session(sqlite_engine, token, clock) is None


def test_a_logged_out_session_token_no_longer_works(engine, clock):
    _users(engine, clock)
    user = auth.authenticate(engine, "ann", PW, "10.0.0.1", clock)
    token, other = (auth.create_session(engine, user, clock, "10.0.0.1", "pytest") for _ in range(2))
    assert auth.revoke_session(engine, token, clock)
    assert auth.check_session(engine, token, clock) is None  # the copied cookie is refused by the server
    assert auth.check_session(engine, other, clock).name == "ann" and not auth.revoke_session(engine, token, clock)
    assert auth.check_session(engine, "forged-" + token, clock) is None
    assert auth.check_session(engine, "", clock) is None


# --- TOTP ---

def test_a_totp_code_is_accepted_once_and_replayed_or_wrong_codes_are_refused(engine, clock, tmp_path):
    _users(engine, clock)
    secret = auth.enroll_totp(engine, "tia", tmp_path, "ann", clock)["secret"]
    code = pyotp.TOTP(secret).at(clock.now())
    assert auth.verify_totp(engine, "tia", code, tmp_path, clock).totp_enabled
    _refused(auth.verify_totp, engine, "tia", code, tmp_path, clock, says="already used")
    clock.advance(25)
    _refused(auth.verify_totp, engine, "tia", code, tmp_path, clock, says="already used")  # still within its window
    wrong = f"{(int(pyotp.TOTP(secret).at(clock.now())) + 1) % 1_000_000:06d}"
    _refused(auth.verify_totp, engine, "tia", wrong, tmp_path, clock, says="wrong TOTP code")
    clock.advance(30)
    assert auth.verify_totp(engine, "tia", pyotp.TOTP(secret).at(clock.now()), tmp_path, clock).name == "tia"


def test_totp_guesses_are_throttled(sqlite_engine, clock, tmp_path):
    _users(sqlite_engine, clock)
    secret = auth.enroll_totp(sqlite_engine, "tia", tmp_path, "ann", clock)["secret"]
    right = pyotp.TOTP(secret).at(clock.now())
    for guess in [f"{(int(right) + i) % 1_000_000:06d}" for i in range(100, 105)]:
        _refused(auth.verify_totp, sqlite_engine, "tia", guess, tmp_path, clock, says="wrong")
    _refused(auth.verify_totp, sqlite_engine, "tia", right, tmp_path, clock, says="too many attempts")


def test_totp_secrets_are_encrypted_with_a_private_key_file_and_the_cookie_secret_persists(sqlite_engine, clock,
                                                                                            tmp_path):
    _users(sqlite_engine, clock)
    secret = auth.enroll_totp(sqlite_engine, "tia", tmp_path, "ann", clock)["secret"]
    with sessions(sqlite_engine)() as s:
        stored = s.scalar(sa.select(User.totp_secret_enc).where(User.name == "tia"))
    assert secret not in stored and (tmp_path / auth.TOTP_KEY_FILE).stat().st_mode & 0o777 == 0o600
    cookie = auth.cookie_secret(tmp_path)
    assert len(cookie) >= 32 and auth.cookie_secret(tmp_path) == cookie
    assert (tmp_path / auth.COOKIE_SECRET_FILE).stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other"
    _refused(auth.verify_totp, sqlite_engine, "tia", pyotp.TOTP(secret).at(clock.now()), other, clock,
             says="does not decrypt")


# --- API keys ---

def test_an_api_key_works_and_forged_or_revoked_keys_are_refused(engine, clock):
    _users(engine, clock)
    key = auth.create_api_key(engine, "tia", "bot", "ann", clock)
    assert key.startswith("tl_") and auth.check_api_key(engine, key, clock).role == "trader"
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for bad in (forged, "tl_" + "x" * 43, key[3:], "", None):
        assert auth.check_api_key(engine, bad, clock) is None
    assert auth.revoke_api_key(engine, "tia", key[:10], "ann", clock) == 1
    assert auth.check_api_key(engine, key, clock) is None


def test_keys_and_session_tokens_are_stored_only_as_hashes(sqlite_engine, clock):
    _users(sqlite_engine, clock)
    key = auth.create_api_key(sqlite_engine, "tia", "bot", "ann", clock)
    token = auth.create_session(sqlite_engine, auth.authenticate(sqlite_engine, "ann", PW, None, clock), clock)
    with sessions(sqlite_engine)() as s:
        rows = [str(r.__dict__) for m in (ApiKey, UserSession, AuditLog, User) for r in s.scalars(sa.select(m))]
    sqlite_engine.dispose()
    raw = b"".join(p.read_bytes() for p in Path(sqlite_engine.url.database).parent.glob("tradelab.db*"))
    for secret in (key, key[10:], token, PW):
        assert secret not in " ".join(rows) and secret.encode() not in raw


# --- roles ---

def test_the_permission_table_viewer_reads_trader_acts_admin_configures():
    assert auth.allowed("viewer", "read") and not auth.allowed("viewer", "positions.close")
    assert not auth.allowed("viewer", "killswitch")
    assert all(auth.allowed("trader", a) for a in ("positions.close", "positions.tpsl", "analyses.run", "killswitch"))
    assert not auth.allowed("trader", "config.edit") and not auth.allowed("trader", "venue.live")
    assert all(auth.allowed("admin", a) for a in auth.PERMISSIONS)
    with pytest.raises(Forbidden, match="vic is a viewer and may not positions.close"):
        auth.require(User(name="vic", role="viewer", disabled=False), "positions.close")


# --- the audit log ---

def test_every_action_is_audited_and_the_log_never_holds_a_password_code_or_key(sqlite_engine, clock, tmp_path):
    _users(sqlite_engine, clock)
    secret = auth.enroll_totp(sqlite_engine, "tia", tmp_path, "ann", clock)["secret"]
    code = pyotp.TOTP(secret).at(clock.now())
    auth.verify_totp(sqlite_engine, "tia", code, tmp_path, clock, "10.0.0.2")
    key = auth.create_api_key(sqlite_engine, "tia", "bot", "ann", clock)
    otp = auth.reset_password(sqlite_engine, "tia", "ann", clock)
    _refused(auth.authenticate, sqlite_engine, "ann", "a mistyped password", "10.0.0.1", clock)
    token = auth.create_session(sqlite_engine, auth.authenticate(sqlite_engine, "ann", PW, "10.0.0.1", clock), clock)
    auth.revoke_session(sqlite_engine, token, clock)
    with sessions(sqlite_engine)() as s:
        log = [(a.actor, a.action, a.target, a.details) for a in s.scalars(sa.select(AuditLog).order_by(AuditLog.id))]
    assert [a[1] for a in log] == ["user.add", "user.add", "user.totp_enroll", "totp.ok", "apikey.create", "user.reset",
                                   "login.failed", "login.ok", "logout"]
    text = repr(log)
    for secret_ in (PW, "trader password 1", "a mistyped password", secret, code, key, otp, token):
        assert secret_ not in text


# --- the users command (a real subprocess) ---

def _tl(*args, env, input=None):
    e = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | env
    return subprocess.run([TL, *args], capture_output=True, text=True, env=e, cwd=ROOT, input=input, timeout=120)


def test_users_add_reads_the_password_from_stdin_and_users_key_prints_the_key_on_its_last_line(tmp_path):
    env = {"TRADELAB_DATA_DIR": str(tmp_path)}
    eng = make_engine(f"sqlite:///{tmp_path}/tradelab.db")
    upgrade(eng)
    r = _tl("users", "add", "ann", "--role", "admin", env=env, input=PW + "\n")
    assert r.returncode == 0 and r.stdout == "user ann added as admin\n", r.stderr
    k = _tl("users", "key", "ann", "--label", "ci", env=env)
    assert k.returncode == 0, k.stderr
    key = k.stdout.splitlines()[-1]
    assert key.startswith("tl_") and key not in k.stderr
    assert auth.authenticate(eng, "ann", PW).role == "admin" and auth.check_api_key(eng, key).name == "ann"
    eng.dispose()


# --- migration 0006 ---

@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request, tmp_path):
    """An empty database, never migrated, on each of the two."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path}/old.db")
        yield eng
        eng.dispose()
        return
    from conftest import _pg_admin, PG_ADMIN_URL
    name, admin = f"tradelab_t0006_{uuid.uuid4().hex[:8]}", _pg_admin()
    with admin.connect() as c:
        c.exec_driver_sql(f'create database "{name}"')
    eng = make_engine(sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    yield eng
    eng.dispose()
    with admin.connect() as c:
        c.exec_driver_sql(f'drop database if exists "{name}" with (force)')
    admin.dispose()


def test_migration_0006_keeps_existing_users_enabled_and_downgrades_cleanly(empty_engine, clock):
    eng = empty_engine
    upgrade(eng, "0005")
    with eng.begin() as c:
        c.execute(sa.text("insert into users (name, password_hash, role, must_change_password, created_at) "
                          "values ('ann', :h, 'admin', false, '2024-01-01 00:00:00')"), {"h": auth.HASHER.hash(PW)})
    assert upgrade(eng) == ("0005", head_revision())
    user = auth.authenticate(eng, "ann", PW, None, clock)
    assert (user.disabled, user.totp_enabled) == (False, False)
    auth.create_api_key(eng, "ann", "bot", "ann", clock)
    assert downgrade(eng, "0005")[1] == "0005"
    names = set(sa.inspect(eng).get_table_names())
    assert not names & {"user_sessions", "api_keys", "login_attempts"}
    with eng.connect() as c:
        assert c.exec_driver_sql("select name from users").scalars().all() == ["ann"]
    assert upgrade(eng)[1] == head_revision()


def test_migration_0006_stops_on_a_role_it_does_not_know_naming_it(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path}/r.db")
    upgrade(eng, "0005")
    with eng.begin() as c:
        c.exec_driver_sql("insert into users (name, password_hash, role, must_change_password, created_at) "
                          "values ('root', 'x', 'superuser', 0, '2024-01-01 00:00:00')")
    with pytest.raises(TradelabError, match="'superuser' \\(1 users\\)"):
        upgrade(eng)
    assert "api_keys" not in sa.inspect(eng).get_table_names()  # nothing was changed
    eng.dispose()
