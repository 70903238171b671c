// argocd-lua-runner runs an Argo CD resource health script (health.lua) the way Argo CD does:
// gopher-lua, the object as the global `obj` (JSON objects as tables, arrays as 1-based
// sequences), and the returned table's status and message printed as JSON. The lexserve tests
// run deploy/argocd/health/*/*/health.lua through it against the cases in health_test.yaml.
//
//	argocd-lua-runner health.lua object.json
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func toLua(L *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		table := L.NewTable()
		for _, item := range v {
			table.Append(toLua(L, item))
		}
		return table
	case map[string]interface{}:
		table := L.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(L, item))
		}
		return table
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", value))
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua-runner health.lua object.json")
		os.Exit(2)
	}
	text, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var object interface{}
	if err := json.Unmarshal(text, &object); err != nil {
		fmt.Fprintln(os.Stderr, "object:", err)
		os.Exit(1)
	}
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, object))
	if err := L.DoFile(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "script:", err)
		os.Exit(1)
	}
	result, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		fmt.Fprintln(os.Stderr, "the script did not return a table")
		os.Exit(1)
	}
	out, _ := json.Marshal(map[string]string{
		"status":  result.RawGetString("status").String(),
		"message": result.RawGetString("message").String(),
	})
	fmt.Println(string(out))
}
