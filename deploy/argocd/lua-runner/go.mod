// A test tool: Argo CD's Lua engine (gopher-lua) running lexserve's health checks.
module lexserve.io/argocd-lua-runner

go 1.26.0

require github.com/yuin/gopher-lua v1.1.2
