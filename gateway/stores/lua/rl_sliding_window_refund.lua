-- Gives back one request rl_sliding_window.lua admitted, when a later limiter of the
-- same list refused it: the current window's count goes one down (the hash keeps its
-- expiry). KEYS[1]: the hash. ARGV: as rl_sliding_window.lua. Returns 1 if given back.
-- Twin: gateway.policies.rate_limit.algorithms.sliding_window_refund.
local curr = tonumber(redis.call('HGET', KEYS[1], 'c'))
if curr == nil or curr <= 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'c', -1)
return 1
