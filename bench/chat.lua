-- chat.lua — wrk script for the POST /api/chat benchmark (bench/run.sh).
--
-- Posts a rotating set of the demo tenant's customer questions, Hungarian and
-- English, answerable ones and a complaint (routed to a human), so the figure
-- covers language detection, routing, KB retrieval and the fallback backend.
-- The requests are formatted once, at start-up, so wrk spends no time on Lua.

local questions = {
  "Mennyibe kerül a kiszállás?",
  "What are your opening hours?",
  "Hogyan foglalhatok időpontot?",
  "How much is the call-out fee?",
  "Milyen fizetési módokat fogadtok el?",
  "Do you work in the suburbs around Budapest?",
  "Meddig van nyitva a műhely szombaton?",
  "How long is the warranty on a repair?",
  "Panaszt szeretnék tenni a tegnapi javítás miatt.",
  "Can I cancel my appointment for tomorrow?",
  "Kiszálltok Budaörsre is?",
  "Which payment methods do you accept?",
}

local requests = {}
local n = 0

function init(args)
  for i, q in ipairs(questions) do
    local body = '{"tenant":"demo","message":"' .. q .. '"}'
    requests[i] = wrk.format("POST", "/api/chat", { ["Content-Type"] = "application/json" }, body)
  end
end

function request()
  n = n + 1
  return requests[(n % #requests) + 1]
end
