"""Integrations with other libraries, each an optional extra (as temporalio's
``contrib``): ``errands.contrib.opentelemetry`` needs ``errands[opentelemetry]``.
Nothing here is imported by errands itself."""
