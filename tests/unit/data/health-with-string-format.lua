-- Argo CD health check for torghut.proompteng.ai/TorghutRollout.
-- argocd-cm.yaml embeds this file verbatim as resource.customizations.health.torghut.proompteng.ai_TorghutRollout;
-- tests/unit/test_argocd_health.py runs it in a real Lua interpreter and checks the two copies match.
--
--   status.observedGeneration < metadata.generation                 -> Progressing (the operator has not seen the change)
--   Succeeded                                                       -> Healthy
--   Pending, Migrating, Deploying, Verifying, Promoting, RollingBack -> Progressing
--   any of those with status.awaitingApproval = true                -> Suspended (a human must promote or abort)
--   Paused                                                          -> Suspended
--   Failed, RolledBack, Aborted                                     -> Degraded
--   no status or no phase yet                                       -> Progressing
--   anything else                                                   -> Unknown
local hs = {}

local progressing = {
  Pending = true, Migrating = true, Deploying = true, Verifying = true, Promoting = true, RollingBack = true
}
local degraded = { Failed = true, RolledBack = true, Aborted = true }

local function message_of(status, fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  if status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      if condition.type == "Ready" and condition.message ~= nil and condition.message ~= "" then
        return condition.message
      end
    end
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the rollout"
  return hs
end

local phase = status.phase
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d (status is %s)", generation, phase)
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif progressing[phase] then
  if status.awaitingApproval == true then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
elseif degraded[phase] then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
  return hs
end
hs.message = message_of(status, phase)
return hs
