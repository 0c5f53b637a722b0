-- One step of the walk through the rooms for the server API (GET
-- /api/rooms): SCAN from a cursor, and each presence hash it finds (see
-- presence.lua) counted, each user once however many processes it is on.
-- The caller steps until the cursor is back at 0, so Redis serves other
-- clients between steps however many keys it holds.
--
-- ARGV[1] the pattern of a room's presence key, "<prefix>{room:*}:presence"
-- (the prefix's glob characters escaped); ARGV[2] the cursor. Returns {the
-- next cursor, {{key, users, connections}, ...}} for the rooms found in this
-- step with at least one connection.
local batch = redis.call('SCAN', ARGV[2], 'MATCH', ARGV[1], 'COUNT', 250)
local rooms = {}
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
return { batch[1], rooms }
