-- Deep recursion through the interpreter's C code, suspending at the
-- bottom. sums[n] = n + sums[n - 1] is computed on first use by an
-- __index metamethod: Lua-to-Lua calls do not nest C frames in Lua 5.4,
-- but each metamethod call does (the VM calls the metamethod, which runs
-- the VM again), so the Wasm stack grows with every level.
local DEPTH = tonumber(arg[1]) or 2000
local reply

local sums = setmetatable({}, {
  __index = function(sums, n)
    if n == 0 then
      reply = wasnap.yield("bottom of " .. DEPTH .. " levels")
      return 0
    end
    local sum = n + sums[n - 1]
    rawset(sums, n, sum)
    return sum
  end,
})

print(string.format("sum of 1..%d = %d", DEPTH, sums[DEPTH]))
print(string.format("reply %q", reply))
