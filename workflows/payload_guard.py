"""What keeps a malformed payload count from failing a workflow task (deterministic code).

The data converter (:mod:`fleetops.converter`) turns a payload that does not decode into a
non-retryable ``InvalidInput``. Two cases never reach it, because the SDK calls the Python
function with however many payloads arrived: a workflow started with no input (or two), and a
signal sent with no payload to a handler that needs one (or with two). Python then raises
``TypeError``, which fails the workflow task, and Temporal retries it forever.

- :func:`requires_input` goes under ``@workflow.init``: a start with the wrong number of inputs
  fails the workflow at once with ``InvalidInput`` naming the parameter.
- :class:`MessageGuard` is a worker interceptor: a signal whose payload count does not fit its
  handler is dropped before the handler runs, with a warning in the worker log (updates need no
  guard: a validator that raises, ``TypeError`` included, rejects the update; queries only
  answer an error).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.worker import (
    HandleSignalInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from fleetops.converter import invalid_input

InitT = TypeVar("InitT", bound=Callable[..., None])


def requires_input(init: InitT) -> InitT:
    """Decorate a workflow's ``__init__`` so a start with a missing input fails cleanly.

    Use it below ``@workflow.init``. The signature the SDK sees is unchanged (the wrapper keeps
    ``__wrapped__``), so ``__init__`` and ``run`` still match.

    Args:
        init: the workflow's ``__init__(self, input)``.

    Returns:
        ``__init__`` that first checks it got one argument per parameter.

    Raises:
        ApplicationError: ``InvalidInput`` (non-retryable; fails the workflow, not its task)
            when the workflow was started with too few or too many inputs, naming the first
            parameter.
    """
    params = list(inspect.signature(init).parameters.values())[1:]
    wanted = len(params)
    first = params[0] if params else None

    @functools.wraps(init)
    def checked(self: Any, *args: Any) -> None:
        if len(args) != wanted:
            what = f"{first.name} ({first.annotation})" if first is not None else "no input"
            raise invalid_input(
                f"{workflow.info().workflow_type} takes {wanted} input(s), got {len(args)}: "
                f"pass {what} as one JSON object, e.g. --input '{{...}}'",
                field=first.name if first is not None else None,
            )
        init(self, *args)

    return checked  # type: ignore[return-value]


def arity_problem(handler: Callable[..., Any] | None, args: Sequence[Any]) -> str | None:
    """Why ``handler`` cannot be called with ``args`` (positional), or None if it can."""
    if handler is None:
        return None
    try:
        inspect.signature(handler).bind(*args)
    except TypeError as err:
        return f"{len(args)} payload(s) do not fit the handler: {err}"
    return None


class MessageGuard(Interceptor):
    """Worker interceptor: drop a signal whose payload count does not fit its handler.

    Register it on the worker (``Worker(..., interceptors=[MessageGuard()])``); ``worker.py``
    does.
    """

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        """The inbound interceptor that checks signals."""
        return _GuardInbound


class _GuardInbound(WorkflowInboundInterceptor):
    async def handle_signal(self, input: HandleSignalInput) -> None:
        problem = arity_problem(workflow.get_signal_handler(input.signal), input.args)
        if problem is not None:
            workflow.logger.warning("signal %s dropped: %s", input.signal, problem)
            return
        await super().handle_signal(input)
