-- Gives back one request rl_token_bucket.lua admitted, when a later limiter of the same
-- list refused it: the TAT moves back by what is left of that admission (one interval,
-- less what the bucket refilled since; nothing once it refilled past the admission's
-- TAT), and a bucket that is full again loses its key.
-- KEYS[1]: the bucket. ARGV[1], ARGV[2]: as rl_token_bucket.lua; ARGV[3]: the token the
-- admission returned (its TAT, µs). Returns 1 if something was given back.
-- Twin: gateway.policies.rate_limit.algorithms.token_bucket_refund.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local amount = math.min(tonumber(ARGV[1]), tonumber(ARGV[3]) - now)
if amount <= 0 then
  return 0
end
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil then
  return 0
end
local new_tat = tat - amount
if new_tat <= now then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 1
