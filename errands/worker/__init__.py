"""Running activities: the Worker."""

from errands.worker._worker import Worker

__all__ = ["Worker"]
