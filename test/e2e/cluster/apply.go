package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// crdWait bounds the wait for a CRD to be Established and served.
const crdWait = 60 * time.Second

// Apply applies every object of a multi-document YAML (or JSON) in order,
// by server-side apply with field manager "cairn-e2e" (conflicts forced,
// like kubectl apply --server-side --force-conflicts). Namespaced objects
// without a namespace go to "default"; List kinds are expanded. After each
// CustomResourceDefinition it waits until the CRD is Established and
// refreshes its discovery RESTMapper, so objects of that kind may follow
// in the same YAML. It returns the objects as the server stored them.
func (c *Cluster) Apply(ctx context.Context, yaml []byte) ([]*unstructured.Unstructured, error) {
	objs, err := decodeObjects(yaml)
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, u := range objs {
		gvk := u.GroupVersionKind()
		desc := fmt.Sprintf("%s %s", gvk.Kind, u.GetName())
		if u.GetName() == "" {
			return out, fmt.Errorf("apply %s: no metadata.name", gvk.Kind)
		}
		m, err := c.mapping(ctx, gvk)
		if err != nil {
			return out, fmt.Errorf("apply %s: %w", desc, err)
		}
		res := c.dyn.Resource(m.Resource)
		var applied *unstructured.Unstructured
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if u.GetNamespace() == "" {
				u.SetNamespace(metav1.NamespaceDefault)
			}
			desc = fmt.Sprintf("%s %s/%s", gvk.Kind, u.GetNamespace(), u.GetName())
			applied, err = res.Namespace(u.GetNamespace()).Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		} else {
			u.SetNamespace("")
			applied, err = res.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		}
		if err != nil {
			return out, fmt.Errorf("apply %s: %w", desc, err)
		}
		out = append(out, applied)
		if m.Resource == crdGVR {
			if err := c.waitEstablished(ctx, u.GetName()); err != nil {
				return out, err
			}
			c.mapper.Reset()
		}
	}
	return out, nil
}

// mapping resolves gvk, refreshing discovery when it is unknown. A kind
// that a CRD defines is waited for (discovery may lag the CRD's
// Established condition); any other unknown kind fails at once.
func (c *Cluster) mapping(ctx context.Context, gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err == nil || !meta.IsNoMatchError(err) {
		return m, err
	}
	deadline := time.Now().Add(crdWait)
	for {
		c.mapper.Reset()
		m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err == nil || !meta.IsNoMatchError(err) {
			return m, err
		}
		defined, lerr := c.crdDefines(ctx, gvk)
		if lerr != nil {
			return nil, errors.Join(err, lerr)
		}
		if !defined || time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(err, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// crdDefines reports whether some CRD serves gvk.
func (c *Cluster) crdDefines(ctx context.Context, gvk schema.GroupVersionKind) (bool, error) {
	list, err := c.dyn.Resource(crdGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	for _, crd := range list.Items {
		group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "kind")
		if group != gvk.Group || kind != gvk.Kind {
			continue
		}
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		for _, v := range versions {
			vm, _ := v.(map[string]any)
			if vm["name"] == gvk.Version && vm["served"] == true {
				return true, nil
			}
		}
	}
	return false, nil
}

// waitEstablished waits for the CRD's Established condition; a
// NamesAccepted=False (a name clash) fails at once.
func (c *Cluster) waitEstablished(ctx context.Context, name string) error {
	deadline := time.Now().Add(crdWait)
	for {
		crd, err := c.dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("CRD %s: %w", name, err)
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cnd := range conds {
			cm, _ := cnd.(map[string]any)
			switch {
			case cm["type"] == "Established" && cm["status"] == "True":
				return nil
			case cm["type"] == "NamesAccepted" && cm["status"] == "False":
				return fmt.Errorf("CRD %s: names not accepted: %v", name, cm["message"])
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRD %s not Established after %v", name, crdWait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not Established: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// decodeObjects splits a multi-document YAML or JSON stream into objects,
// skipping empty documents and expanding Lists.
func decodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*unstructured.Unstructured
	for i := 0; ; i++ {
		doc, err := r.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		j, err := sigsyaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if t := string(bytes.TrimSpace(j)); t == "" || t == "null" || t == "{}" {
			continue
		}
		obj, _, err := unstructured.UnstructuredJSONScheme.Decode(j, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		switch o := obj.(type) {
		case *unstructured.Unstructured:
			out = append(out, o)
		case *unstructured.UnstructuredList:
			if err := o.EachListItem(func(item runtime.Object) error {
				out = append(out, item.(*unstructured.Unstructured))
				return nil
			}); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("document %d: unexpected %T", i, obj)
		}
	}
}
