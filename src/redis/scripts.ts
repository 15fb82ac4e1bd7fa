/**
 * The Redis engine's Lua scripts: one per operation, each atomic, the same algorithms as
 * `internal/gcra.ts`, `window.ts` and `leases.ts` (the compliance suite holds them to the same
 * results). Time is Redis `TIME`, in whole microseconds since the epoch: exact in a double.
 *
 * KEYS (one hash tag, so Redis Cluster keeps them on one node):
 *   1 state   hash: a, n, i (token bucket: tat = a + n * i, a in whole µs), w (write counter),
 *             b (blocked until, µs), seq (window member counter), t (line ticket counter)
 *   2 log     sorted set: one member per admitted window unit, scored by its slot (µs)
 *   3 holders sorted set: lease id -> expiry (µs)
 *   4 line    sorted set: waiting lease id -> ticket (its place in line)
 *   5 lineexp hash: waiting lease id -> expiry (µs)
 * Every key expires when the state it holds would be no different from none (`expire_all`).
 *
 * ARGV 1-10 are common: base (µs; values returned to the client are relative to it, so they stay
 * small and exact), kind ("tb", "sw" or ""), interval (µs), burst, limit, window (µs, lengthened by
 * the margin), lease ttl (µs), max concurrent, the key's state id (the message of the release and
 * backoff channels), the release channel. Results are strings: Lua numbers would be truncated to
 * integers on the way out.
 */

