-- wrk script for the "small" scenario of bench/run.py.
--
-- Posts prebuilt multipart/form-data bodies (fields session_id and file=data.csv) to
-- /api/csv/upload, round-robin over the bodies (one per session). Configuration comes
-- from the environment, because wrk hands script arguments to the worker threads only:
--   BENCH_BODIES    comma-separated paths of the body files
--   BENCH_BOUNDARY  the multipart boundary used in those bodies
--   BENCH_IDS_OUT   where done() writes the file ids of every 201 answer, one a line
-- done() prints one line "BENCH_JSON {...}" with the counts by status, the socket errors,
-- the number of requests issued and wrk's latency percentiles (microseconds).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   counts = {}
   ids = {}
   issued = 0
   reqs = {}
   local boundary = assert(os.getenv("BENCH_BOUNDARY"), "BENCH_BOUNDARY not set")
   local paths = assert(os.getenv("BENCH_BODIES"), "BENCH_BODIES not set")
   for path in string.gmatch(paths, "[^,]+") do
      local f = assert(io.open(path, "rb"))
      local body = f:read("*a")
      f:close()
      local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
      reqs[#reqs + 1] = wrk.format("POST", "/api/csv/upload", headers, body)
   end
   idx = 0
end

function request()
   idx = idx % #reqs + 1
   issued = issued + 1
   return reqs[idx]
end

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
   if status == 201 then
      local id = string.match(body, '"id"%s*:%s*"([^"]+)"')
      if id then
         ids[#ids + 1] = id
      end
   end
end

function done(summary, latency, requests)
   local total = {}
   local all_issued = 0
   local out_path = os.getenv("BENCH_IDS_OUT")
   local out = out_path and assert(io.open(out_path, "w"))
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("counts")) do
         total[status] = (total[status] or 0) + n
      end
      all_issued = all_issued + t:get("issued")
      if out then
         for _, id in ipairs(t:get("ids")) do
            out:write(id, "\n")
         end
      end
   end
   if out then
      out:close()
   end
   local parts = {}
   for status, n in pairs(total) do
      parts[#parts + 1] = string.format('"%d": %d', status, n)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us": %d, "requests": %d, "issued": %d, "bytes": %d, '
         .. '"status": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, '
         .. '"status": %d, "timeout": %d}, "latency_us": {"p50": %.0f, "p90": %.0f, '
         .. '"p99": %.0f, "max": %.0f, "mean": %.0f}}\n',
      summary.duration, summary.requests, all_issued, summary.bytes,
      table.concat(parts, ", "), e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
