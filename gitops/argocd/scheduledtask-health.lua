-- Argo CD health check for beatkeeper.dev/ScheduledTask (Lua 5.1, as Argo CD runs it).
-- It reads only the kstatus conditions the operator writes, so it gives the verdict
-- kstatus (Flux) gives for every status:
--   Progressing  status.observedGeneration behind metadata.generation (0, the CRD's
--                default, until the operator has seen the object), or Reconciling=True
--                (e.g. its WorkerPool does not exist yet), or Ready not (yet) True
--   Degraded     Stalled=True: a spec the operator cannot arm (InvalidSpec), or
--                spec.failureThreshold failed runs in a row (RunsFailing)
--   Suspended    spec.suspend is true and the operator has applied it (Ready, Suspended)
--   Healthy      Ready=True: the schedule is armed in Redis
-- One failed run, a retry, a missed or a skipped slot leave the object Healthy.
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

if ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready, "Suspended")
  return hs
end

hs.status = "Healthy"
hs.message = describe(ready, "Ready")
if status.nextScheduleTime ~= nil then
  hs.message = hs.message .. "; next run at " .. status.nextScheduleTime
end
return hs
