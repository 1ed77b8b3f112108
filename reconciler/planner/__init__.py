"""The pure planner: every drift kind and deletion guard of SPEC 4, with no I/O.

Where each decision lives:

- `view`: ownership (managed pattern, `RECONCILER_PROTECTED`) and `unmanaged` drift;
- `orphans`: `orphan`, `orphan_pending`, confirmation and age, deletes awaiting verification;
- `guards`: the deletion guards in order (protected, incomplete read, blast radius, collapse);
- `status`: `disconnected`, `reconnected`, `missing`, the restart guard;
- `duplicates`: `duplicate_number`, `duplicate_name`, `duplicate_row`, published once per group;
- `outcomes`: delete results fed back into memory, retry backoff;
- `scope`: a targeted reconcile's restricted inputs and the fleet counts its guards take;
- `core`: `plan()`, which composes them, and `population()`, what a pass leaves for hints
  (`plan_and_population()`: both from one view).
"""

from reconciler.planner.core import plan, plan_and_population, population, updated
from reconciler.planner.outcomes import delete_backoff, record_outcomes
from reconciler.planner.scope import Population, Scope, restricted

__all__ = ["Population", "Scope", "delete_backoff", "plan", "plan_and_population", "population",
           "record_outcomes", "restricted", "updated"]
