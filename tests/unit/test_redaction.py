"""The one redaction helper: every spelling of a secret is masked, an empty one masks nothing."""

from reconciler.redaction import MASK, redact, url_passwords


def test_longest_secret_is_masked_whole_and_empty_ones_are_ignored() -> None:
    assert redact("key abc and abcdef", ["abc", "abcdef", ""]) == f"key {MASK} and {MASK}"
    assert redact("nothing here", [""]) == "nothing here"


def test_url_passwords_in_every_spelling() -> None:
    assert set(url_passwords("redis://:p%40ss@localhost:6379/0")) == {"p%40ss", "p@ss"}
    assert "s3cret" in url_passwords("host=db user=app password='s3cret' dbname=x")
    assert "q" in url_passwords("postgresql://app@db/x?password=q")
    assert url_passwords("postgresql://app@db/x") == ()
    assert url_passwords("http://[broken") == ()
