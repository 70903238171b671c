-- Argo CD health of an Experiment, from its phase and conditions.
--   Pending, Running     -> Progressing (Suspended while a sample-ratio mismatch holds it)
--   Succeeded            -> Healthy (the winner in the message)
--   Inconclusive         -> Suspended (no verdict: someone has to decide)
--   Failed, Aborted      -> Degraded
local hs = {}
local status = obj.status
if status == nil or status.phase == nil
    or status.observedGeneration == nil or status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local function latest()
  if status.history ~= nil and #status.history > 0 then
    local d = status.history[#status.history]
    return (d.reason or "") .. ": " .. (d.message or "")
  end
  return ""
end
local function condition(kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local degraded = condition("Degraded")
local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Winner: " .. tostring(status.winner) .. ". " .. latest()
elseif phase == "Failed" or phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = phase .. ". " .. latest()
elseif phase == "Inconclusive" then
  hs.status = "Suspended"
  hs.message = "Inconclusive. " .. latest()
elseif degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "Degraded") .. ": " .. (degraded.message or "")
elseif status.srm ~= nil and status.srm.mismatch then
  hs.status = "Suspended"
  hs.message = "Held: the assignments do not match the weights (sample-ratio mismatch). " .. latest()
else
  hs.status = "Progressing"
  hs.message = phase .. ". " .. latest()
end
return hs
