"""The scanner behind the suite-wide check that no response shows server internals."""

import pytest

from internals import leaks, response_leaks


@pytest.mark.parametrize(
    "text",
    [
        'Traceback (most recent call last):\n  File "/x/y.py", line 3, in f',
        "cannot read /tmp/pytest-of-root/pytest-1/home/models/a.safetensors",
        "import failed in /usr/lib/python3/site-packages/diffusers/x.py",
        "generation failed: RuntimeError: shape mismatch",
        "(psycopg.errors.OperationalError) server closed the connection",
    ],
)
def test_internals_are_found(text):
    assert leaks(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"error": {"type": "invalid_request", "message": "width must be a multiple of 8"}}',
        "http://127.0.0.1:8000/files/images/5c0e/0.png?expires=1&sig=abc",
        '{"error": "InvalidRequest", "detail": "init_image: no upload 1234"}',
        "generation failed on the worker; the server log has the details",
        '{"filename": "checkpoints/demo-single.safetensors"}',
    ],
)
def test_what_users_should_see_is_not_flagged(text):
    assert not leaks(text)


def test_successful_answers_are_scanned_for_paths_and_task_errors():
    assert response_leaks(200, '{"filename": "/tmp/pytest-of-root/pytest-1/home/models/a"}')
    assert response_leaks(200, '{"task": {"error": "KeyError: \'unet\'"}}')
    assert not response_leaks(200, '{"components": {"schemas": {"ValidationError": {}}}}')
