"""Argo CD's Lua runtime, reproduced in Lua 5.1 (lupa) for the health check's and the resource actions' tests.

Argo CD v3.2.11 (util/lua/lua.go, `runLuaWithResourceActionParameters`) runs every resource customization in
gopher-lua (Lua 5.1) with `SkipOpenLibs` and then opens only:

- package (`package`, `require`, `module`), base (the functions of gopher-lua's baselib) and table;
- "its safe os": `OpenSafeOs` registers `time` and `date` under the *table* library's name, which is already
  loaded, so it adds nothing: there is **no global `os`**. `require("os")` works (a preloaded module with
  `time` and `date` only).

So `string`, `math`, `io`, `debug`, `coroutine` are nil and strings have no methods (`("x"):upper()` fails).
The live object is the global `obj` (decoded from JSON: every number is a float), action parameters the global
`actionParams`. `ARGOCD_GLOBALS` is that global table's key set; the integration test
tests/integration/test_argocd_lua_runtime.py checks it against the real Argo CD binary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import lua51

LuaError = lua51.LuaError

REPO = Path(__file__).resolve().parents[1]
ARGOCD_DIR = REPO / "manifests" / "argocd"

GOPHER_BASE = frozenset(
    {
        "assert", "collectgarbage", "dofile", "error", "getfenv", "getmetatable", "load", "loadfile", "loadstring",
        "next", "pcall", "print", "rawequal", "rawget", "rawset", "select", "setfenv", "setmetatable", "tonumber",
        "tostring", "type", "unpack", "xpcall", "module", "require", "newproxy", "ipairs", "pairs", "_G", "_VERSION",
    }
)  # fmt: skip
"""gopher-lua's base library (baselib.go), less `_printregs` and `_GOPHER_LUA_VERSION`, which Lua 5.1 lacks."""

ARGOCD_GLOBALS = GOPHER_BASE | {"package", "table", "obj", "actionParams"}
TABLE_FUNCTIONS = frozenset({"getn", "concat", "insert", "maxn", "remove", "sort"})
"""gopher-lua's table library (tablelib.go): Lua 5.1's without setn, foreach and foreachi."""

_RESTRICT = """
local keep_globals, keep_table, safe_os = ...
-- strings lose their methods: gopher-lua sets the string metatable only when the string library is opened
debug.setmetatable("", nil)
package.preload.os = function() return safe_os end
for name in pairs(package.loaded) do
  if name ~= "_G" and name ~= "package" and name ~= "table" then package.loaded[name] = nil end
end
for name in pairs(table) do
  if not keep_table[name] then table[name] = nil end
end
for name in pairs(_G) do
  if not keep_globals[name] then _G[name] = nil end
end
"""


def _as_set(lua: Any, names: frozenset[str]) -> Any:
    return lua.table_from(dict.fromkeys(names, True))


def to_lua(lua: Any, value: object) -> object:
    """A Python value as Argo CD hands it to Lua: dicts and lists become tables (lists 1-based), numbers floats."""
    if isinstance(value, dict):
        return lua.table_from({key: to_lua(lua, item) for key, item in value.items() if item is not None})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, item) for item in value])
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_lua(value: object) -> object:
    """A Lua result as Python: tables with keys 1..n become lists, other tables dicts (recursively)."""
    if lua51.lua_type(value) != "table":
        return value
    items = dict(value.items())  # type: ignore[attr-defined]
    if items and list(items) == list(range(1, len(items) + 1)):
        return [from_lua(item) for item in items.values()]
    return {str(key): from_lua(item) for key, item in items.items()}


def argocd_runtime(obj: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> Any:
    """A fresh lupa Lua 5.1 runtime with exactly the globals Argo CD's runtime has, `obj` and `actionParams` set."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    safe_os = lua.eval("{ time = os.time, date = os.date }")
    lua.globals().obj = to_lua(lua, obj or {})
    lua.globals().actionParams = to_lua(lua, params or {})
    lua.execute(_RESTRICT, _as_set(lua, ARGOCD_GLOBALS), _as_set(lua, TABLE_FUNCTIONS), safe_os)
    return lua


def run(script: str, obj: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> object:
    """Run `script` as Argo CD would (on `obj`) and return its result as Python values. Raises LuaError."""
    return from_lua(argocd_runtime(obj, params).execute(script))


def globals_of(lua: Any) -> set[str]:
    return {str(name) for name in lua.globals()}


__all__ = ["ARGOCD_DIR", "ARGOCD_GLOBALS", "LuaError", "argocd_runtime", "from_lua", "globals_of", "run", "to_lua"]
