-- wrk script: POST one new entry per request (unique URL per thread/request).
local counter = 0
local tid = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  counter = 0
end
request = function()
  counter = counter + 1
  local n = counter
  local body = string.format(
    '{"proxy_url":"http://10.%d.%d.%d:%d","source":"bench","latency_ms":%d}',
    tid, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, 1024 + n % 60000, n % 3000)
  return wrk.format("POST", "/v1/proxies", {["Content-Type"] = "application/json"}, body)
end
