-- What a resuming member, or a process repairing a gap, needs of a room's
-- kept messages, and no more.
--
-- KEYS[1] the room's epoch, "<epoch> <master>"; KEYS[2] the room's stream
-- (see publish.lua: message n of an epoch is entry "<epoch>-<n-1>", its
-- event without the id). ARGV[1] the replication id of the master the
-- caller believes it talks to ('' if unknown). ARGV[2] 'after': ARGV[3] an
-- epoch and ARGV[4] a number: the messages after that one if it is of this
-- epoch and not past the newest, else every message kept. ARGV[2] 'last':
-- ARGV[3] a count: the last that many. Returns {epoch or '', newest number
-- (0: none), oldest number kept (0: none), entries oldest first as XRANGE
-- gives them}.
--
-- A room whose epoch another master numbered (this one was promoted in a
-- failover, and may lack that master's last messages) reads as a room with
-- no messages: its next message starts a new epoch (publish.lua), and what
-- this one holds of the old epoch may be short of what members have.
local stored = redis.call('GET', KEYS[1])
local epoch, numbered_by
if stored then
  epoch, numbered_by = string.match(stored, '^(%d+) (%x+)$')
end
if epoch and numbered_by ~= ARGV[1] then
  local master = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
  if numbered_by ~= master then
    epoch = nil
  end
end
if not epoch then
  return {'', 0, 0, {}}
end
local newest, oldest = 0, 0
local info = redis.pcall('XINFO', 'STREAM', KEYS[2])
if type(info) == 'table' and not info.err then
  local prefix = epoch .. '-'
  local function number(id)
    if type(id) == 'string' and string.sub(id, 1, #prefix) == prefix then
      return tonumber(string.sub(id, #prefix + 1)) + 1
    end
    return 0
  end
  for i = 1, #info - 1, 2 do
    if info[i] == 'last-generated-id' then
      newest = number(info[i + 1])
    elseif info[i] == 'first-entry' and type(info[i + 1]) == 'table' then
      oldest = number(info[i + 1][1])
    end
  end
end
local entries = {}
if ARGV[2] == 'last' then
  local count = tonumber(ARGV[3]) or 0
  if count > 0 then
    local newest_first = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', count)
    for i = #newest_first, 1, -1 do
      entries[#entries + 1] = newest_first[i]
    end
  end
else
  local after = tonumber(ARGV[4]) or 0
  if ARGV[3] == epoch and after <= newest then
    -- Message after+1 is entry "<epoch>-<after>".
    entries = redis.call('XRANGE', KEYS[2], epoch .. '-' .. after, '+')
  else
    entries = redis.call('XRANGE', KEYS[2], '-', '+')
  end
end
return {epoch, newest, oldest, entries}
