-- The operator's verbs on a TorghutRollout as Argo CD resource actions: which apply, and why not, exactly as
-- operator/torghut_operator/core/verbs.py (verb_applies) decides; the kubectl plugin asks the same question.
-- Every script of resource.customizations.actions.torghut.proompteng.ai_TorghutRollout starts with this file
-- (argocd-cm.yaml is rendered from it: `make argocd-cm`). Argo CD's Lua runtime has no `string` or `math`.
local ACTION_ANNOTATION = "torghut.proompteng.ai/action"
local VERBS = { "abort", "retry", "promote", "pause", "resume" }
local TERMINAL = { Succeeded = true, Failed = true, RolledBack = true, Aborted = true }
local RETRYABLE = { Failed = true, RolledBack = true, Aborted = true }
local APPLIES_TO = {
  abort = "abort applies while a rollout runs or is paused",
  retry = "retry applies to Failed, RolledBack or Aborted",
  promote = "promote accepts Inconclusive checks or approves a promotion step that awaits approval",
  pause = "pause applies while a rollout runs",
  resume = "resume applies to a Paused rollout",
}

-- The status a verb applies to: one the operator has not written for the current spec yet is a new run (Pending).
local function current_status(obj)
  local status = obj.status
  if status == nil or status.phase == nil or status.phase == "" then
    return { phase = "Pending" }
  end
  local generation = obj.metadata.generation
  if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
    return { phase = "Pending" }
  end
  return status
end

-- nil when `verb` would change the rollout; otherwise the one-line reason it would not.
local function refusal(verb, obj)
  local status = current_status(obj)
  local phase = status.phase
  local is_ = tostring(obj.metadata.name) .. " is " .. tostring(phase)
  if verb == "pause" then
    if TERMINAL[phase] then
      return "nothing to pause: " .. is_ .. " (" .. APPLIES_TO.pause .. ")"
    end
    if phase == "Paused" then
      local by = "the pause verb"
      if status.pausedBy == "spec" then
        by = "spec.paused"
      end
      return "already paused: " .. is_ .. " (by " .. by .. ")"
    end
    if phase == "RollingBack" then
      return "a rollback is not paused: it restores the previous image"
    end
    return nil
  end
  if verb == "resume" then
    if phase ~= "Paused" then
      return "nothing to resume: " .. is_ .. " (" .. APPLIES_TO.resume .. ")"
    end
    if obj.spec ~= nil and obj.spec.paused == true then
      return "spec.paused is true: set it to false to resume"
    end
    return nil
  end
  if verb == "abort" then
    if TERMINAL[phase] then
      return "nothing to abort: " .. is_ .. " (" .. APPLIES_TO.abort
        .. ", not once it is Succeeded, Failed, RolledBack or Aborted)"
    end
    return nil
  end
  if verb == "retry" then
    if not RETRYABLE[phase] then
      return "nothing to retry: " .. is_ .. " (" .. APPLIES_TO.retry .. ")"
    end
    return nil
  end
  if verb == "promote" then
    if status.awaitingApproval == true then
      return nil
    end
    if phase == "Promoting" and status.conditions ~= nil then
      for _, condition in ipairs(status.conditions) do
        if condition.type == "Promoted" and condition.reason == "MissingEvidence" then
          return "promote cannot waive required evidence: " .. tostring(condition.message)
        end
      end
    end
    return "nothing awaits approval: " .. is_ .. " (" .. APPLIES_TO.promote .. ")"
  end
  return "unknown verb '" .. tostring(verb) .. "'; use one of " .. table.concat(VERBS, ", ")
end
