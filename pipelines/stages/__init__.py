"""Stage kinds, one module each (pipelines/stages/<kind>.py), assembled by the one table
in :mod:`pipelines.stages.kinds`; the shared spec (Stage, record file, code tuples) is
:mod:`pipelines.stages.spec`. Importing them is light: no torch, no science until a
stage runs."""
