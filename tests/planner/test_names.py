"""The one rule for when two spellings name the same instance (SPEC 3)."""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from reconciler.names import BLANKS, instance_key, same_instance

JAVASCRIPT_TRIM = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007" \
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
"""What `String.prototype.trim` removes (ECMAScript WhiteSpace and LineTerminator)."""


def test_blanks_cover_python_and_javascript_whitespace() -> None:
    python = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert python <= set(BLANKS)
    assert set(JAVASCRIPT_TRIM) <= set(BLANKS)


def test_only_surrounding_blanks_are_forgiven() -> None:
    assert same_instance("clinic-a", " clinic-a\u00a0")
    assert same_instance("\ufeffclinic-a", "clinic-a\n")
    assert not same_instance("clinic-a", "clinic-A"), "names are case-sensitive"
    assert not same_instance("clinic a", "clinic  a"), "inner blanks are part of the name"
    assert not same_instance("clinic-a", "clinic-a\u200d"), "a joiner is no blank"
    assert instance_key(" \t ") == ""


@given(st.text(), st.text(alphabet=BLANKS), st.text(alphabet=BLANKS))
def test_the_key_ignores_surrounding_blanks_and_nothing_else(
    core: str, before: str, after: str
) -> None:
    spelled = before + core + after
    assert same_instance(spelled, core)
    assert instance_key(spelled) == instance_key(instance_key(spelled))
    assert instance_key(spelled) in spelled, "a key is a substring: what the re-check's SQL uses"
