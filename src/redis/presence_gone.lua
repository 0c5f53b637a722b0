-- Takes a dead process's users out of a room, and tells every process.
--
-- KEYS[1] the room's presence hash. ARGV[1] the room's channel; ARGV[2]
-- the dead process's id. The caller found the process's heartbeat key
-- gone (it expires unless the process refreshes it). Several processes
-- may find it at once: each publishes "~gone <process>", which takes
-- nothing away the second time. A process that was only cut off and comes
-- back finds its own key gone too, and publishes its whole list again.
local process = ARGV[2]
local mine = process .. ':'
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if field == process or string.sub(field, 1, #mine) == mine then
    redis.call('HDEL', KEYS[1], field)
  end
end
redis.call('PUBLISH', ARGV[1], '~gone ' .. process)
return 1
