-- Claim due push triggers of one shard for one worker, atomically.
-- KEYS[1] due zset (trigger -> due time, log clock)
-- KEYS[2] lease zset (trigger -> wall-clock lease expiry)
-- ARGV: clock, wall now, lease seconds, max triggers
-- A trigger is claimable when it is due and nobody holds a live lease on it; a worker
-- that dies after claiming loses its lease when it expires, and another claims it.
-- Returns {trigger, due, trigger, due, ...}.
local clock, now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock, 'WITHSCORES',
  'LIMIT', 0, 4 * limit)
local out = {}
for i = 1, #due, 2 do
  local held = redis.call('ZSCORE', KEYS[2], due[i])
  if not held or tonumber(held) <= now then
    redis.call('ZADD', KEYS[2], string.format('%.17g', now + lease), due[i])
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    if #out >= 2 * limit then break end
  end
end
return out
