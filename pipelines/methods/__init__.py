"""Methods: one module per paper method. A module defines ``Config`` (a MethodConfig)
and ``METHOD``, its :class:`pipelines.methods.base.Method` subclass; the module name is the
method name used in params.yaml. Nothing else registers it."""
