-- wrk script for bench/control-plane.sh: ROUTE=token|revoke|validate.
--   token:    POST /token {"subject": ...} with the admin credential (ADMIN_SECRET)
--   revoke:   POST /revoke {"type":"revoke_jti","value": <unique>} with the admin credential
--   validate: POST /token/validate {"token": ...}, tokens taken in turn from TOKENS_FILE
-- done() prints one line: RESULT <req/s> <p50 ms> <p99 ms> <non-2xx> <socket errors>.
local route = os.getenv("ROUTE") or "token"
local admin = "Bearer " .. (os.getenv("ADMIN_SECRET") or "")
local tokens = {}
local counter = 0
local prefix = ""
local i = 0

local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  threads[#threads + 1] = thread
end

function init(args)
  -- Unique revocation values across threads and runs.
  prefix = string.format("b%d-%d-%d", os.time(), tid or 0, math.random(1, 1e9))
  if route == "validate" then
    for line in io.lines(os.getenv("TOKENS_FILE")) do
      if #line > 0 then tokens[#tokens + 1] = '{"token":"' .. line .. '"}' end
    end
    i = math.random(#tokens)
  end
end

local json = { ["Content-Type"] = "application/json", ["Authorization"] = admin }
local plain = { ["Content-Type"] = "application/json" }

function request()
  counter = counter + 1
  if route == "token" then
    return wrk.format("POST", "/token", json,
      '{"subject":"bench-' .. counter .. '","expires_minutes":60}')
  elseif route == "revoke" then
    return wrk.format("POST", "/revoke", json,
      '{"type":"revoke_jti","value":"' .. prefix .. "-" .. counter .. '","ttl_seconds":600}')
  else
    i = i % #tokens + 1
    return wrk.format("POST", "/token/validate", plain, tokens[i])
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.0f %.2f %.2f %d %d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
