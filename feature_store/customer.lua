-- Everything the API reads about one customer, in one read-only call (FeatureReader.customer)
-- through redis-py: one command instead of a 17-command pipeline, which redis-py packs and
-- parses in Python. On the pipelined connection the same reads go as one MULTI/EXEC
-- (reader.customer_commands, kept in step with this file by a test): same replies, less
-- than half of Valkey's CPU. All keys carry the customer's hash tag.
--
-- KEYS: views cart bought dislikes neg ia vec rfm hist spend src fav cat offers ostate pushitems
-- ARGV[1]: how many recent views.  Replies in the same order, flat (member, score, ...).
local views = tonumber(ARGV[1])
return {
  redis.call('ZREVRANGE', KEYS[1], 0, views - 1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  redis.call('HGETALL', KEYS[4]),
  redis.call('HGETALL', KEYS[5]),
  redis.call('ZRANGE', KEYS[6], 0, -1, 'WITHSCORES'),
  redis.call('GET', KEYS[7]),
  redis.call('HGETALL', KEYS[8]),
  redis.call('LRANGE', KEYS[9], 0, -1),
  redis.call('HGETALL', KEYS[10]),
  redis.call('HGETALL', KEYS[11]),
  redis.call('ZREVRANGE', KEYS[12], 0, 49),
  redis.call('ZREVRANGE', KEYS[13], 0, 9, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[14]),
  redis.call('HGETALL', KEYS[15]),
  redis.call('HGETALL', KEYS[16]),
}
