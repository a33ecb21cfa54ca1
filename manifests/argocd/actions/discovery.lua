
-- discovery.lua: every verb, disabled when it would not apply now.
local actions = {}
for _, verb in ipairs(VERBS) do
  actions[verb] = { disabled = refusal(verb, obj) ~= nil }
end
return actions
