-- Argo CD health of a ShadowDeployment, from its phase and verdict.
--   Pending, Running           -> Progressing
--   Completed, verdict Pass    -> Healthy
--   Completed, Inconclusive    -> Suspended (someone has to decide)
--   Completed, verdict Fail    -> Degraded (the candidate disagrees with production)
--   Aborted                    -> Degraded
local hs = {}
local status = obj.status
if status == nil or status.phase == nil
    or status.observedGeneration == nil or status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
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
local ready = condition("Ready")
local detail = ""
if ready ~= nil and ready.message ~= nil then
  detail = ready.message
end
if status.phase == "Completed" then
  if status.verdict == "Pass" then
    hs.status = "Healthy"
  elseif status.verdict == "Fail" then
    hs.status = "Degraded"
  else
    hs.status = "Suspended"
  end
  hs.message = "Verdict " .. tostring(status.verdict) .. ". " .. detail
elseif status.phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = "Aborted. " .. detail
else
  local degraded = condition("Degraded")
  if degraded ~= nil and degraded.status == "True" then
    hs.status = "Degraded"
    hs.message = (degraded.reason or "Degraded") .. ": " .. (degraded.message or "")
  else
    hs.status = "Progressing"
    hs.message = status.phase .. ". " .. detail
  end
end
return hs
