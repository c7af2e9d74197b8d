-- Token bucket as GCRA (generic cell rate algorithm): one key holds the bucket's
-- theoretical arrival time (TAT, microseconds on the Redis clock).
-- KEYS[1]: the bucket. ARGV[1]: emission interval in µs (period / rate);
-- ARGV[2]: burst (bucket size in requests).
-- Returns {allowed 0|1, remaining, reset ms (bucket full again), retry-after ms, token}:
-- the token is the TAT an admission left (µs), for rl_token_bucket_refund.lua.
-- Twin: gateway.policies.rate_limit.algorithms.token_bucket (keep them in step).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + interval
-- tat - interval * (burst - 1), not new_tat - interval * burst: adding the interval and
-- taking it away again can round above tat and refuse a fresh bucket's first request.
local allow_at = tat - interval * (burst - 1)
if now < allow_at then
  return {0, 0, math.ceil((tat - now) / 1000), math.ceil((allow_at - now) / 1000), 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval + 1e-6), math.ceil((new_tat - now) / 1000), 0,
  math.floor(new_tat)}