const prelude = `
local S, LOG, H, Q, QE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local base = tonumber(ARGV[1])
local kind = ARGV[2]
local interval = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local maxc = tonumber(ARGV[8])
local sid = ARGV[9]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local N = now - base

local function fmt(x) return string.format('%.17g', x) end
local function ms(us) return fmt(us / 1000) end

local tolerance = 0
if kind == 'tb' then tolerance = burst * interval end

-- token bucket: its hash fields, read once per script and kept in step with what it writes
local bucket = nil
local function load_bucket()
  if bucket == nil then
    local v = redis.call('HMGET', S, 'a', 'n', 'i')
    bucket = { a = tonumber(v[1]), n = tonumber(v[2]), i = tonumber(v[3]) }
  end
  return bucket
end

-- the tat relative to base, or nil for a fresh key
local function tat_rel()
  local b = load_bucket()
  if not b.a then return nil end
  return (b.a - base) + b.n * b.i
end

-- writes tat = from + cost * interval, keeping the anchor while the bucket is busy so sums stay exact
local function write_tat(tat, cost)
  local b = load_bucket()
  if tat ~= nil and tat > N and b.i == interval then
    b.n = b.n + cost
    redis.call('HINCRBY', S, 'n', cost)
  else
    local from = N
    if tat ~= nil and tat > N then from = math.ceil(tat) end
    b.a, b.n, b.i = base + from, cost, interval
    redis.call('HSET', S, 'a', fmt(b.a), 'n', cost, 'i', fmt(interval))
  end
  return redis.call('HINCRBY', S, 'w', 1)
end

-- a wait below a nanosecond is float noise
local function settle(wait) if wait < 0.001 then return 0 end return wait end

local function remaining_tb(tat)
  local debt = 0
  if tat ~= nil and tat > N then debt = tat - N end
  return math.max(0, math.floor((tolerance - debt) / interval + 1e-9))
end

local function blocked()
  local b = redis.call('HGET', S, 'b')
  if b then return tonumber(b) end
  return 0
end

local function prune_log()
  redis.call('ZREMRANGEBYSCORE', LOG, '-inf', now - window)
end

-- the earliest slot (absolute µs) at or after not_before that fits cost units in every window
local function earliest(not_before, cost)
  local slot = not_before
  local last = redis.call('ZRANGE', LOG, -1, -1, 'WITHSCORES')
  if last[2] then slot = math.max(slot, tonumber(last[2])) end
  local pivot = redis.call('ZREVRANGE', LOG, limit - cost, limit - cost, 'WITHSCORES')
  if pivot[2] then slot = math.max(slot, tonumber(pivot[2]) + window) end
  return math.ceil(slot)
end

local function purge_leases()
  redis.call('ZREMRANGEBYSCORE', H, '-inf', now)
  local line = redis.call('HGETALL', QE)
  for i = 1, #line, 2 do
    if tonumber(line[i + 1]) <= now then
      redis.call('HDEL', QE, line[i])
      redis.call('ZREM', Q, line[i])
    end
  end
end

local function can_grant(id)
  if redis.call('ZSCORE', H, id) then return true end
  local ahead = redis.call('ZRANK', Q, id)
  if not ahead then ahead = redis.call('ZCARD', Q) end
  return redis.call('ZCARD', H) + ahead < maxc
end

local function soonest_expiry()
  local first = redis.call('ZRANGE', H, 0, 0, 'WITHSCORES')
  if first[2] then return ms(tonumber(first[2]) - now) end
  return ''
end

-- gives a lease or a place in line back; wakes waiters when that may let one in
local function leave(id)
  local had = redis.call('ZREM', H, id) == 1
  redis.call('ZREM', Q, id)
  redis.call('HDEL', QE, id)
  if had or redis.call('ZCARD', Q) > 0 then redis.call('PUBLISH', ARGV[10], sid) end
end

local cap = ''
if kind == 'tb' then cap = fmt(burst) elseif kind == 'sw' then cap = fmt(limit) end

local function rate_remaining()
  if kind == 'tb' then return fmt(remaining_tb(tat_rel())) end
  return fmt(math.max(0, limit - redis.call('ZCARD', LOG)))
end

-- how long a request of cost units waits for its slot (µs); the log must be pruned first
local function rate_wait(cost)
  if kind == 'tb' then
    local tat = tat_rel()
    local from = N
    if tat ~= nil and tat > N then from = tat end
    return settle(from + cost * interval - tolerance - N)
  end
  return settle(earliest(math.max(now, blocked()), cost) - now)
end

-- records an admission at now + wait: returns its slot, tat (ms), version and what remains
local function take(cost, wait)
  if kind == 'tb' then
    local version = write_tat(tat_rel(), cost)
    local written = tat_rel()
    return ms(N + wait), ms(written), fmt(version), fmt(remaining_tb(written))
  end
  local at = now + wait
  local last = redis.call('HINCRBY', S, 'seq', cost)
  for m = last - cost + 1, last do redis.call('ZADD', LOG, at, m) end
  return ms(at - base), '0', '', fmt(math.max(0, limit - redis.call('ZCARD', LOG)))
end

-- every key lives exactly as long as its state differs from a fresh key's; only the keys this
-- limiter uses are read and set (a window's log, leases' keys), the rest expire as they were set
local function expire_all()
  local stale = 0
  local used = {S}
  local v = redis.call('HMGET', S, 'a', 'n', 'i', 'b')
  if v[1] then stale = math.max(stale, tonumber(v[1]) + tonumber(v[2]) * tonumber(v[3])) end
  if v[4] then stale = math.max(stale, tonumber(v[4])) end
  if kind == 'sw' then
    used[#used + 1] = LOG
    local last = redis.call('ZRANGE', LOG, -1, -1, 'WITHSCORES')
    if last[2] then stale = math.max(stale, tonumber(last[2]) + window) end
  end
  if maxc > 0 then
    used[#used + 1], used[#used + 2], used[#used + 3] = H, Q, QE
    local holder = redis.call('ZRANGE', H, -1, -1, 'WITHSCORES')
    if holder[2] then stale = math.max(stale, tonumber(holder[2])) end
    for _, e in ipairs(redis.call('HVALS', QE)) do stale = math.max(stale, tonumber(e)) end
  end
  if stale <= now then
    redis.call('DEL', unpack(used))
  else
    local at = math.ceil(stale / 1000) + 1
    for _, k in ipairs(used) do redis.call('PEXPIREAT', k, at) end
  end
end
`

/**
 * Every outcome is 7 strings: {"A", wait ms, slot ms, tat ms, version, limit, remaining},
 * {"R", retry after ms, limit, remaining, "", "", ""} or {"C", soonest expiry ms, held, limit, "", "", ""}.
 *
 * A request with a lease. ARGV 11 cost, 12 lease id, 13 max wait (µs, -1 for none),
 * 14 queue ("1": keep a place in line when every lease is held).
 */
