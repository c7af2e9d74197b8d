-- Gives back one request rl_fixed_window.lua admitted, when a later limiter of the same
-- list refused it: the count goes one down (DECR keeps the key's expiry), if the window
-- that admitted it is still the key's; a later window owes it nothing.
-- KEYS[1]: the counter. ARGV[1], ARGV[2]: as rl_fixed_window.lua; ARGV[3]: the token the
-- admission returned (its window's end, µs). Returns 1 if something was given back.
-- Twin: gateway.policies.rate_limit.algorithms.fixed_window_refund.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = redis.call('PTTL', KEYS[1])
-- A later window ends a whole window later; 2 ms covers PTTL's rounding.
if ttl < 0 or now + ttl * 1000 > tonumber(ARGV[3]) + 2000 then
  return 0
end
local count = tonumber(redis.call('GET', KEYS[1]))
if count == nil or count <= 0 then
  return 0
end
redis.call('DECR', KEYS[1])
return 1
