"""Image storage and signed URLs: the parts a prober would attack."""

import time

import pytest

from huabu.errors import NotFound
from huabu.settings import Settings
from huabu.storage import LocalStorage, UrlSigner
from huabu.storage.signing import installation_secret


def parse(path: str) -> tuple[str, int, str]:
    key, _, query = path.removeprefix("/files/").partition("?")
    params = dict(part.split("=") for part in query.split("&"))
    return key, int(params["expires"]), params["sig"]


def test_signed_url_round_trip_and_tampering():
    signer = UrlSigner(b"secret", ttl=60)
    key, expires, sig = parse(signer.path("images/abc/0.png"))
    signer.verify(key, expires, sig)  # valid: no error
    for bad in (
        ("images/abd/0.png", expires, sig),  # another key
        (key, expires + 3600, sig),  # a longer life
        (key, expires, sig[:-1] + ("0" if sig[-1] != "0" else "1")),
    ):
        with pytest.raises(NotFound):
            signer.verify(*bad)
    with pytest.raises(NotFound):  # another installation's secret
        UrlSigner(b"other", ttl=60).verify(key, expires, sig)


def test_signed_url_expires():
    signer = UrlSigner(b"secret", ttl=60)
    key, expires, sig = parse(signer.path("images/abc/0.png", now=time.time() - 120))
    with pytest.raises(NotFound, match="expired"):
        signer.verify(key, expires, sig)


def test_generated_secret_is_stable_and_private(tmp_path):
    settings = Settings(home=tmp_path)
    first = installation_secret(settings)
    assert installation_secret(settings) == first and len(first) >= 48
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert installation_secret(Settings(home=tmp_path, secret_key="configured")) == b"configured"


@pytest.mark.parametrize("key", ["../secret_key", "images/../../x.png", "/etc/passwd", "a//b.png"])
def test_keys_cannot_escape_the_folder(tmp_path, key):
    with pytest.raises(NotFound):
        LocalStorage(tmp_path / "files").get(key)


def test_put_get(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("images/t/0.png", b"data")
    storage.put("images/t/0.png", b"new")  # a re-run overwrites
    assert storage.get("images/t/0.png") == b"new"
    assert [p.name for p in (tmp_path / "images" / "t").iterdir()] == ["0.png"]  # no temp left


def test_stored_files_are_readable_by_other_users_under_the_usual_umask(tmp_path):
    # An API server and workers may run as different users: a stored image must not be 0600.
    from huabu.storage import local

    storage = LocalStorage(tmp_path)
    storage.put("images/t/0.png", b"png")
    mode = (tmp_path / "images/t/0.png").stat().st_mode & 0o777
    assert mode == 0o666 & ~local._UMASK  # 0644 under the usual umask 022; tempfile's is 0600
