-- KEYS[1]: counter; ARGV[1]: amount; ARGV[2]: expiry in ms, set when the key is new.
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if value == tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