export const acquireLease = `${prelude}
local cost = tonumber(ARGV[11])
local id = ARGV[12]
local max_wait = tonumber(ARGV[13])

purge_leases()
local wait = 0
if kind ~= '' then
  if kind == 'sw' then prune_log() end
  wait = rate_wait(cost)
  -- the rate decision comes first: a slot beyond the deadline only moves further away
  if max_wait >= 0 and wait > max_wait then
    leave(id)
    local remaining = rate_remaining()
    expire_all()
    return {'R', ms(wait), cap, remaining, '', '', ''}
  end
end
if not can_grant(id) then
  if ARGV[14] == '1' then
    if not redis.call('ZSCORE', Q, id) then redis.call('ZADD', Q, redis.call('HINCRBY', S, 't', 1), id) end
    redis.call('HSET', QE, id, fmt(now + ttl))
  end
  local soonest = soonest_expiry()
  local held = redis.call('ZCARD', H)
  expire_all()
  return {'C', soonest, fmt(held), fmt(maxc), '', '', ''}
end
redis.call('ZREM', Q, id)
redis.call('HDEL', QE, id)
redis.call('ZADD', H, now + ttl, id)
local slot, tat, version, remaining = '', '', '', ''
if kind ~= '' then slot, tat, version, remaining = take(cost, wait) end
expire_all()
return {'A', ms(wait), slot, tat, version, cap, remaining}
`

/**
 * A batch of sliding-window rate requests without leases, decided in order (the waiters of one
 * process on one key; token buckets go through `acquireBuckets`). ARGV 11 on: pairs of cost, max
 * wait (µs, -1 for none). Returns 7 strings per request.
 */
export const acquireRates = `${prelude}
if kind == 'sw' then prune_log() end
local out = {}
for i = 11, #ARGV, 2 do
  local cost = tonumber(ARGV[i])
  local max_wait = tonumber(ARGV[i + 1])
  local wait = rate_wait(cost)
  if max_wait >= 0 and wait > max_wait then
    for _, v in ipairs({'R', ms(wait), cap, rate_remaining(), '', '', ''}) do out[#out + 1] = v end
  else
    local slot, tat, version, remaining = take(cost, wait)
    for _, v in ipairs({'A', ms(wait), slot, tat, version, cap, remaining}) do out[#out + 1] = v end
  end
end
expire_all()
return out
`

/**
 * Token-bucket rate slots of one or several keys in one call: each key's batch of requests (the
 * waiters of a process on it), then its slots reserved ahead, exactly as `acquireRates` decides them,
 * but with one read and one write per key and no prelude. A process's keys that are ready together
 * share the call, so many keys cost one round trip and one script run. KEYS: each key's state. ARGV 1
 * base, then a group per key: interval (µs), burst, how many requests, how many ahead, their max wait
 * (µs), then pairs: cost, max wait (µs, -1 for none). Returns per key a count of the strings that
 * follow, then `acquireRates`'s reply for it, or {"E", message} when the key could not be read (not
 * a hash): that key's error alone.
 */
