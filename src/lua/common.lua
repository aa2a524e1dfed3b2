-- Shared prelude of every state-changing script.
-- KEYS[1] is the commander epoch key and ARGV[1] the caller's epoch: a write
-- from a commander that is no longer the current one is refused (fencing).
local function fenced()
  local current = redis.call('GET', KEYS[1])
  if not current then
    -- Redis lost its data (a restart without persistence): the first writer
    -- re-establishes its epoch; a newer commander still takes over with INCR.
    redis.call('SET', KEYS[1], ARGV[1])
    return false
  end
  return current ~= ARGV[1]
end

-- Keeps the {pool}:{status} counters in step with a status change.
local function move(counts, pool, from, to)
  if from == to then return end
  if from then redis.call('HINCRBY', counts, pool .. ':' .. from, -1) end
  if to then redis.call('HINCRBY', counts, pool .. ':' .. to, 1) end
end
