-- Sliding window, counter approximation: the count of the current window plus the
-- previous window's count weighted by how much of it still overlaps the sliding
-- window. Windows start with the key's first request (s, µs on the Redis clock).
-- KEYS[1]: hash {s: current window start, c: its count, p: previous window's count}.
-- ARGV[1]: limit (requests per window); ARGV[2]: window in µs.
-- Returns {allowed 0|1, remaining, reset ms, retry-after ms, token}: the token is the
-- admitting window's start as stored (µs), for the refund. Rejections do not count.
-- Twin: gateway.policies.rate_limit.algorithms.sliding_window (keep them in step).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 's', 'c', 'p')
local start = tonumber(v[1])
local curr = tonumber(v[2]) or 0
local prev = tonumber(v[3]) or 0
if start == nil then
  start, curr, prev = now, 0, 0
elseif now >= start + window then
  if now < start + 2 * window then
    start, prev, curr = start + window, curr, 0
  else
    start, curr, prev = now, 0, 0
  end
end
local elapsed = now - start

-- Microseconds until one more request fits, given the counts c and p at `elapsed`.
local function wait(c, p)
  local room = limit - 1 - c
  if room >= 0 then
    if p <= room then
      return 0
    end
    return math.max(window * (1 - room / p) - elapsed, 0)
  end
  return window - elapsed + window * (1 - (limit - 1) / c)
end

local estimate = prev * (window - elapsed) / window + curr
if estimate + 1 > limit then
  local retry = math.ceil(wait(curr, prev) / 1000)
  return {0, 0, retry, retry, 0}
end
curr = curr + 1
local stored_start = string.format('%.0f', start)
redis.call('HSET', KEYS[1], 's', stored_start, 'c', curr, 'p', prev)
redis.call('PEXPIRE', KEYS[1], math.ceil((start + 2 * window - now) / 1000))
local remaining = math.floor(limit - estimate - 1 + 1e-9)
local reset
if remaining > 0 then
  reset = math.ceil((window - elapsed) / 1000)
else
  reset = math.ceil(wait(curr, prev) / 1000)
end
return {1, remaining, reset, 0, tonumber(stored_start)}
