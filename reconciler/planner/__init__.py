"""The pure planner: every drift kind and deletion guard of SPEC 4, with no I/O.

Where each decision lives:

- `view`: ownership (managed pattern, `RECONCILER_PROTECTED`) and `unmanaged` drift;
- `orphans`: `orphan`, `orphan_pending`, confirmation and age, deletes awaiting verification;
- `guards`: the deletion guards in order (protected, incomplete read, blast radius, collapse);
- `status`: `disconnected`, `reconnected`, `missing`, the restart guard;
- `duplicates`: `duplicate_number`, `duplicate_name`, `duplicate_row`, published once per group;
- `outcomes`: delete results fed back into memory, retry backoff;
- `core`: `plan()`, which composes them.
"""

from reconciler.planner.core import plan
from reconciler.planner.outcomes import delete_backoff, record_outcomes

__all__ = ["delete_backoff", "plan", "record_outcomes"]
