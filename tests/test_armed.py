"""The armed-claim table's rule for a claim that found nothing: it stays armed
unless its queue holds a task ready already by this machine's clock (the
claim's transaction read its clock before the change it ran for was visible:
waiting for another change would strand that task)."""

from __future__ import annotations

import asyncio
import time

from errands.store._armed import Armed, ArmedClaims, ClaimSpec
from errands.store._base import ClaimResult

KEY = ("default", "q")


def spec() -> ClaimSpec:
    return ClaimSpec("default", "q", 10, "me", None, (), None)


async def arm(claims: ArmedClaims[ClaimSpec]) -> Armed[ClaimSpec]:
    armed = Armed(spec(), lambda result, serial: None, asyncio.get_running_loop())
    claims.arm(KEY, armed)
    return armed


async def test_an_empty_claim_with_nothing_ready_stays_armed() -> None:
    claims: ArmedClaims[ClaimSpec] = ArmedClaims()
    await arm(claims)
    handoffs: list[tuple[Armed[ClaimSpec], ClaimResult]] = []
    later = time.time() + 60
    ran = claims.claim_all(KEY, lambda c: ClaimResult([], later), handoffs)
    assert len(ran) == 1 and handoffs == []
    assert claims.has(KEY)
    ran = claims.claim_all(KEY, lambda c: ClaimResult([], None), handoffs)
    assert len(ran) == 1 and handoffs == []
    assert claims.has(KEY)


async def test_an_empty_claim_while_a_task_is_ready_is_handed_to_its_poller() -> None:
    claims: ArmedClaims[ClaimSpec] = ArmedClaims()
    armed = await arm(claims)
    handoffs: list[tuple[Armed[ClaimSpec], ClaimResult]] = []
    ready = ClaimResult([], time.time() - 0.001)
    claims.claim_all(KEY, lambda c: ready, handoffs)
    assert handoffs == [(armed, ready)]
    assert not claims.has(KEY)

    armed = await arm(claims)
    handoffs.clear()
    claims.claim_for(KEY, "any_type", lambda c: ready, handoffs)
    assert handoffs == [(armed, ready)]
    assert not claims.has(KEY)
