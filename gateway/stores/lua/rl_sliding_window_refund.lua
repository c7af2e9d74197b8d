-- Gives back one request rl_sliding_window.lua admitted, when a later limiter of the
-- same list refused it: one down from the count of the window that started at the
-- admission's token: the current window's, or the previous one's once the window moved
-- on; a later window owes it nothing (the hash keeps its expiry).
-- KEYS[1]: the hash. ARGV[1], ARGV[2]: as rl_sliding_window.lua; ARGV[3]: the token the
-- admission returned (its window's start, µs). Returns 1 if something was given back.
-- Twin: gateway.policies.rate_limit.algorithms.sliding_window_refund.
local v = redis.call('HMGET', KEYS[1], 's', 'c', 'p')
local start = tonumber(v[1])
if start == nil then
  return 0
end
local token = tonumber(ARGV[3])
local field, count
if math.abs(start - token) < 1 then
  field, count = 'c', tonumber(v[2]) or 0
elseif math.abs(start - token - tonumber(ARGV[2])) < 1 then
  field, count = 'p', tonumber(v[3]) or 0
else
  return 0
end
if count <= 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], field, -1)
return 1
