-- Publishes one chat message of a room and gives it the room's next number,
-- in one step.
--
-- KEYS[1] the room's epoch, a string "<epoch> <master>" (below); KEYS[2]
-- the room's stream. ARGV[1] the room's channel; ARGV[2] the event JSON
-- without its closing }} (the id is added to what is published); ARGV[3]
-- how many messages the stream keeps (0: none); ARGV[4] how long (ms) the
-- room's keys live after a message; ARGV[5] '1' to refresh that lifetime,
-- '0' when the caller did lately (below); ARGV[6] the replication id of the
-- master the caller believes it talks to ('' if unknown); ARGV[7] '1' for
-- a retry (below). Publishes "<epoch>-<seq> <event>", the event closed
-- with that id (the id first: a subscriber reads it without parsing JSON),
-- and returns the id; or XADD's error when Redis is out of memory or even
-- a new epoch refused it.
--
-- The stream is the room's counter: message n of an epoch is entry
-- "<epoch>-<n-1>", added with the id "<epoch>-*" so Redis takes the next
-- number itself (a stream keeps its last id whatever it trims, even with
-- nothing kept). One XADD both numbers and keeps the message, and in an
-- epoch that stands it is the first write: there is no counter to expire
-- apart from the stream, and nothing to roll back if it fails (Redis never
-- rolls a script back). Only a new epoch writes first: its epoch key, and
-- the stream emptied.
--
-- An epoch is numbered by one master, named in the epoch key by its
-- replication id. Replication is asynchronous: a replica promoted in a
-- failover may lack the last messages its old master numbered (and
-- published: members have them), and numbering on from its stream would
-- give their numbers to other messages. A promoted replica has a new
-- replication id, so a room whose epoch another master numbered starts a
-- new epoch here. The caller's id is a hint that spares the INFO call
-- (about a third of this script's cost) while it matches the room's; on a
-- mismatch Redis is asked which master it is.
local function master_here()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
end

local master = ARGV[6]
local epoch, numbered_by
local stored = redis.call('GET', KEYS[1])
if stored then
  epoch, numbered_by = string.match(stored, '^(%d+) (%x+)$')
end
if not epoch or numbered_by ~= master then
  master = master_here()
end

local function new_epoch()
  -- From Redis's clock: an id from an earlier run never names a newer message.
  local now = redis.call('TIME')
  local epoch = now[1] .. string.format('%06d', now[2])
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], epoch .. ' ' .. master)
  return epoch
end

local function add(epoch)
  return redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], epoch .. '-*', 'e', ARGV[2])
end

-- A retry: the message was sent once and its answer never came (the link
-- failed). If the room's stream holds it, it was published then: its id is
-- returned and nothing is published again. (The caller retries only with
-- history kept; what the stream trimmed meanwhile is taken as never sent.)
if ARGV[7] == '1' and epoch then
  local kept = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
  for _, entry in ipairs(kept) do
    if entry[2][2] == ARGV[2] then
      local n = tonumber(string.sub(entry[1], #epoch + 2))
      if n and string.sub(entry[1], 1, #epoch + 1) == epoch .. '-' then
        return epoch .. '-' .. (n + 1)
      end
    end
  end
end

-- A room with no epoch (new, expired, evicted, flushed) starts again at 1,
-- and so does one another master numbered.
local fresh = not epoch or numbered_by ~= master
if fresh then
  epoch = new_epoch()
end
local added = add(epoch)
-- Out of memory (maxmemory with noeviction): the message is refused and
-- nothing changes. A new epoch would be allowed to write (after one write a
-- script may go on), and its DEL would wipe the room's history for every
-- message posted while memory is short.
if type(added) == 'table' and string.sub(added.err or '', 1, 3) == 'OOM' then
  return added
end
-- A stream lost while its epoch stayed (an eviction) would number from 1
-- again in the same epoch, and a stream ahead of its epoch (keys edited by
-- hand) refuses the id: either way the room starts a new epoch. So does any
-- other refusal of the XADD, and the new epoch empties the stream.
if type(added) == 'table' or (not fresh and string.sub(added, -2) == '-0') then
  fresh = true
  epoch = new_epoch()
  added = add(epoch)
  if type(added) == 'table' then
    return added
  end
end
local seq = tonumber(string.sub(added, #epoch + 2)) + 1
-- Both keys always share one lifetime. A process refreshes a room's keys
-- at most every quarter ttl, to 1.25 ttl, so every message still has at
-- least the ttl to live, and a busy room costs two PEXPIREs a quarter ttl
-- rather than calls on every message. GT: a process with a shorter ttl
-- never cuts short what one with a longer ttl gave (keys just made have no
-- lifetime, which GT would take for an endless one: they get theirs plainly).
if fresh or ARGV[5] == '1' then
  local ttl = tonumber(ARGV[4])
  local life = ttl + math.floor(ttl / 4)
  if fresh then
    redis.call('PEXPIRE', KEYS[1], life)
    redis.call('PEXPIRE', KEYS[2], life)
  else
    redis.call('PEXPIRE', KEYS[1], life, 'GT')
    redis.call('PEXPIRE', KEYS[2], life, 'GT')
  end
end
local id = epoch .. '-' .. seq
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[2] .. ',"id":"' .. id .. '"}}')
return id
