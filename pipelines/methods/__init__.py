"""Methods: one module per paper method. A module defines ``Config`` (a MethodConfig)
and ``METHOD``, its :class:`pipelines.methods.base.Method` subclass; the module name is the
method name used in params.yaml. Nothing else registers it.

Extra source files a method's cells depend on go in a module-level ``CODE_DEPS`` tuple of
repo-relative path literals: the graph reads it with ``ast`` (pipelines.config
.method_code_deps), without importing the module, so Dagster's definitions load
without torch. Variant options are validated against ``Config`` when params load in the
CLI, and by each cell before it runs in Dagster."""
