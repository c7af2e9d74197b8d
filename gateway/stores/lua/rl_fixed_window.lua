-- Fixed window: a counter that starts with the key's first request and expires one
-- window later (INCR, then PEXPIRE on the first hit). Rejections do not count, so that
-- a refund (rl_fixed_window_refund.lua) frees a place whatever was refused meanwhile.
-- KEYS[1]: the counter. ARGV[1]: limit (requests per window); ARGV[2]: window in µs.
-- Returns {allowed 0|1, remaining, reset ms (window end), retry-after ms}.
-- Twin: gateway.policies.rate_limit.algorithms.fixed_window (keep them in step).
local limit = tonumber(ARGV[1])
local window = math.ceil(tonumber(ARGV[2]) / 1000)
local count = tonumber(redis.call('GET', KEYS[1]) or 0)
local ttl
if count >= limit then
  ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
    ttl = window
  end
  return {0, 0, ttl, ttl}
end
count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], window)
  ttl = window
else
  ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
    ttl = window
  end
end
return {1, limit - count, ttl, 0}
