"""Running activities: the Worker, and the SharedStateManager that process-pool
activities need."""

from errands.worker._shared_state import SharedStateManager
from errands.worker._worker import Worker

__all__ = ["SharedStateManager", "Worker"]
