"""The error bodies of the public API, as its clients (CLI, web UI, gRPC gateway) read them back."""

from __future__ import annotations

import pytest

from genserve.clients.api import parse_error
from genserve.serving.http import error_response


def test_an_error_response_reads_back_as_its_message_and_field() -> None:
    body = error_response(422, "must be at most 64", field="num_frames").body.decode()
    assert parse_error(body) == ("must be at most 64", [("num_frames", "must be at most 64")])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # BentoML's own validation error; nested fields are joined with dots
            '{"error": "1 validation error", "detail": [{"loc": ["body", "width"], "msg": "too small"}]}',
            ("1 validation error", [("body.width", "too small")]),
        ),
        (  # the SDK puts words before the body
            'Error making request: 400: {"detail": [{"loc": ["seed"], "msg": "not an integer"}]}',
            ("", [("seed", "not an integer")]),
        ),
        ('{"detail": "Not Found"}', ("Not Found", [])),  # Starlette's own errors
        ("Internal Server Error", ("Internal Server Error", [])),
        ("Error: {not json", ("Error: {not json", [])),
        ('{"error": "busy", "detail": "oops"}', ("busy", [])),
    ],
)
def test_error_texts_of_every_shape(text: str, expected: tuple[str, list[tuple[str, str]]]) -> None:
    assert parse_error(text) == expected
