"""Running activities: the Worker, the SharedStateManager that process-pool
activities need, and the interceptors that wrap attempts."""

from errands.worker._interceptor import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)
from errands.worker._shared_state import SharedStateManager
from errands.worker._worker import Worker

__all__ = [
    "ActivityInboundInterceptor",
    "ActivityOutboundInterceptor",
    "ExecuteActivityInput",
    "Interceptor",
    "SharedStateManager",
    "Worker",
]
