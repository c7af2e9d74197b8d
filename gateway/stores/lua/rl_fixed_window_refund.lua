-- Gives back one request rl_fixed_window.lua admitted, when a later limiter of the same
-- list refused it: the window's count goes one down (DECR keeps the key's expiry).
-- KEYS[1]: the counter. ARGV: as rl_fixed_window.lua. Returns 1 if given back.
-- Twin: gateway.policies.rate_limit.algorithms.fixed_window_refund.
local count = tonumber(redis.call('GET', KEYS[1]))
if count == nil or count <= 0 then
  return 0
end
redis.call('DECR', KEYS[1])
return 1