export const acquireBuckets = `
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local base = tonumber(ARGV[1])
local N = now - base
local format, floor, ceil, max, tonumber, tostring = string.format, math.floor, math.ceil, math.max, tonumber, tostring
local out = {}
local len = 0
local o = 2
for j = 1, #KEYS do
  local S = KEYS[j]
  local interval, burst = tonumber(ARGV[o]), tonumber(ARGV[o + 1])
  local requests, ahead, ahead_wait = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
  local p = o + 5
  o = p + 2 * requests
  local head = len + 1
  len = head
  local v = redis.pcall('HMGET', S, 'a', 'n', 'i', 'w', 'b')
  if v.err then
    out[head + 1], out[head + 2] = 'E', v.err
    len = head + 2
  else
    local tolerance, cap = burst * interval, format('%.17g', burst)
    local a, n, i, w, b = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4]) or 0, tonumber(v[5])
    -- tat relative to base, or nil for a fresh key
    local tat = nil
    if a then tat = (a - base) + n * i end
    local wrote = false
    -- the requests in order, then (p == o) the slots reserved ahead
    while p <= o do
      local spare = p == o
      local cost, max_wait = 0, -1
      if not spare then cost, max_wait = tonumber(ARGV[p]), tonumber(ARGV[p + 1]) end
      local from = N
      if tat ~= nil and tat > N then from = tat end
      if spare and ahead > 0 then
        local first = from + interval - tolerance - N
        -- the free burst is for callers at once: spent ahead only where a rate it refills within the
        -- margin leaves at least half of it free after them
        if first > 0 or (interval <= ahead_wait and first + (ahead - 1) * interval <= -tolerance / 2) then
          while cost < ahead do
            local due = first + cost * interval
            if due >= 0.001 and due > ahead_wait then break end
            cost = cost + 1
          end
        end
        if cost > 0 then
          out[len + 1], out[len + 2], out[len + 3] = 'B', tostring(cost), format('%.17g', first / 1000)
          out[len + 4], out[len + 5] = format('%.17g', interval / 1000), format('%.17g', N / 1000)
        end
      end
      local wait = from + cost * interval - tolerance - N
      if wait < 0.001 then wait = 0 end
      local refused = not spare and max_wait >= 0 and wait > max_wait
      if cost > 0 and not refused then
        -- keeps the anchor while the bucket is busy, so sums stay exact
        if tat ~= nil and tat > N and i == interval then
          n = n + cost
        else
          a, n, i = base + ceil(from), cost, interval
        end
        tat, w, wrote = (a - base) + n * i, w + 1, true
      end
      local remaining = tostring(max(0, floor((tolerance - max(0, (tat or N) - N)) / interval + 1e-9)))
      if refused then
        out[len + 1], out[len + 2], out[len + 3], out[len + 4] = 'R', format('%.17g', wait / 1000), cap, remaining
        out[len + 5], out[len + 6], out[len + 7] = '', '', ''
        len = len + 7
      elseif not spare then
        out[len + 1], out[len + 2], out[len + 3] = 'A', format('%.17g', wait / 1000), format('%.17g', (N + wait) / 1000)
        out[len + 4], out[len + 5], out[len + 6], out[len + 7] = format('%.17g', tat / 1000), tostring(w), cap, remaining
        len = len + 7
      elseif cost > 0 then
        out[len + 6], out[len + 7], out[len + 8], out[len + 9] = format('%.17g', tat / 1000), tostring(w), cap, remaining
        len = len + 9
      end
      p = p + 2
    end
    if wrote then
      redis.call('HSET', S, 'a', format('%.17g', a), 'n', format('%.17g', n), 'i', format('%.17g', i), 'w', tostring(w))
      local stale = a + n * i
      if b and b > stale then stale = b end
      redis.call('PEXPIREAT', S, ceil(stale / 1000) + 1)
    end
  end
  out[head] = tostring(len - head)
end
return out
`

/**
 * Several keys' rate slots at once (`Store.acquireAll`), all or none. KEYS: each member's state and
 * log (two a member). ARGV 11 how long after now the slots may be at the soonest (µs), 12 how many
 * members, then 7 a member: kind, interval (µs), burst, limit, window (µs, lengthened by the
 * margin), cost, max wait (µs, -1 for none). Every member's own earliest wait is found first, with
 * nothing written; all are then placed at the latest of them, or none is when that lies beyond a
 * member's max wait: {"R", retry after ms, limit, remaining, the member (from 1), "", "", ""}.
 * Admitted: 8 strings a member, an outcome's 7 and the cost a refund is given to undo it (a token
 * bucket placed after its own slot arrives at the common slot: a refund also gives that time back).
 */
export const acquireAll = `${prelude}
local after = tonumber(ARGV[11])
local count = tonumber(ARGV[12])
-- makes member j the one the prelude's functions work on
local function member(j)
  local o = 12 + (j - 1) * 7
  S, LOG = KEYS[2 * j - 1], KEYS[2 * j]
  kind, interval, burst = ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  limit, window = tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  tolerance, cap, bucket = 0, fmt(limit), nil
  if kind == 'tb' then tolerance, cap = burst * interval, fmt(burst) end
  return tonumber(ARGV[o + 6]), tonumber(ARGV[o + 7])
end
local waits, at = {}, after
for j = 1, count do
  local cost = member(j)
  if kind == 'sw' then prune_log() end
  waits[j] = rate_wait(cost)
  at = math.max(at, waits[j])
end
-- whole µs: a window's entry is found again by its score when given back
at = math.ceil(at)
local refused = 0
for j = 1, count do
  local _, max_wait = member(j)
  if max_wait >= 0 and at > max_wait and (refused == 0 or waits[j] > waits[refused]) then refused = j end
end
if refused > 0 then
  member(refused)
  return {'R', ms(at), cap, rate_remaining(), fmt(refused), '', '', ''}
end
local out = {}
for j = 1, count do
  local cost = member(j)
  local refund, slot, tat, version, remaining = cost, nil, nil, nil, nil
  if kind == 'tb' then
    local t = tat_rel()
    local from = N
    if t ~= nil and t > N then from = t end
    local arrival = math.ceil(N + at)
    if from < arrival then
      local b = load_bucket()
      b.a, b.n, b.i = base + arrival, cost, interval
      redis.call('HSET', S, 'a', fmt(b.a), 'n', cost, 'i', fmt(interval))
      version = redis.call('HINCRBY', S, 'w', 1)
      refund = cost + (arrival - from) / interval
    else
      version = write_tat(t, cost)
    end
    local written = tat_rel()
    slot, tat, version, remaining = ms(N + at), ms(written), fmt(version), fmt(remaining_tb(written))
  else
    slot, tat, version, remaining = take(cost, at)
  end
  expire_all()
  for _, v in ipairs({'A', ms(at), slot, tat, version, cap, remaining, fmt(refund)}) do out[#out + 1] = v end
end
return out
`

