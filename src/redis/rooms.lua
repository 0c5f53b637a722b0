-- Every room with someone in it, for the server API (GET /api/rooms): the
-- presence hashes (see presence.lua) found by SCAN, each user counted once
-- however many processes it is on.
--
-- ARGV[1] the pattern of a room's presence key, "<prefix>{room:*}:presence"
-- (the prefix's glob characters escaped). Returns {key, users, connections}
-- per room with at least one connection.
--
-- It walks the whole keyspace in one step, so Redis does nothing else
-- meanwhile: an operator's look, not something to poll every second.
local rooms = {}
local cursor = '0'
repeat
  local batch = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = batch[1]
  for _, key in ipairs(batch[2]) do
    local fields = redis.call('HGETALL', key)
    local seen, users, connections = {}, 0, 0
    for i = 1, #fields, 2 do
      local user = string.match(fields[i], '^[^:]*:(.*)$')
      local count = tonumber(fields[i + 1]) or 0
      if user and count > 0 then
        connections = connections + count
        if not seen[user] then
          seen[user] = true
          users = users + 1
        end
      end
    end
    if users > 0 then
      rooms[#rooms + 1] = { key, users, connections }
    end
  end
until cursor == '0'
return rooms
