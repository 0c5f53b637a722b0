-- Reads the bans kept in Redis, dropping those that have ended.
--
-- KEYS[1] the bans hash: user -> the Unix second the ban ends. Returns the
-- live ones as a flat list of user, until. Bans end by themselves: this
-- read (when a process connects) is where ended ones are removed.
local now = tonumber(redis.call('TIME')[1])
local live = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local until_second = tonumber(all[i + 1])
  if until_second and until_second > now then
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
