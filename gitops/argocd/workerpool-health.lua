-- Argo CD health check for beatkeeper.dev/WorkerPool (Lua 5.1, as Argo CD runs it).
-- It reads the kstatus conditions the operator writes, as Flux does:
--   Progressing  no status yet, status.observedGeneration behind metadata.generation,
--                Reconciling=True, or Ready not (yet) True
--   Degraded     Stalled=True (e.g. reason InvalidSpec)
--   Healthy      Ready=True; ScalingLimited=True (clamped to min/max) is mentioned only
-- A pool scaled to zero is Healthy: it scales up when work arrives.
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end
local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end
local ready = condition(status, "Ready")
if ready == nil or ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = "Waiting for Ready"
  return hs
end

hs.status = "Healthy"
hs.message = describe(ready, "Ready") .. string.format(
  "; %d/%d replicas ready, backlog %d",
  math.floor(status.readyReplicas or 0),
  math.floor(status.desiredReplicas or 0),
  math.floor(status.backlog or 0)
)
local limited = condition(status, "ScalingLimited")
if limited ~= nil and limited.status == "True" then
  hs.message = hs.message .. "; " .. describe(limited, "ScalingLimited")
end
return hs
