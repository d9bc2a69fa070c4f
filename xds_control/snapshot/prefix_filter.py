"""The Envoy Lua script behind prefix-cache affinity routing (``routing: prefix``).

The listener carries one Lua HTTP filter, disabled by default; a route whose pools
route on the prompt prefix enables it with a ``LuaPerRoute`` naming the script and
passing its settings as the filter context. Per request the script:

1. drops any ``x-prefix-hash`` or ``x-xds-control-endpoint`` the client sent (ours alone);
2. gives up at once (no header: the cluster's hash policy then falls back to a
   random hash, i.e. the plain bounded-load balancer) unless the request has a
   ``content-length`` of 1..``max_body_bytes`` (a body without a length, i.e. chunked,
   is never buffered; the content type is not checked: curl sends JSON as a form);
3. buffers the body (Envoy does, within the connection's buffer limit) and reads
   the prompt: ``prompt`` for completions, the ``content`` (or content-part ``text``)
   strings of ``messages`` concatenated for chat (``extract: auto`` picks by path);
   strings are taken as their raw JSON encoding, not unescaped; only the head of the body
   (``4 * prefix_bytes + 4 KiB``) is copied into Lua unless the prompt is not in it;
4. hashes the first ``prefix_bytes`` bytes of that (32-bit FNV-1a, LuaJIT ``bit``)
   into ``x-prefix-hash``, which the route's ``hash_policy`` feeds to Maglev (``spill: maglev``);
5. with ``spill: least_request`` the context also has ``hosts``: per prefix-routed pool of the
   route, its routable endpoints ``address:port=weight`` (comma-separated; pools ``;``-separated).
   The script ranks each pool's endpoints for the key by weighted rendezvous hashing
   (:mod:`xds_control.core.affinity`, the same arithmetic) and names the best ``choices`` of
   each, best first, in ``x-xds-control-endpoint``; the cluster's override-host policy sends
   one attempt to each name it has in turn (names of other pools are skipped), then falls back
   to least request.

Anything unexpected (not JSON, no prompt, an empty prompt) ends in step 2's fallback,
never an error: the script has no ``error()`` path and every lookup is guarded.
"""

from __future__ import annotations

#: Request header carrying the prefix key (set by the script, hashed by the route's hash policy).
PREFIX_HEADER = "x-prefix-hash"
#: Name of the script in the Lua filter's ``source_codes``.
SCRIPT_NAME = "xds-control-prefix-hash"
#: The HTTP filter's name (also the ``typed_per_filter_config`` key on routes).
LUA_FILTER = "envoy.filters.http.lua"

