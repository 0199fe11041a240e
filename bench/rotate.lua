-- wrk script: sends GET / with a bearer token taken in turn from the file $TOKENS_FILE.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
end
local i = 0

function init(args)
  -- Threads start at different offsets so they do not walk the file in lockstep.
  i = math.random(#tokens)
end

function request()
  i = i % #tokens + 1
  return wrk.format("GET", "/", { ["Authorization"] = tokens[i] })
end
