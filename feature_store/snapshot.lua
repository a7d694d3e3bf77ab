-- One page of a shard's customers and their ALS interactions, read inside Redis.
--
-- KEYS[1]  the shard's customer set ({p:s}:users)
-- ARGV[1]  SSCAN cursor ("0" to start)
-- ARGV[2]  SSCAN COUNT hint (customers per page)
-- ARGV[3]  key head of the shard's customers ("{p:s}:u:"); ARGV[4] the suffix (":ia")
--
-- Returns {next_cursor, uid, items, scores, uid, items, scores, ...}: items and scores
-- joined by "\n" (ids never hold one: streams/events.py's Id pattern) so the client
-- parses three bulk strings per customer instead of two per interaction. Scores are
-- Redis's own shortest round-trip rendering, so they parse back to the exact doubles.
-- Every key read carries the shard's hash tag: one slot, as on Redis Cluster.
local page = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {page[1]}
for _, uid in ipairs(page[2]) do
  local z = redis.call('ZRANGE', ARGV[3] .. uid .. ARGV[4], 0, -1, 'WITHSCORES')
  if #z > 0 then
    local items, scores = {}, {}
    for j = 1, #z, 2 do
      items[#items + 1] = z[j]
      scores[#scores + 1] = z[j + 1]
    end
    out[#out + 1] = uid
    out[#out + 1] = table.concat(items, '\n')
    out[#out + 1] = table.concat(scores, '\n')
  end
end
return out
