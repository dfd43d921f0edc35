"""Operating huabu for other people (issue 17): idempotent submits, quotas, the admin API and
its audit log. Against the API-only server (nothing it queues runs; synchronous routes give
up after 0.1 s), so every test here is about what the API accepts and refuses."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import uuid

import httpx
import pytest

from huabu.auth.administration import Administration

NATIVE = {"model": "demo", "prompt": "a red fox", "width": 64, "height": 64, "steps": 8}
NOVITA = {"model_name": "demo", "prompt": "fox", "width": 128, "height": 128, "image_num": 1,
          "steps": 8}  # fmt: skip


@pytest.fixture
def person(api_server):
    """A new user of the API server, and a client with their key."""
    accounts = api_server.accounts
    user = accounts.add_user(f"{uuid.uuid4().hex[:10]}@example.com", "password123")
    return user, api_server.client(accounts.create_key(user.id))


@pytest.fixture(scope="module")
def admin(api_server):
    accounts = api_server.accounts
    user = accounts.add_user(f"admin-{uuid.uuid4().hex[:6]}@example.com", "password123", admin=True)
    return user, api_server.client(accounts.create_key(user.id))


def task_count(client: httpx.Client) -> int:
    return len(client.get("/huabu/v1/tasks", params={"limit": 100}).json()["data"])


def test_a_retried_submit_returns_the_first_task_and_a_changed_body_conflicts(person, admin):
    _, client = person
    key = {"Idempotency-Key": "order-1234"}
    first = client.post("/huabu/v1/generations", json=NATIVE, headers=key)
    again = client.post("/huabu/v1/generations", json=NATIVE, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert task_count(client) == 1  # the retry queued nothing

    changed = client.post("/huabu/v1/generations", json=NATIVE | {"seed": 5}, headers=key)
    assert changed.status_code == 409
    assert changed.json()["error"]["param"] == "Idempotency-Key"
    assert task_count(client) == 1

    # Keys are per user: another user's identical key and body is their own task.
    theirs = admin[1].post("/huabu/v1/generations", json=NATIVE, headers=key)
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    # Without a key, the same body is a new task.
    assert client.post("/huabu/v1/generations", json=NATIVE).json()["id"] != first.json()["id"]


def test_idempotency_in_other_dialects_and_bad_keys(person):
    _, client = person
    key = {"Idempotency-Key": "novita-1"}
    body = {"extra": {}, "request": NOVITA}
    first = client.post("/v3/async/txt2img", json=body, headers=key)
    again = client.post("/v3/async/txt2img", json=body, headers=key)
    assert first.status_code == again.status_code == 200
    assert first.json()["task_id"] == again.json()["task_id"]
    # The same key on a synchronous route (it gives up after 0.1 s here): the second call
    # waits for the task the first one queued, named in both errors.
    sync = {"Idempotency-Key": "openai-1"}
    request = {"model": "demo", "prompt": "a fox", "size": "64x64"}
    one = client.post("/v1/images/generations", json=request, headers=sync)
    two = client.post("/v1/images/generations", json=request, headers=sync)
    assert one.status_code == two.status_code == 504
    task = one.json()["error"]["message"].rsplit("task ", 1)[1].strip(")")
    assert task in two.json()["error"]["message"]
    # A multipart retry is the same request though its boundary is new.
    files = {"image": ("a.png", _png(), "image/png")}
    edits = [
        client.post(
            "/v1/images/edits",
            data={"prompt": "a fox", "size": "64x64"},
            files=files,
            headers={"Idempotency-Key": "edit-1"},
        )
        for _ in range(2)
    ]
    assert edits[0].status_code == edits[1].status_code == 504
    assert edits[0].json() == edits[1].json()

    for bad in (b"x" * 256, "\u00e9t\u00e9".encode()):
        refused = client.post(
            "/huabu/v1/generations", json=NATIVE, headers={"Idempotency-Key": bad}
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "Idempotency-Key"
    refused = client.post("/v3/async/txt2img", json=body, headers={"Idempotency-Key": "y" * 300})
    assert refused.status_code == 400 and "Idempotency-Key" in refused.text  # novita's envelope


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_a_quota_holds_exactly_under_concurrent_submits(api_server, person, admin):
    user, client = person
    admin_client = admin[1]
    changed = admin_client.patch(f"/huabu/v1/admin/users/{user.id}", json={"images_per_day": 7})
    assert changed.status_code == 200 and changed.json()["images_per_day"] == 7

    def submit(_):
        with api_server.client(client.headers["authorization"].split()[1]) as own:
            return own.post("/huabu/v1/generations", json=NATIVE)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) == 7 and codes.count(429) == 13
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "quota_exceeded"
    assert "7 images per day" in refused.json()["error"]["message"]
    usage = client.get("/huabu/v1/me/usage").json()
    assert usage["user"]["images_today"] == 7 and usage["user"]["images_per_day"] == 7

    # A cancelled task gives its images back.
    first = next(a for a in answers if a.status_code == 202).json()["id"]
    client.post(f"/huabu/v1/tasks/{first}/cancel")
    assert client.get("/huabu/v1/me/usage").json()["user"]["images_today"] == 6
    assert client.post("/huabu/v1/generations", json=NATIVE).status_code == 202
    # Other dialects get their own envelope, with Retry-After.
    over = client.post("/v3/async/txt2img", json={"extra": {}, "request": NOVITA})
    assert over.status_code == 429 and "Retry-After" in over.headers


def test_requests_per_minute_per_key(api_server, person, admin):
    user, client = person
    admin_client = admin[1]
    second_key = admin_client.post(f"/huabu/v1/admin/users/{user.id}/keys").json()
    limited = api_server.client(second_key["key"])
    changed = admin_client.patch(
        f"/huabu/v1/admin/users/{user.id}/keys/{second_key['prefix']}",
        json={"requests_per_minute": 2},
    )
    assert changed.status_code == 200 and changed.json()["requests_per_minute"] == 2
    assert [limited.post("/huabu/v1/generations", json=NATIVE).status_code for _ in range(3)] == [
        202,
        202,
        429,
    ]
    # The user's other key is not limited by this key's quota.
    assert client.post("/huabu/v1/generations", json=NATIVE).status_code == 202
    usage = limited.get("/huabu/v1/me/usage").json()
    assert usage["key"]["requests_last_minute"] == 2 and usage["key"]["requests_per_minute"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"images_per_day": -1}, "images_per_day"),
        ({"requests_per_minute": 2.5}, "requests_per_minute"),
        ({"images_per_day": "ten"}, "images_per_day"),
    ],
)
def test_bad_quotas_are_refused(person, admin, change, field):
    user, _ = person
    answer = admin[1].patch(f"/huabu/v1/admin/users/{user.id}", json=change)
    assert answer.status_code == 400 and field in answer.json()["error"]["param"]


def test_admins_manage_users_and_keys_and_every_change_is_audited(api_server, person, admin):
    user, client = person
    admin_user, admin_client = admin
    # Not for non-admins.
    for method, path in (
        ("GET", "/huabu/v1/admin/users"),
        ("GET", "/huabu/v1/admin/audit"),
        ("POST", "/huabu/v1/admin/users"),
        ("PATCH", f"/huabu/v1/admin/users/{user.id}"),
    ):
        assert client.request(method, path, json={}).status_code == 403

    login_body = {"email": "New.Person@example.com", "password": "long-enough"}
    created = admin_client.post("/huabu/v1/admin/users", json=login_body)
    assert created.status_code == 201 and created.json()["email"] == "new.person@example.com"
    new_id = created.json()["id"]
    key = admin_client.post(f"/huabu/v1/admin/users/{new_id}/keys").json()
    newcomer = api_server.client(key["key"])
    assert newcomer.get("/huabu/v1/me").json()["email"] == "new.person@example.com"
    listed = admin_client.get(f"/huabu/v1/admin/users/{new_id}/keys").json()
    assert [k["prefix"] for k in listed] == [key["prefix"]] and listed[0]["last_used_at"]

    # Disabled: refused at once for a fresh credential (servers cache a known one 5 s).
    assert admin_client.patch(f"/huabu/v1/admin/users/{new_id}", json={"disabled": True}).json()[
        "disabled"
    ]
    login = httpx.post(api_server.url + "/huabu/v1/sessions", json=login_body)
    assert login.status_code == 401 and "disabled" in login.json()["error"]["message"]
    admin_client.patch(f"/huabu/v1/admin/users/{new_id}", json={"disabled": False})
    assert httpx.post(api_server.url + "/huabu/v1/sessions", json=login_body).status_code == 201

    gone = admin_client.delete(f"/huabu/v1/admin/users/{new_id}/keys/{key['prefix']}")
    assert gone.status_code == 204
    assert admin_client.get(f"/huabu/v1/admin/users/{new_id}/keys").json()[0]["revoked"]
    # Another user's key is not revoked through this user's path.
    unknown = admin_client.delete(f"/huabu/v1/admin/users/{new_id}/keys/hb_nosuchprefix")
    assert unknown.status_code == 404

    page = admin_client.get("/huabu/v1/admin/users", params={"limit": 500}).json()["data"]
    emails = [u["email"] for u in page]
    assert "new.person@example.com" in emails and emails == sorted(emails)

    # The CLI's changes are audited too.
    env = {"HUABU_HOME": str(api_server.home)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "huabu",
            "users",
            "set-quota",
            "new.person@example.com",
            "--images-per-day",
            "50",
        ],
        check=True,
        capture_output=True,
        env=env | _inherited(),
    )
    entries = admin_client.get("/huabu/v1/admin/audit").json()["data"]
    actions = [(e["actor"], e["action"], e["target"]) for e in entries[:6]]
    mine = admin_user.email
    assert actions[0][1:] == ("user.quota", "new.person@example.com")
    assert actions[0][0].startswith("cli:") and entries[0]["details"] == {"images_per_day": 50}
    assert (mine, "key.revoke", key["prefix"]) in actions
    assert (mine, "user.disable", "new.person@example.com") in actions
    assert (mine, "user.enable", "new.person@example.com") in actions
    assert any(a[:2] == (mine, "user.create") for a in [(e["actor"], e["action"]) for e in entries])
    assert Administration(api_server.accounts).user(uuid.UUID(new_id)).images_per_day == 50


def _inherited() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "HUABU_HOME"}
