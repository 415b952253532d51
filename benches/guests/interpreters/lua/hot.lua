-- CPU-heavy interpreted code: table updates, string building and
-- arithmetic, calling wasnap.yield every 2,000 iterations from inside the
-- loop. The checksum depends only on the computation, never on the
-- replies, so any two runs can be compared; the replies are counted and
-- measured to show that each one arrived.
local ITERATIONS = tonumber(arg[1]) or 100000
local YIELD_EVERY = 2000

local words = { "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta" }
local counts, order = {}, {}
local checksum, replies, reply_bytes, last_reply = 0, 0, 0, ""

for i = 1, ITERATIONS do
  local word = words[i % #words + 1]
  local key = word .. "-" .. (i % 101)
  local count = counts[key]
  if count == nil then
    order[#order + 1] = key
    count = 0
  end
  counts[key] = count + (i * 7) % 13
  local mixed = (i * 2654435761) % 4294967296
  -- math.floor rather than //, which Lua 5.1 lacks (the same value).
  checksum = (checksum * 31 + #key + counts[key] + math.floor(mixed / 65536)) % 1000000007
  if i % YIELD_EVERY == 0 then
    last_reply = wasnap.yield("progress " .. i)
    replies = replies + 1
    reply_bytes = reply_bytes + #last_reply
  end
end

table.sort(order)
local summary = {}
for n = 1, #order, 50 do summary[#summary + 1] = order[n] .. "=" .. counts[order[n]] end
print(string.format("checksum %d over %d keys: %s", checksum, #order, table.concat(summary, " ")))
print(string.format("%d replies, %d bytes, last %q", replies, reply_bytes, last_reply))
