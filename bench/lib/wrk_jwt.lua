-- Scenario 9's and 10's requests: the URL and -H headers of the command
-- line plus "Authorization: Bearer <token>", rotating through the tokens of
-- the file given after "--" (one a line); a header name and a value prefix
-- may follow the file (scenario 10: X-Api-Key and no prefix):
--
--   wrk -s wrk_jwt.lua ... -H "Host: api.example.com" URL -- tokens.txt
--   wrk -s wrk_jwt.lua ... -H "Host: api.example.com" URL -- keys.txt X-Api-Key ""
--
-- The requests are built once per thread in init(), as wrk's SCRIPTING
-- advises, so that a request costs wrk no more than scenario 1's. They are
-- built from a copy of wrk.headers: wrk.format() with a headers table of its
-- own would take only Host from the -H headers.

-- The same done() as scenario 1: the summary as one WRK_JSON line.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "wrk_json.lua")

local requests = {}
local next_request = 0

function init(args)
   local path = args[1] or error("wrk_jwt.lua: give the tokens file after --")
   local name = args[2] or "Authorization"
   local prefix = args[3] or "Bearer "
   for token in io.lines(path) do
      if token ~= "" then
         local headers = {}
         for name, value in pairs(wrk.headers) do
            headers[name] = value
         end
         headers[name] = prefix .. token
         requests[#requests + 1] = wrk.format(nil, nil, headers)
      end
   end
   if #requests == 0 then
      error("wrk_jwt.lua: no tokens in " .. path)
   end
end

function request()
   next_request = next_request % #requests + 1
   return requests[next_request]
end
