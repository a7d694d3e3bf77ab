-- Apply one batch of folded events to one shard, atomically and idempotently.
-- KEYS[1] watermarks hash (source -> highest applied offset)
-- KEYS[2] seen zset (event_id -> event ts), the dedupe window
-- KEYS[3] meta hash (maxts: newest event time applied in this shard; applied: how many
--         events this shard has applied, counted here so a crash can't lose the count)
-- ARGV[1] msgpack [source, window_s, [[event_id, offset, ts, ops], ...], after]
-- Every other key an op names carries the same hash tag, so this stays one slot.
-- Returns {applied, duplicates, already_applied_offsets, refused}.
-- after (optional): the source's watermark must already be at least this offset, i.e. the
-- previous batch's events of this source are in. A worker that sends a batch before the
-- previous one has answered (streams/ahead.py, AheadWriter) passes it: if that call
-- failed (a script cache flushed, a slot moved, a lost connection), this one is refused
-- whole (refused = 1, nothing applied), and the worker sends it again after the retry.
-- Without the check its offsets would move the watermark past the missing events.

local doc = cmsgpack.unpack(ARGV[1])
local source, window, events, after = doc[1], doc[2], doc[3], doc[4]

local function num(v, default)
  if v == false or v == nil then return default end
  return tonumber(v)
end

local function logaddexp(a, b)
  if a > b then return a + math.log(1 + math.exp(b - a)) end
  return b + math.log(1 + math.exp(a - b))
end

-- Numbers go to redis.call as Lua numbers: the server writes them exactly (shortest
-- round-trip form; %.17g before Redis 7.2), so no string.format here. Only the one
-- number spliced into a string (the seen window's exclusive bound) needs fmt.
local function fmt(x)
  return string.format('%.17g', x)
end

local OPS = {}
OPS.zmax = function(o) redis.call('ZADD', o[2], 'GT', o[4], o[3]) end
-- zmax, then keep the o[5] highest-scored members, only when the member is new: an update
-- never grows the set (ZADD GT answers how many members it added), so the trim's call is
-- spent only when it can remove something.
OPS.zmaxn = function(o)
  if redis.call('ZADD', o[2], 'GT', o[4], o[3]) == 1 then
    redis.call('ZREMRANGEBYRANK', o[2], 0, -(o[5] + 1))
  end
end
OPS.zinc = function(o) redis.call('ZINCRBY', o[2], o[4], o[3]) end
OPS.zlog = function(o)
  local old = num(redis.call('ZSCORE', o[2], o[3]), nil)
  local new = o[4]
  if old then new = logaddexp(old, new) end
  redis.call('ZADD', o[2], new, o[3])
end
OPS.hinc = function(o) redis.call('HINCRBYFLOAT', o[2], o[3], o[4]) end
OPS.hmax = function(o)
  local old = num(redis.call('HGET', o[2], o[3]), nil)
  if not old or o[4] > old then redis.call('HSET', o[2], o[3], o[4]) end
end
OPS.hmin = function(o)
  local old = num(redis.call('HGET', o[2], o[3]), nil)
  if not old or o[4] < old then redis.call('HSET', o[2], o[3], o[4]) end
end
-- hmin of field lo and hmax of field hi of hash key with the same value v, in one HMGET.
local function span(key, lo_field, hi_field, v)
  local both = redis.call('HMGET', key, lo_field, hi_field)
  local lo, hi = num(both[1], nil), num(both[2], nil)
  if not lo or v < lo then
    if not hi or v > hi then redis.call('HSET', key, lo_field, v, hi_field, v)
    else redis.call('HSET', key, lo_field, v) end
  elseif not hi or v > hi then
    redis.call('HSET', key, hi_field, v)
  end
end
OPS.hspan = function(o) span(o[2], o[3], o[4], o[5]) end
-- A customer's event: first/last seen (rfm o[2]), its source o[4] counted (o[3]) and,
-- for the events that make someone a customer, the customer o[7] in the shard's set
-- o[6]. Once per customer event: one op where three were (an op costs its unpacking).
OPS.seen = function(o)
  span(o[2], 'first_seen', 'last_seen', o[5])
  redis.call('HINCRBYFLOAT', o[3], o[4], 1)
  if o[6] then redis.call('SADD', o[6], o[7]) end
end
OPS.hset = function(o) redis.call('HSET', o[2], o[3], o[4]) end
OPS.hdel = function(o) redis.call('HDEL', o[2], o[3]) end
-- Set the fields o[first], o[first + 1], ... of hash `key` unless its 'ts' is newer than
-- `ts`; returns whether they were set, and whether the hash had a 'ts' before.
local function set_newer(key, ts, o, first)
  local old = num(redis.call('HGET', key, 'ts'), nil)
  if old and ts < old then return false, true end
  local args = {'ts', ts}
  for i = first, #o do args[#args + 1] = o[i] end
  redis.call('HSET', key, unpack(args))
  return true, old ~= nil
end
OPS.hnewer = function(o) set_newer(o[2], o[3], o, 4) end
-- A catalog entry changed: number the change (the shard's counter, field 'catalog' of
-- KEYS[3]) and note it in the changes zset, which the API polls to drop what it cached of
-- the item. Numbered here, written once per batch at the end: a catalog-heavy batch
-- (a replay's first sight of every item) costs one ZADD per key, not two calls an event.
local catalog_seq, changed = nil, {}
local function note_change(key, item)
  if not catalog_seq then catalog_seq = num(redis.call('HGET', KEYS[3], 'catalog'), 0) end
  catalog_seq = catalog_seq + 1
  local args = changed[key]
  if not args then args = {}; changed[key] = args end
  args[#args + 1] = catalog_seq
  args[#args + 1] = item
end
-- A catalog upsert or removal: hnewer on the item's hash, and a numbered change when the
-- entry existed before (an item seen for the first time is in no API's cache: an API
-- that asked for it before holds "not in the catalog" for cache_ttl_s only).
-- {'catalog', item key, changes key, item, ts, field, value, ...}
OPS.catalog = function(o)
  local set, existed = set_newer(o[2], o[5], o, 6)
  if set and existed then note_change(o[3], o[4]) end
end
local function write_changes()
  if not catalog_seq then return end
  redis.call('HSET', KEYS[3], 'catalog', catalog_seq)
  for key, args in pairs(changed) do
    for i = 1, #args, 2000 do  -- unpack's stack limit: 1,000 members a call
      redis.call('ZADD', key, unpack(args, i, math.min(i + 1999, #args)))
    end
  end
end
OPS.lpush = function(o)
  redis.call('LPUSH', o[2], o[3])
  redis.call('LTRIM', o[2], 0, o[4] - 1)
end
OPS.sadd = function(o) redis.call('SADD', o[2], o[3]) end
OPS.srem = function(o) redis.call('SREM', o[2], o[3]) end
OPS.buy = function(o)
  local n = redis.call('HINCRBY', o[2], o[3], 1)
  if n == 1 then redis.call('ZINCRBY', o[4], 1, o[3])
  elseif n == 2 then redis.call('ZINCRBY', o[5], 1, o[3]) end
end
OPS.session = function(o)
  local ksess, kitems, sid, item, ts, maxn, co = o[2], o[3], o[4], o[5], o[6], o[7], o[8]
  if redis.call('HGET', ksess, 'id') ~= sid then
    redis.call('DEL', kitems)
    redis.call('HSET', ksess, 'id', sid)
  end
  if not redis.call('ZSCORE', kitems, item) then
    local others = redis.call('ZRANGE', kitems, 0, -1)
    for _, other in ipairs(others) do
      redis.call('ZINCRBY', co .. item, 1, other)
      redis.call('ZINCRBY', co .. other, 1, item)
    end
  end
  if redis.call('ZADD', kitems, 'GT', ts, item) == 1 then  -- as zmaxn
    redis.call('ZREMRANGEBYRANK', kitems, 0, -(maxn + 1))
  end
end
OPS.basket = function(o)
  local co = o[2]
  for i = 3, #o do
    local key = co .. o[i]
    for j = 3, #o do
      if i ~= j then redis.call('ZINCRBY', key, 1, o[j]) end
    end
  end
end
OPS.basketk = function(o)
  -- updates.sampled_pairs, draw for draw: Park-Miller, exact in doubles (< 2^53)
  local co, x, head, k = o[2], o[3], o[4], o[5]
  local n = #o - 5
  for i = 6, 5 + head do
    local key = co .. o[i]
    for j = 6, 5 + head do
      if i ~= j then redis.call('ZINCRBY', key, 1, o[j]) end
    end
  end
  for i = head, n - 1 do
    local chosen = {}
    local item = o[6 + i]
    for j = n - 1 - k, n - 2 do
      x = (48271 * x) % 2147483647
      local t = x % (j + 1)
      if chosen[t] then t = j end
      chosen[t] = true
      if t >= i then t = t + 1 end
      redis.call('ZINCRBY', co .. item, 1, o[6 + t])
      redis.call('ZINCRBY', co .. o[6 + t], 1, item)
    end
  end
end
OPS.cancel = function(o)
  local korders, krfm, order_id, amount, kspend, month = o[2], o[3], o[4], o[5], o[6], o[7]
  if amount < 0 then
    amount = num(redis.call('HGET', korders, order_id), 0)
    redis.call('HDEL', korders, order_id)
  end
  redis.call('HINCRBYFLOAT', krfm, 'monetary', -amount)
  redis.call('HINCRBY', krfm, 'cancels', 1)
  redis.call('HINCRBYFLOAT', kspend, month, -amount)
end
OPS.hsetnx = function(o) redis.call('HSETNX', o[2], o[3], o[4]) end
OPS.zremle = function(o)
  local old = num(redis.call('ZSCORE', o[2], o[3]), nil)
  if old and old <= o[4] then redis.call('ZREM', o[2], o[3]) end
end
OPS.unwatch = function(o)
  for _, item in ipairs(redis.call('ZRANGE', o[2], 0, -1)) do
    redis.call('ZREM', o[3] .. item, o[4])
  end
end
OPS.zremprefix = function(o)
  local n = #o[3]
  for _, m in ipairs(redis.call('ZRANGE', o[2], 0, -1)) do
    if string.sub(m, 1, n) == o[3] then redis.call('ZREM', o[2], m) end
  end
end
OPS.del = function(o)
  for i = 2, #o do redis.call('DEL', o[i]) end
end

-- A/B experiments. Statistics are per-day sums in one hash per (shard, experiment), field
-- "variant|day|metric"; the per-customer sums of squares and products (e2, c2, ec, o2, r2,
-- rx, ro) are kept as increments, (n+1)^2 - n^2 = 2n+1, so variances come out on read.
local function xinc(st, variant, day, metric, d)
  if d ~= 0 then
    redis.call('HINCRBYFLOAT', st, variant .. '|' .. day .. '|' .. metric, d)
  end
end
local function xget(kxp, exp, field, default)
  return num(redis.call('HGET', kxp, exp .. '|' .. field), default)
end
OPS.xexpose = function(o)
  local kxp, kreq, kreql, krfm = o[2], o[3], o[4], o[5]
  local exp, variant, rid, ts, day, nreq = o[7], o[8], o[9], o[10], o[11], o[12]
  local kshown, shown = o[13], o[14]
  local st = o[6] .. exp
  local v = redis.call('HGET', kxp, exp .. '|v')
  if not v then
    v = variant
    local x = num(redis.call('HGET', krfm, 'monetary'), 0)
    redis.call('HSET', kxp, exp .. '|v', v, exp .. '|f', ts, exp .. '|x', x)
    xinc(st, v, day, 'users', 1)
    xinc(st, v, day, 'x', x)
    xinc(st, v, day, 'x2', x * x)
  else
    if v ~= variant then xinc(st, v, day, 'moved', 1) end
    if ts < xget(kxp, exp, 'f', ts) then redis.call('HSET', kxp, exp .. '|f', ts) end
  end
  local e, c = xget(kxp, exp, 'e', 0), xget(kxp, exp, 'c', 0)
  redis.call('HSET', kxp, exp .. '|e', e + 1)
  if ts > xget(kxp, exp, 'l', ts - 1) then redis.call('HSET', kxp, exp .. '|l', ts) end
  xinc(st, v, day, 'exp', 1)
  xinc(st, v, day, 'e2', 2 * e + 1)
  xinc(st, v, day, 'ec', c)
  local pair = exp .. '=' .. v
  local seen = redis.call('HGET', kreq, rid)
  if seen then
    redis.call('HSET', kreq, rid, seen .. ';' .. pair)
  else
    redis.call('HSET', kreq, rid, pair)
    redis.call('HSET', kshown, rid, shown)
    redis.call('LPUSH', kreql, rid)
    while redis.call('LLEN', kreql) > nreq do
      local old = redis.call('RPOP', kreql)
      redis.call('HDEL', kreq, old)
      redis.call('HDEL', kshown, old)
    end
  end
end
local function xclick(kxp, kreq, prefix, rid, day)
  local shown = redis.call('HGET', kreq, rid)
  if not shown then return end
  redis.call('HDEL', kreq, rid)  -- one click per exposure
  for pair in string.gmatch(shown, '[^;]+') do
    local exp = string.match(pair, '^([^=]+)=')
    local v = redis.call('HGET', kxp, exp .. '|v')
    if v then
      local e, c = xget(kxp, exp, 'e', 0), xget(kxp, exp, 'c', 0)
      redis.call('HSET', kxp, exp .. '|c', c + 1)
      local st = prefix .. exp
      xinc(st, v, day, 'clk', 1)
      xinc(st, v, day, 'c2', 2 * c + 1)
      xinc(st, v, day, 'ec', e)
    end
  end
end
OPS.xclick = function(o) xclick(o[2], o[3], o[4], o[5], o[6]) end
OPS.xview = function(o)
  local kxp, kreq, kreql, kshown, prefix = o[2], o[3], o[4], o[5], o[6]
  local needle, ts, day, window = ',' .. o[7] .. ',', o[8], o[9], o[10]
  for _, rid in ipairs(redis.call('LRANGE', kreql, 0, -1)) do  -- newest first
    local shown = redis.call('HGET', kshown, rid)
    if shown and redis.call('HEXISTS', kreq, rid) == 1 then
      local sp = string.find(shown, ' ', 1, true)
      local at = tonumber(string.sub(shown, 1, sp - 1))
      if ts >= at and ts - at <= window and string.find(shown, needle, sp, true) then
        xclick(kxp, kreq, prefix, rid, day)
        return
      end
    end
  end
end
OPS.xconvert = function(o)
  local kxp, prefix, kind, ts, day, amount, window = o[2], o[3], o[4], o[5], o[6], o[7], o[8]
  local flat = redis.call('HGETALL', kxp)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], -2) == '|v' then
      local exp, v = string.sub(flat[i], 1, -3), flat[i + 1]
      local st = prefix .. exp
      if ts >= xget(kxp, exp, 'f', 0) and ts <= xget(kxp, exp, 'l', 0) + window then
        if kind == 'cart' then
          xinc(st, v, day, 'cart', 1)
        else
          local n, r, x = xget(kxp, exp, 'o', 0), xget(kxp, exp, 'r', 0), xget(kxp, exp, 'x', 0)
          if n == 0 then xinc(st, v, day, 'conv', 1) end
          redis.call('HSET', kxp, exp .. '|o', n + 1, exp .. '|r', r + amount)
          xinc(st, v, day, 'ord', 1)
          xinc(st, v, day, 'o2', 2 * n + 1)
          xinc(st, v, day, 'rev', amount)
          xinc(st, v, day, 'r2', 2 * r * amount + amount * amount)
          xinc(st, v, day, 'rx', amount * x)
          xinc(st, v, day, 'ro', r + amount * n + amount)
        end
      end
    end
  end
end

local wm = num(redis.call('HGET', KEYS[1], source), -1)
if after and wm < after then return {0, 0, 0, 1} end
local maxts = num(redis.call('HGET', KEYS[3], 'maxts'), 0)
local maxoff = wm
local applied, dups, old = 0, 0, 0
for _, e in ipairs(events) do
  local eid, off, ts, ops = e[1], e[2], e[3], e[4]
  if off >= 0 and off <= wm then
    old = old + 1
  elseif redis.call('ZADD', KEYS[2], 'NX', ts, eid) == 0 then
    dups = dups + 1
  else
    for _, op in ipairs(ops) do OPS[op[1]](op) end
    applied = applied + 1
    if ts > maxts then maxts = ts end
  end
  if off > maxoff then maxoff = off end
end
if maxoff > wm then redis.call('HSET', KEYS[1], source, maxoff) end
write_changes()
redis.call('HSET', KEYS[3], 'maxts', maxts)
if applied > 0 then redis.call('HINCRBY', KEYS[3], 'applied', applied) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. fmt(maxts - window))
return {applied, dups, old, 0}
