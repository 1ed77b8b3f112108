"""When two spellings name the same instance (SPEC 3): the one rule that the planner, the store's
re-check and the claims of unreadable rows all use.

Evolution 2.4 trims a name at create (JavaScript's `trim`), older lines keep it as sent, and the
platform's row may hold either spelling; a mismatch must never make an owned instance an orphan.
So surrounding blanks are forgiven, and the blanks are a wide set on purpose: the union of what
Python's `str.isspace` and JavaScript's `trim` remove, plus the invisible separators some trims
drop (U+180E, U+200B). A wider set can only merge spellings, which errs on the side of not
deleting. Case and inner characters always count.
"""

from __future__ import annotations

BLANKS = (
    "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u180e"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def instance_key(name: str) -> str:
    """The name without surrounding blanks: equal keys name one instance. Always a substring of
    `name`, which lets SQL prefilter candidate rows with `strpos` and leave the decision here."""
    return name.strip(BLANKS)


def same_instance(a: str, b: str) -> bool:
    return instance_key(a) == instance_key(b)
