// Command health gives the verdicts of the three GitOps health checks on live objects:
//
//   - kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library Flux and kpt use;
//   - Argo CD's, by running the project's Lua health scripts in gopher-lua, the Lua VM
//     Argo CD embeds, with the object as the global `obj`, as Argo CD passes it;
//   - Flux's healthCheckExprs, by evaluating the CEL expressions of the project's snippet
//     with cel-go in the order Flux documents (RFC-0009): an observedGeneration behind
//     metadata.generation is InProgress; then inProgress, failed and current, the first
//     true one wins; none true is InProgress.
//
// Usage: health -argocd DIR -flux FILE < objects.json, where objects.json is a JSON list
// (or a kubectl List) of objects. It prints one JSON line per object.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	Kind           string `json:"kind"`
	Name           string `json:"name"`
	KStatus        string `json:"kstatus"`
	KStatusMessage string `json:"kstatusMessage"`
	ArgoCD         string `json:"argocd"`
	ArgoCDMessage  string `json:"argocdMessage"`
	Flux           string `json:"flux"`
}

type exprs struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Current    string `json:"current"`
	InProgress string `json:"inProgress"`
	Failed     string `json:"failed"`
}

func main() {
	argocd := flag.String("argocd", "", "directory with <kind>-health.lua scripts")
	flux := flag.String("flux", "", "a Flux Kustomization with spec.healthCheckExprs")
	flag.Parse()
	if err := run(*argocd, *flux, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(1)
	}
}

func run(argocdDir, fluxFile string, in io.Reader, out io.Writer) error {
	checks, err := loadExprs(fluxFile)
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	objects, err := decodeObjects(raw)
	if err != nil {
		return err
	}
	encoder := json.NewEncoder(out)
	for _, obj := range objects {
		u := &unstructured.Unstructured{Object: obj}
		v := verdict{Kind: u.GetKind(), Name: u.GetName()}
		result, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("kstatus of %s/%s: %w", v.Kind, v.Name, err)
		}
		v.KStatus, v.KStatusMessage = result.Status.String(), result.Message
		script := filepath.Join(argocdDir, strings.ToLower(v.Kind)+"-health.lua")
		if v.ArgoCD, v.ArgoCDMessage, err = argoHealth(script, obj); err != nil {
			return fmt.Errorf("argo cd health of %s/%s: %w", v.Kind, v.Name, err)
		}
		check, found := checks[u.GetAPIVersion()+"/"+v.Kind]
		if !found {
			return fmt.Errorf("%s has no healthCheckExprs entry for %s %s", fluxFile, u.GetAPIVersion(), v.Kind)
		}
		if v.Flux, err = fluxHealth(check, obj); err != nil {
			return fmt.Errorf("flux health of %s/%s: %w", v.Kind, v.Name, err)
		}
		if err := encoder.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

func decodeObjects(raw []byte) ([]map[string]any, error) {
	var value any
	if err := utiljson.Unmarshal(raw, &value); err != nil {
		return nil, err
	}
	if list, ok := value.(map[string]any); ok {
		value = list["items"]
	}
	items, ok := value.([]any)
	if !ok {
		return nil, fmt.Errorf("expected a JSON list of objects or a List")
	}
	objects := make([]map[string]any, 0, len(items))
	for _, item := range items {
		obj, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("a list item is not an object")
		}
		objects = append(objects, obj)
	}
	return objects, nil
}

func loadExprs(path string) (map[string]exprs, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Spec struct {
			HealthCheckExprs []exprs `json:"healthCheckExprs"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	checks := map[string]exprs{}
	for _, e := range doc.Spec.HealthCheckExprs {
		if e.Current == "" {
			return nil, fmt.Errorf("%s: %s has no current expression (Flux requires it)", path, e.Kind)
		}
		checks[e.APIVersion+"/"+e.Kind] = e
	}
	return checks, nil
}

// Argo CD: the object as a Lua table in the global `obj`; the script returns {status, message}.
func argoHealth(script string, obj map[string]any) (string, string, error) {
	source, err := os.ReadFile(script)
	if err != nil {
		return "", "", err
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(string(source)); err != nil {
		return "", "", err
	}
	table, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("%s returned no table", script)
	}
	return lua.LVAsString(table.RawGetString("status")), lua.LVAsString(table.RawGetString("message")), nil
}

func toLua(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case []any:
		table := L.NewTable()
		for i, item := range v {
			table.RawSetInt(i+1, toLua(L, item))
		}
		return table
	case map[string]any:
		table := L.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(L, item))
		}
		return table
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

// Flux: RFC-0009's order, evaluated as fluxcd/pkg/runtime/cel does: the expression is
// parsed, not type-checked, in the same environment options, with the object's own
// top-level fields (apiVersion, kind, metadata, spec, status) as the variables.
func fluxHealth(check exprs, obj map[string]any) (string, error) {
	observed, found, err := unstructured.NestedInt64(obj, "status", "observedGeneration")
	if err != nil {
		return "", err
	}
	if found {
		generation, ok, err := unstructured.NestedInt64(obj, "metadata", "generation")
		if err != nil {
			return "", err
		}
		if ok && observed != generation {
			return status.InProgressStatus.String(), nil
		}
	}
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		return "", err
	}
	for _, step := range []struct {
		expr   string
		status status.Status
	}{
		{check.InProgress, status.InProgressStatus},
		{check.Failed, status.FailedStatus},
		{check.Current, status.CurrentStatus},
	} {
		if step.expr == "" {
			continue
		}
		ast, issues := env.Parse(step.expr)
		if issues != nil && issues.Err() != nil {
			return "", fmt.Errorf("%q: %w", step.expr, issues.Err())
		}
		program, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			return "", err
		}
		value, _, err := program.Eval(obj)
		if err != nil {
			return "", fmt.Errorf("%q: %w", step.expr, err)
		}
		truth, ok := value.(types.Bool)
		if !ok {
			return "", fmt.Errorf("%q is not a boolean expression", step.expr)
		}
		if truth {
			return step.status.String(), nil
		}
	}
	return status.InProgressStatus.String(), nil
}