SCRIPT = r"""
-- xds-control: prompt-prefix key for consistent hashing (see xds_control/snapshot/prefix_filter.py)
local bit = require("bit")
local bxor, lshift, rshift, tobit, tohex = bit.bxor, bit.lshift, bit.rshift, bit.tobit, bit.tohex
local sbyte, sfind, ssub, gmatch = string.byte, string.find, string.sub, string.gmatch
local log = math.log
local HEADER = "x-prefix-hash"
local ENDPOINT = "x-xds-control-endpoint"
local U32 = 4294967296

-- Raw bytes of the JSON string literal whose opening quote is at s[q], at most want of them (a long
-- string is not scanned to its end); nil if it ends unterminated before want bytes.
local function jstring(s, q, want)
  local i = q + 1
  while true do
    local j = sfind(s, '["\\]', i)
    if j == nil or j - q > want then
      if #s - q >= want then return ssub(s, q + 1, q + want), q + want + 1 end
      return nil
    end
    if sbyte(s, j) == 34 then return ssub(s, q + 1, j - 1), j + 1 end
    i = j + 2
  end
end

local function value_at(s, pat, from)
  local _, e = sfind(s, pat, from)
  if e == nil then return nil end
  return e
end

-- completions: "prompt": "..." (or a list: its raw bytes)
local function from_prompt(s, want)
  local e = value_at(s, '"prompt"%s*:%s*', 1)
  if e == nil then return nil end
  local c = sbyte(s, e + 1)
  if c == 34 then return (jstring(s, e + 1, want)) end
  if c == 91 then return ssub(s, e + 1, e + want) end
  return nil
end

-- chat: the content strings of messages, concatenated until want bytes
local function from_messages(s, want)
  local e = value_at(s, '"messages"%s*:%s*%[', 1)
  if e == nil then return nil end
  local parts, got, pos = {}, 0, e + 1
  while got < want do
    local a = value_at(s, '"content"%s*:%s*"', pos)
    local b = value_at(s, '"text"%s*:%s*"', pos)
    local q = a
    if q == nil or (b ~= nil and b < q) then q = b end
    if q == nil then break end
    local str, nxt = jstring(s, q, want - got)
    if str == nil then break end
    parts[#parts + 1] = str
    got = got + #str
    pos = nxt
  end
  if got == 0 then return nil end
  return table.concat(parts, "\n")
end

-- 32-bit FNV-1a of the first n bytes, as a signed 32-bit integer (LuaJIT bit convention)
local function fnv1a(s, n)
  local h = tobit(2166136261)
  for i = 1, n do
    h = bxor(h, sbyte(s, i))
    -- h * 16777619 (= 2^24 + 2^8 + 147) mod 2^32; every term is exact in a double
    h = tobit(lshift(h, 24) + lshift(h, 8) + h * 147)
  end
  return h
end

-- a * b mod 2^32 for unsigned 32-bit a, b, exact in doubles (16-bit halves)
local function mul32(a, b)
  local al, bl = a % 65536, b % 65536
  local ah, bh = (a - al) / 65536, (b - bl) / 65536
  return (al * bl + ((ah * bl + al * bh) % 65536) * 65536) % U32
end

-- MurmurHash3 fmix32, unsigned in and out
local function mix32(h)
  h = bxor(h, rshift(h, 16)) % U32
  h = mul32(h, 0x85EBCA6B)
  h = bxor(h, rshift(h, 13)) % U32
  h = mul32(h, 0xC2B2AE35)
  return bxor(h, rshift(h, 16)) % U32
end

-- weighted rendezvous hashing (xds_control/core/affinity.py): the k "address:port" names of list
-- ("addr=weight,...") with the highest weight / -ln(u(key, addr)), best first (ties: the earlier one)
local function rendezvous(key, list, k, out)
  local addrs, scores = {}, {}
  for addr, w in gmatch(list, "([^,=]+)=([^,]+)") do
    local wn = tonumber(w)
    if wn ~= nil and wn > 0 then
      local hh = fnv1a(addr, #addr) % U32
      local u = (mix32(bxor(key, hh) % U32) + 0.5) / U32
      addrs[#addrs + 1] = addr
      scores[#scores + 1] = wn / -log(u)
    end
  end
  for _ = 1, k do
    local best, best_s = 0, -1
    for i = 1, #addrs do
      if scores[i] > best_s then best, best_s = i, scores[i] end
    end
    if best == 0 then return end
    out[#out + 1] = addrs[best]
    scores[best] = -2
  end
end

function envoy_on_request(h)
  local headers = h:headers()
  headers:remove(HEADER)
  headers:remove(ENDPOINT)
  -- the context is a userdata that only pairs() can read (no indexing)
  local ctx = {}
  for k, v in pairs(h:filterContext()) do ctx[k] = v end
  local limit = tonumber(ctx["max_body_bytes"]) or 262144
  local want = tonumber(ctx["prefix_bytes"]) or 4096
  local mode = ctx["extract"] or "auto"
  local len = tonumber(headers:get("content-length") or "")
  if len == nil or len < 1 or len > limit then return end
  local chat = sfind(headers:get(":path") or "", "chat/completions", 1, true) ~= nil
  -- body() yields until the whole body is in: handles taken before it (headers) are stale after
  local body = h:body()
  if body == nil then return end
  local n = body:length()
  if n < 1 or n > limit then return end
  -- Copy only the head of the body into Lua (the prompt key comes early in the bodies clients send);
  -- the whole body only when the head has no prompt.
  local head = want * 4 + 4096
  if head > n then head = n end
  local p = nil
  while true do
    local s = body:getBytes(0, head)
    if sfind(s, "^%s*{") == nil then return end
    if mode == "prompt" then
      p = from_prompt(s, want)
    elseif mode == "messages" then
      p = from_messages(s, want)
    elseif chat then
      p = from_messages(s, want) or from_prompt(s, want)
    else
      p = from_prompt(s, want) or from_messages(s, want)
    end
    if p ~= nil or head >= n then break end
    head = n
  end
  if p == nil or #p == 0 then return end
  local k = #p
  if k > want then k = want end
  local key = fnv1a(p, k)
  local hdrs = h:headers()
  hdrs:add(HEADER, tohex(key))
  local hosts = ctx["hosts"]
  if type(hosts) == "string" and #hosts > 0 then
    -- the key's best `choices` endpoints per prefix-routed pool of the route; the cluster's override-host
    -- policy tries the names it has (its own pool's) in order, one per attempt, then falls back
    local k = tonumber(ctx["choices"]) or 1
    local picks = {}
    for group in gmatch(hosts, "[^;]+") do
      rendezvous(key % U32, group, k, picks)
    end
    if #picks > 0 then hdrs:add(ENDPOINT, table.concat(picks, ",")) end
  end
end
"""

__all__ = ["LUA_FILTER", "PREFIX_HEADER", "SCRIPT", "SCRIPT_NAME"]
