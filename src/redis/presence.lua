-- Records one process's users in a room and tells every process, in one
-- step, on the room's channel (so a user's leave keeps its order with the
-- room's messages).
--
-- KEYS[1] the room's presence hash. ARGV[1] the room's channel; ARGV[2]
-- the process's id (hex); ARGV[3] its version of this news (increasing per
-- process); ARGV[4] '1' when the news is the process's whole list in the
-- room (its users not listed have left), '0' when only the users listed
-- changed; ARGV[5] how long (ms) the hash lives after a change; then pairs
-- of a user's name and its connections on the process (0: none left).
--
-- The hash holds "<process>" -> its version, and "<process>:<user>" -> the
-- user's connections there. A process that reads the hash when it opens
-- the room (HGETALL) knows from the versions which news it hears on the
-- channel are already in what it read.
--
-- Publishes "~p <process> <version> <whole>" and a line "<connections>
-- <user>" per user (a name has no newline: it is an account's).
local process = ARGV[2]
local mine = process .. ':'
if ARGV[4] == '1' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, #mine) == mine then
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
local lines = { '~p ' .. process .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] }
for i = 6, #ARGV, 2 do
  local user, connections = ARGV[i], ARGV[i + 1]
  if connections == '0' then
    redis.call('HDEL', KEYS[1], mine .. user)
  else
    redis.call('HSET', KEYS[1], mine .. user, connections)
  end
  lines[#lines + 1] = connections .. ' ' .. user
end
redis.call('HSET', KEYS[1], process, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], table.concat(lines, '\n'))
return 1
