"""A model whose own code the confined process cannot import is refused with what will help."""

from __future__ import annotations

import pytest

from loader._internal.confine import unpickling_error


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("PermissionError: [Errno 13] Permission denied: '/srv/code/covuser.py'", "cannot read /srv/code/covuser.py"),
        ("ModuleNotFoundError: No module named 'acme_models'", "the module 'acme_models'"),
    ],
)
def test_an_import_the_confined_process_cannot_make_says_how_to_make_user_code_importable(error: str, words: str) -> None:
    message = unpickling_error(error)
    assert message.startswith(error) and words in message
    assert "--user-code" in message and "never the model folder" in message


def test_other_unpickling_errors_are_passed_on_as_they_are() -> None:
    assert unpickling_error("ValueError: bad pickle") == "ValueError: bad pickle"


def test_a_file_outside_the_chroot_view_is_named_as_such_only_where_the_view_is_used() -> None:
    error = "FileNotFoundError: [Errno 2] No such file or directory: '/models/tenant-b/model.joblib'"
    message = unpickling_error(error, in_view=True)
    assert message.startswith(error) and "outside the confined process's view" in message and "/sandbox" in message
    assert unpickling_error(error, in_view=False) == error
