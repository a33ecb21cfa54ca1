
-- action.lua: refuse a verb that would not apply (Argo CD shows the reason), else request it the way
-- `kubectl torghut VERB` does: the annotation torghut.proompteng.ai/action = "<verb>:<nonce>", the nonce being the
-- time (UTC), so repeating a verb is a new request. The operator applies it, records status.lastAction and removes
-- the annotation.
local why = refusal(VERB, obj)
if why ~= nil then
  error(why, 0)
end
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations[ACTION_ANNOTATION] = VERB .. ":" .. os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
