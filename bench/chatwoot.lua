-- chatwoot.lua — wrk script for the Chatwoot webhook benchmark (bench/chatwoot.sh).
--
-- Replays signed message_created webhooks that `cw_bench gen` wrote (wrk's Lua cannot
-- compute HMAC-SHA256): the file holds raw HTTP requests, each after a line with its
-- length, every one with a new message and conversation id. They are read one at a time
-- as wrk asks for them, so the file may be larger than memory would like. Each answer is
-- classified: 200 {"status":"accepted"} (what the benchmark counts), "duplicate" (the
-- file ran out and wrapped round: make it larger), anything else.
-- Usage: wrk -t T ... -s chatwoot.lua URL -- FILE T   (T threads take every T-th request)

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local f, path, stride, k
accepted, duplicate, other, wrapped = 0, 0, 0, 0

local function read_one()
  local line = f:read("*l")
  if not line then
    wrapped = wrapped + 1
    f:seek("set", 0)
    line = f:read("*l")
  end
  return f:read(tonumber(line))
end

function init(args)
  path = args[1]
  stride = tonumber(args[2] or "1")
  f = assert(io.open(path, "rb"))
  -- thread ID takes requests ID, ID + stride, ...
  for _ = 1, id do read_one() end
end

function request()
  local r = read_one()
  for _ = 2, stride do read_one() end
  return r
end

function response(status, headers, body)
  if status == 200 and body:find('"status":"accepted"', 1, true) then
    accepted = accepted + 1
  elseif status == 200 and body:find('"duplicate"', 1, true) then
    duplicate = duplicate + 1
  else
    other = other + 1
    if other <= 3 then io.stderr:write("chatwoot.lua: answer " .. status .. ": " .. body .. "\n") end
  end
end

function done(summary, latency, requests)
  local a, d, o, w = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("accepted")
    d = d + t:get("duplicate")
    o = o + t:get("other")
    w = w + t:get("wrapped")
  end
  io.write(string.format("chatwoot: accepted %d duplicate %d other %d wrapped %d duration_us %d\n",
    a, d, o, w, summary.duration))
end
