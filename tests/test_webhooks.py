"""Webhooks per task (issue 17): a receiver on loopback (127.0.0.2, which the shared server's
HUABU_FETCH_ALLOW admits, standing in for a public host) gets each task's end, signed; the
signature is checked with the Standard Webhooks reference library."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook

from test_service import SLOW, SMALL, client_for, submit, wait_finished, wait_state


class Receiver:
    """An HTTP server that answers the first ``failures`` POSTs with 500, then 204, and keeps
    what it got."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 500 if len(receiver.received) < receiver.failures else 204
                receiver.received.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.http.server_address[1]}/hook?from=huabu"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} arrived"
            time.sleep(0.05)

    def close(self) -> None:
        self.http.shutdown()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(failures: int = 0) -> Receiver:
        made.append(Receiver(failures))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_a_signed_webhook_arrives_after_two_failed_tries(server, accounts, receiver):
    client = client_for(accounts, server, "hooks@example.com")
    secret = client.post("/huabu/v1/me/webhook-secret").json()["secret"]
    assert secret.startswith("whsec_")
    hook = receiver(failures=2)
    task = submit(client, SMALL | {"webhook_url": hook.url})
    done = wait_finished(client, task["id"])
    hook.wait_for(3)

    assert [status for _, _, status in hook.received] == [500, 500, 204]
    ids = {headers["webhook-id"] for headers, _, _ in hook.received}
    assert len(ids) == 1  # one message, tried three times
    headers, body, _ = hook.received[-1]
    payload = Webhook(secret).verify(body, headers)  # raises if the signature is wrong
    assert payload["type"] == "task.succeeded"
    assert payload["data"]["id"] == task["id"] and payload["data"]["state"] == "succeeded"
    assert payload["data"]["images"][0]["seed"] == done["images"][0]["seed"]
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "QUFB" * 8).verify(body, headers)  # another secret: refused

    deliveries = client.get(f"/huabu/v1/tasks/{task['id']}/deliveries").json()
    assert len(deliveries) == 1
    assert deliveries[0]["state"] == "delivered" and deliveries[0]["attempts"] == 3
    assert deliveries[0]["last_status"] == 204 and deliveries[0]["id"] == headers["webhook-id"]
    # Nobody else sees them.
    other = client_for(accounts, server, "hooks-other@example.com")
    assert other.get(f"/huabu/v1/tasks/{task['id']}/deliveries").status_code == 404


def test_cancelled_and_failed_tasks_are_announced_and_retries_are_bounded(
    server, accounts, receiver
):
    client = client_for(accounts, server, "hooks-cancel@example.com")
    secret = client.post("/huabu/v1/me/webhook-secret").json()["secret"]
    hook = receiver()
    blocker = submit(client, SLOW)
    wait_state(client, blocker["id"], "running")
    queued = submit(client, SMALL | {"webhook_url": hook.url})
    client.post(f"/huabu/v1/tasks/{queued['id']}/cancel")
    client.post(f"/huabu/v1/tasks/{blocker['id']}/cancel")
    hook.wait_for(1)
    payload = Webhook(secret).verify(hook.received[0][1], hook.received[0][0])
    assert payload["type"] == "task.cancelled" and payload["data"]["state"] == "cancelled"

    # A receiver that always fails gets the bounded number of tries (HUABU_WEBHOOK_ATTEMPTS:
    # 3 on this server), then the delivery says it failed.
    failing = receiver(failures=100)
    task = submit(client, SMALL | {"webhook_url": failing.url})
    wait_finished(client, task["id"])
    failing.wait_for(3)
    deadline = time.monotonic() + 30
    while True:
        delivery = client.get(f"/huabu/v1/tasks/{task['id']}/deliveries").json()[0]
        if delivery["state"] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert delivery["state"] == "failed" and delivery["attempts"] == 3
    assert delivery["last_error"] == "HTTP 500"
    time.sleep(1.5)
    assert len(failing.received) == 3  # no fourth


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.2/hook",
        "http://127.0.0.1:9/hook",
        "http://10.0.0.5/hook",
        "http://[::1]/hook",
        "not a url",
    ],
)
def test_webhook_urls_that_are_not_public_http_are_refused(server, accounts, url):
    client = client_for(accounts, server, f"hooks-{abs(hash(url))}@example.com")
    answer = client.post("/huabu/v1/generations", json=SMALL | {"webhook_url": url})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "webhook_url"
    assert client.get("/huabu/v1/tasks").json()["data"] == []  # nothing queued
    novita = client.post(
        "/v3/async/txt2img",
        json={
            "extra": {"webhook": {"url": url}},
            "request": {
                "model_name": "demo",
                "prompt": "fox",
                "width": 128,
                "height": 128,
                "image_num": 1,
                "steps": 8,
            },
        },
    )
    assert novita.status_code == 400
    assert json.loads(novita.text)["metadata"]["param"] == "extra.webhook.url"


def test_a_receiver_that_hangs_is_cut_off_at_the_timeout(settings):
    """HUABU_WEBHOOK_TIMEOUT: a receiver that accepts the connection and never answers."""
    import socket

    from huabu import fetch
    from huabu.errors import InvalidRequest

    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen()
    url = f"http://127.0.0.2:{listener.getsockname()[1]}/hook"
    allowed = settings.model_copy(update={"fetch_allow": ["127.0.0.2/32"]})
    try:
        with pytest.raises(InvalidRequest, match="no answer within 0.5 s"):
            fetch.post(url, b"{}", {}, field="webhook_url", timeout=0.5, settings=allowed)
    finally:
        listener.close()