/** ARGV 11 lease id. */
export const release = `${prelude}
purge_leases()
leave(ARGV[11])
expire_all()
return 1
`

/** ARGV 11 lease id. Returns 1 when the lease was still held and now runs for another ttl. */
export const renew = `${prelude}
purge_leases()
local renewed = 0
if redis.call('ZSCORE', H, ARGV[11]) then
  redis.call('ZADD', H, 'XX', now + ttl, ARGV[11])
  renewed = 1
end
expire_all()
return renewed
`

/**
 * ARGV 11 cost, 12 version written by the reservation (token bucket), 13 slot (µs, window). A token
 * bucket's cost may have a fraction (`acquireAll`): it goes off the anchor, in whole µs rounded down.
 */
export const refund = `${prelude}
local cost = tonumber(ARGV[11])
if kind == 'tb' then
  -- only the newest reservation goes back: later ones were spaced from it
  if redis.call('HGET', S, 'w') == ARGV[12] then
    local whole = math.floor(cost)
    redis.call('HINCRBY', S, 'n', -whole)
    if cost > whole then
      local b = load_bucket()
      redis.call('HSET', S, 'a', fmt(b.a - math.floor((cost - whole) * interval)))
    end
    redis.call('HINCRBY', S, 'w', 1)
  end
elseif kind == 'sw' then
  local units = redis.call('ZRANGEBYSCORE', LOG, ARGV[13], ARGV[13], 'LIMIT', 0, cost)
  if #units > 0 then redis.call('ZREM', LOG, unpack(units)) end
end
expire_all()
return 1
`

/**
 * ARGV 11 retry after (µs), 12 the backoff channel, 13 the caller's origin: no slot is granted before
 * now + retry after, and every process hears of it ("retry after ms:origin:state id"), so slots its waiters reserved earlier are
 * not used inside it. The write counter moves whatever happens, so no refund of an earlier
 * reservation can bring the next slot back inside the hold.
 */
export const backoff = `${prelude}
local push = tonumber(ARGV[11])
if kind == 'tb' then
  local target = N + push + tolerance - interval
  local tat = tat_rel()
  if tat == nil or target > tat then
    bucket.a, bucket.n, bucket.i = base + math.ceil(target), 0, interval
    redis.call('HSET', S, 'a', fmt(bucket.a), 'n', 0, 'i', fmt(interval))
  end
  redis.call('HINCRBY', S, 'w', 1)
elseif kind == 'sw' then
  redis.call('HSET', S, 'b', fmt(math.max(blocked(), math.ceil(now + push))))
end
expire_all()
redis.call('PUBLISH', ARGV[12], ms(push) .. ':' .. ARGV[13] .. ':' .. sid)
return 1
`

/** Returns {limit, remaining, reset after ms, next slot after ms, leases held, waiting}. */
export const state = `${prelude}
purge_leases()
local remaining, reset, next = '', 0, 0
if kind == 'tb' then
  local tat = tat_rel()
  remaining = fmt(remaining_tb(tat))
  if tat ~= nil then
    reset = math.max(0, tat - N)
    next = math.max(0, tat + interval - tolerance - N)
  end
elseif kind == 'sw' then
  prune_log()
  remaining = fmt(math.max(0, limit - redis.call('ZCARD', LOG)))
  local b = blocked()
  local last = redis.call('ZRANGE', LOG, -1, -1, 'WITHSCORES')
  if last[2] then reset = math.max(reset, tonumber(last[2]) + window - now) end
  reset = math.max(reset, b - now)
  next = earliest(math.max(now, b), 1) - now
end
local held, waiting = redis.call('ZCARD', H), redis.call('ZCARD', Q)
expire_all()
return {cap, remaining, ms(reset), ms(next), fmt(held), fmt(waiting)}
`
