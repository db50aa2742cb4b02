"""One RPM/TPM budget shared by many processes, through one atomic Lua script in Redis (GCRA).

Each worker process of a batch job would otherwise pace itself at the full limit and together they would
send N times too much. The Generic Cell Rate Algorithm keeps one number per limit, the theoretical arrival
time (TAT): a charge of ``c`` moves it ``c * interval`` into the future, and is allowed when the TAT stays
within ``burst_s`` of now. Both limits are checked and charged in the same script, with Redis's own clock
(`TIME`), so no two workers can both take the last slot and clocks of different hosts never matter.

Hand-written because the libraries that do GCRA in Redis (redis-cell is a server module; `limits` has no
variable-cost charge with refunds) do not charge requests and tokens together and give tokens back.
`RedisBudget` plugs into `labkit.layers.admission.AdmissionLayer(budget=...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["GCRA_SCRIPT", "RedisBudget"]

GCRA_SCRIPT = """
-- KEYS: requests TAT, tokens TAT. ARGV: request interval s, token interval s, burst s, requests, tokens, mode
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local intervals = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local burst = tonumber(ARGV[3])
local costs = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local mode = ARGV[6]
local tats = {}
for i = 1, 2 do
  tats[i] = math.max(tonumber(redis.call('GET', KEYS[i]) or now), now)
end
local ttl = math.ceil(burst + 60)
if mode == 'refund' then
  for i = 1, 2 do
    local tat = math.max(tats[i] - costs[i] * intervals[i], now)
    redis.call('SET', KEYS[i], string.format('%.6f', tat), 'EX', ttl)
  end
  return '0'
end
local wait = 0
for i = 1, 2 do
  -- a charge larger than the whole burst waits for a full bucket, then overdraws it
  local step = math.min(costs[i] * intervals[i], burst)
  local w = tats[i] + step - burst - now
  if w > wait then wait = w end
end
if wait > 0 then return string.format('%.6f', wait) end
for i = 1, 2 do
  redis.call('SET', KEYS[i], string.format('%.6f', tats[i] + costs[i] * intervals[i]), 'EX', ttl)
end
return '0'
"""


class RedisBudget:
    """A shared RPM/TPM budget in Redis under ``key``; every process that uses the same key shares it.

    ``redis`` is a `redis.asyncio.Redis`. Headers are not synchronised through Redis (each process only sees
    its own answers); a 429 still pauses the process that got it.
    """

    def __init__(
        self, redis: Any, key: str, rpm: float, tpm: float, *, burst_s: float = 0.5, headroom: float = 0.03
    ) -> None:
        if rpm <= 0 or tpm <= 0 or burst_s <= 0:
            raise ValueError("rpm, tpm and burst_s must be positive")
        scale = 1.0 - headroom
        self.redis = redis
        self.keys = [f"{key}:requests", f"{key}:tokens"]
        self.request_interval = 60.0 / (rpm * scale)
        self.token_interval = 60.0 / (tpm * scale)
        self.burst_s = burst_s
        self._script = redis.register_script(GCRA_SCRIPT)
        self._tickets = 0

    async def _call(self, requests: int, tokens: int, mode: str) -> float:
        argv = [self.request_interval, self.token_interval, self.burst_s, requests, tokens, mode]
        reply = await self._script(keys=self.keys, args=argv)
        return float(reply.decode() if isinstance(reply, bytes) else reply)

    async def try_acquire(self, tokens: int) -> float:
        wait = await self._call(1, tokens, "acquire")
        if wait == 0:
            self._tickets += 1
        return wait

    def ticket(self) -> int:
        return self._tickets

    async def refund(self, tokens: int, requests: int = 0, ticket: int = 0) -> None:
        await self._call(requests, tokens, "refund")

    def sync(self, headers: Mapping[str, str], ticket: int = 0) -> None:
        return None

    async def reset(self) -> None:
        """Forget the budget's state (full buckets)."""
        await self.redis.delete(*self.keys)
