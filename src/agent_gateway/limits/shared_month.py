"""Budgets while Redis is away and instances share a PostgreSQL ledger (LIMITS_FAIL_MODE=open).

Each instance alone would check the month against what it can see, and two of them admitted
58 calls where 29 fit. Here the month is checked under a lock every instance takes (a
transaction-scoped advisory lock per user-month) against the ledger itself, where every admitted
call has its row: settled rows count their tokens, rows in flight their reservation. The
admission's row is written in the same transaction, so the next check sees it. The request
and token rates stay per instance (the local budgets).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from agent_gateway.limits.budget import ADMITTED, OVER_MONTH, BudgetDecision, BudgetRequest, MemoryBudgets
from agent_gateway.stores.database import Database, ledger

# The route an admission row carries until the call's own row (same id) replaces it; a call
# refused after its budget was reserved never gets one, and its admission row is removed.
_ADMISSION = "admission"
_HELD = sa.func.coalesce(
    sa.func.sum(sa.case((ledger.c.state == "settled", ledger.c.total_tokens), else_=ledger.c.reserved_tokens)), 0
)


class SharedMonthBudgets:
    def __init__(self, database: Database, local: MemoryBudgets, instance: str) -> None:
        self.database = database
        self.local = local
        self.instance = instance  # the admission row is this process's, like the call's own

    async def reserve(self, request: BudgetRequest) -> BudgetDecision:
        local = dataclasses.replace(request, monthly_limit=None)
        rates = await self.local.reserve(local)  # the request and token rates, first as on Redis
        if not rates.admitted or request.monthly_limit is None:
            return rates
        month = await self._reserve_month(request)
        if not month.admitted:
            await self.local.settle(local, 0)  # the request still counts; its tokens do not
            return month
        return dataclasses.replace(month, remaining=rates.remaining, reset=rates.reset)

    async def settle(self, request: BudgetRequest, actual: int) -> None:
        await self.local.settle(dataclasses.replace(request, monthly_limit=None), actual)
        await self._forget(request)

    async def month_held(self, user_id: str, month: str) -> int:
        async with self.database.connect() as conn:
            return int((await conn.execute(_held(user_id, month))).scalar_one())

    async def _reserve_month(self, request: BudgetRequest) -> BudgetDecision:
        assert request.monthly_limit is not None
        async with self.database.begin() as conn:
            lock = sa.select(
                sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(f"{request.user_id}/{request.month}", 0))
            )
            await conn.execute(lock)
            held = int((await conn.execute(_held(request.user_id, request.month))).scalar_one())
            if held + request.tokens > request.monthly_limit:
                return BudgetDecision(OVER_MONTH, held, 0)
            row = {
                "id": request.reservation_id,
                "user_id": request.user_id,
                "route": _ADMISSION,
                "month": request.month,
                "state": "in_flight",
                "prompt_tokens": request.estimate,
                "completion_tokens": 0,
                "cached_tokens": 0,
                "total_tokens": request.estimate,
                "reserved_tokens": request.tokens,
                "estimated": True,
                "admitted_at": datetime.now(UTC),
                "instance": self.instance,
            }
            await conn.execute(postgresql.insert(ledger).values(row).on_conflict_do_nothing(index_elements=["id"]))
        return BudgetDecision(ADMITTED, held, request.tokens)

    async def _forget(self, request: BudgetRequest) -> None:
        """Remove the admission row of a call that never reached the ledger itself."""
        if request.monthly_limit is None:
            return
        async with self.database.begin() as conn:
            await conn.execute(
                sa.delete(ledger).where(ledger.c.id == request.reservation_id, ledger.c.route == _ADMISSION)
            )


def _held(user_id: str, month: str) -> sa.Select[tuple[int]]:
    return sa.select(_HELD).where(ledger.c.user_id == user_id, ledger.c.month == month)
