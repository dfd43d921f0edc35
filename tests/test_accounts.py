"""Users and API keys on a real (embedded) PostgreSQL, and the CLI that manages them."""

import os

import pytest
from sqlalchemy import inspect, text

from huabu.auth import Accounts, AuthFailed
from huabu.auth.administration import Administration
from huabu.db.session import open_database
from huabu.errors import InvalidRequest, NotFound
from huabu.settings import Settings
from serving import run_huabu

HEAD = "0017"  # the newest migration in src/huabu/db/migrations/versions


@pytest.fixture(scope="module")
def db_home(tmp_path_factory):
    return tmp_path_factory.mktemp("db-home")


@pytest.fixture(scope="module")
def accounts(db_home):
    return Accounts(open_database(Settings(home=db_home)))


def test_schema_is_migrated_and_migration_is_idempotent(db_home, accounts):
    engine = accounts.sessions.kw["bind"]
    tables = set(inspect(engine).get_table_names())
    assert {"users", "api_keys", "sessions", "tasks", "task_images", "uploads"} <= tables
    assert {"procrastinate_jobs", "procrastinate_workers", "alembic_version"} <= tables
    open_database(Settings(home=db_home))  # second start: nothing to do, nothing breaks
    with engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar() == HEAD


def test_password_login(accounts):
    user = accounts.add_user("Ada@Example.com", "correct horse", admin=True)
    assert user.email == "ada@example.com" and user.is_admin
    assert accounts.check_password("ada@example.com", "correct horse").id == user.id
    with pytest.raises(AuthFailed, match="wrong email or password"):
        accounts.check_password("ada@example.com", "wrong horse")
    with pytest.raises(AuthFailed, match="wrong email or password"):
        accounts.check_password("nobody@example.com", "correct horse")


def test_passwords_are_not_stored_in_clear(accounts):
    user = accounts.add_user("bob@example.com", "hunter2hunter2")
    assert user.password_hash.startswith("$argon2") and "hunter2" not in user.password_hash


@pytest.mark.parametrize(
    ("email", "password", "param"),
    [("not-an-email", "long enough", "email"), ("carol@example.com", "short", "password")],
)
def test_bad_user_fields_are_named(accounts, email, password, param):
    with pytest.raises(InvalidRequest) as caught:
        accounts.add_user(email, password)
    assert caught.value.param == param


def test_duplicate_email_is_refused(accounts):
    accounts.add_user("dup@example.com", "password1")
    with pytest.raises(InvalidRequest, match="already has an account"):
        accounts.add_user("DUP@example.com", "password2")


def test_priority_is_the_keys_when_set_else_the_users(accounts):
    user = accounts.add_user("levels@example.com", "password1")
    plain, keyed = accounts.create_key(user.id), accounts.create_key(user.id, priority=-2)
    assert accounts.principal_for_bearer(plain).priority == 0
    admin = Administration(accounts)
    admin.set_priority("admin@example.com", "Levels@example.com", 4)
    assert accounts.principal_for_bearer(plain).priority == 4
    assert accounts.principal_for_bearer(keyed).priority == -2  # the key's, not the user's
    admin.set_key_priority("admin@example.com", keyed, None)
    assert accounts.principal_for_bearer(keyed).priority == 4
    caller = accounts.principal_for_bearer(plain)
    assert caller.priority_for(None) == 4 and caller.priority_for(-9) == -9
    with pytest.raises(InvalidRequest, match="between -9 and 4") as caught:
        caller.priority_for(5)
    assert caught.value.param == "priority"
    for bad in (10, -10):
        with pytest.raises(InvalidRequest, match="between -9 and 9"):
            admin.set_priority("admin@example.com", "levels@example.com", bad)
    with pytest.raises(NotFound):
        admin.set_priority("admin@example.com", "nobody@example.com", 1)


def test_api_keys_authenticate_until_revoked(accounts):
    user = accounts.add_user("keys@example.com", "password1")
    key = accounts.create_key(user.id)
    other = accounts.create_key(user.id)
    assert key.startswith("hb_") and key != other
    assert accounts.user_for_key(key).email == "keys@example.com"
    accounts.revoke_key(key[:15])  # by its hb_<prefix>
    with pytest.raises(AuthFailed):
        accounts.user_for_key(key)
    assert accounts.user_for_key(other).id == user.id  # other keys unaffected
    with pytest.raises(AuthFailed):
        accounts.user_for_key(other[:-1] + ("A" if other[-1] != "A" else "B"))
    with pytest.raises(AuthFailed):
        accounts.user_for_key("Bearer nonsense")
    with pytest.raises(NotFound):
        accounts.revoke_key("hb_doesnotexist1")


@pytest.mark.slow
def test_cli_manages_users_and_keys(tmp_path):
    env = {**os.environ, "HUABU_HOME": str(tmp_path)}

    def huabu(*args):
        return run_huabu(list(args), env, 120)

    # This process holds the embedded database open, so that each command uses it rather than
    # starting it and (as its last user) stopping it again.
    accounts = Accounts(open_database(Settings(home=tmp_path)))
    added = huabu("users", "add", "eve@example.com", "--password", "s3cret-pass", "--admin")
    assert added.returncode == 0, added.stderr
    assert "eve@example.com (admin)" in added.stdout
    created = huabu("keys", "create", "eve@example.com")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert accounts.user_for_key(key).email == "eve@example.com"
    # Each admin action says what it did in one line.
    assert (
        huabu("users", "priority", "eve@example.com", "3").stdout == "eve@example.com: priority 3\n"
    )
    assert huabu("users", "disable", "eve@example.com").stdout == "eve@example.com: disabled\n"
    listed = huabu("users", "list").stdout
    assert "eve@example.com\tadmin,disabled\tpriority 3\timages/day none" in listed
    assert huabu("users", "enable", "eve@example.com").stdout == "eve@example.com: enabled\n"
    quota = huabu("keys", "set-quota", key, "--images-per-day", "5").stdout
    assert quota.endswith(": images/day 5, requests/min none\n")
    assert huabu("keys", "priority", key, "user").stdout == "priority user\n"
    assert huabu("keys", "revoke", key).returncode == 0
    with pytest.raises(AuthFailed):
        accounts.user_for_key(key)
    again = huabu("users", "add", "eve@example.com", "--password", "another-pass")
    assert again.returncode == 2 and "already has an account" in again.stderr
    assert "Traceback" not in again.stderr
    missing = huabu("keys", "create", "nobody@example.com")
    assert missing.returncode == 2 and "no user nobody@example.com" in missing.stderr


def test_concurrent_starts_migrate_once(tmp_path):
    """A server and its workers may start at the same moment on a fresh database."""
    import threading

    from sqlalchemy import create_engine

    from huabu.db.server import database_url
    from huabu.db.session import migrate

    url = database_url(Settings(home=tmp_path))
    contenders = 4
    barrier = threading.Barrier(contenders)
    errors: list[BaseException] = []

    def start() -> None:
        engine = create_engine(url)
        barrier.wait()  # all reach the migration together
        try:
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a migration hung"
    assert errors == []
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar() == HEAD
    engine.dispose()
