-- Fixed window: a counter that starts with the key's first request and expires one
-- window later (INCR, then PEXPIRE when the key is new). Rejections do not count, so
-- that a refund (rl_fixed_window_refund.lua) frees a place whatever was refused since.
-- KEYS[1]: the counter. ARGV[1]: limit (requests per window); ARGV[2]: window in µs.
-- Returns {allowed 0|1, remaining, reset ms (window end), retry-after ms, token}: the
-- token is the admitting window's end (µs on the Redis clock), for the refund.
-- Twin: gateway.policies.rate_limit.algorithms.fixed_window (keep them in step).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = math.ceil(tonumber(ARGV[2]) / 1000)
local existing = redis.call('GET', KEYS[1])
local count = tonumber(existing or 0)
local ttl = window
if existing then
  ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
    ttl = window
  end
end
if count >= limit then
  return {0, 0, ttl, ttl, 0}
end
count = redis.call('INCR', KEYS[1])
if not existing then
  redis.call('PEXPIRE', KEYS[1], window)
end
return {1, limit - count, ttl, 0, now + ttl * 1000}
