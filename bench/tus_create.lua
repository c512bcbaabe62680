-- wrk script for the "tus" scenario of bench/run.py: tus creation-with-upload.
--
-- POSTs one small file per request to a tus creation URL (its body the whole file, so the
-- upload is complete in one request), round-robin over the Upload-Metadata values given.
-- Configuration comes from the environment (wrk hands script arguments to threads only):
--   BENCH_TUS_PATH  the creation path (/files/ for @tus/server, /api/csv/tus/ for csvstore)
--   BENCH_BODY      path of the file sent as every body
--   BENCH_METAS     Upload-Metadata values, separated by ";" (one per target session)
--   BENCH_IDS_OUT   where done() writes, for every 201 answer, the last segment of its
--                   Content-Location (csvstore: the stored file's id) or, without one, of
--                   its Location (the upload's id), one a line
-- done() prints one line "BENCH_JSON {...}" in the format of bench/upload.lua.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   counts = {}
   ids = {}
   issued = 0
   reqs = {}
   local path = assert(os.getenv("BENCH_TUS_PATH"), "BENCH_TUS_PATH not set")
   local f = assert(io.open(assert(os.getenv("BENCH_BODY"), "BENCH_BODY not set"), "rb"))
   local body = f:read("*a")
   f:close()
   local metas = assert(os.getenv("BENCH_METAS"), "BENCH_METAS not set")
   for meta in string.gmatch(metas, "[^;]+") do
      local headers = {
         ["Tus-Resumable"] = "1.0.0",
         ["Upload-Length"] = tostring(#body),
         ["Upload-Metadata"] = meta,
         ["Content-Type"] = "application/offset+octet-stream",
      }
      reqs[#reqs + 1] = wrk.format("POST", path, headers, body)
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
      local loc, content_loc
      for k, v in pairs(headers) do
         local name = string.lower(k)
         if name == "location" then
            loc = v
         elseif name == "content-location" then
            content_loc = v
         end
      end
      local id = string.match(content_loc or loc or "", "([^/]+)$")
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
