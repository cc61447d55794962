package agent

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Changed-block metadata for the controller's SnapshotMetadata service
// (docs/FORMAT.md#changed-block-metadata-from-a-node): served on the
// transfer listener to a caller whose Kubernetes token, checked with the
// API server on every request, may get snapshots/metadata.

// errUnauthenticated is a request without a token the API server accepts.
var errUnauthenticated = errors.New("not authenticated")

// maxToken bounds a bearer token passed on to the API server (service
// account tokens are about 1 KiB).
const maxToken = 16 << 10

func (a *Agent) serveMetadata(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	log := klog.FromContext(r.Context()).WithValues("snapshotID", id, "peer", r.RemoteAddr)
	err := a.authorizeMetadata(r)
	var q model.MetadataQuery
	if err == nil {
		q, err = kube.ParseMetadataQuery(id, r.URL.Query())
	}
	if err != nil {
		refuse(w, log, "Snapshot metadata refused", err)
		return
	}
	flusher, _ := w.(http.Flusher)
	started := false
	var mw *kube.MetadataWriter
	err = a.Engine.SnapshotMetadata(r.Context(), q, func(c model.MetadataChunk) error {
		if !started {
			w.Header().Set("Content-Type", kube.MetadataContentType)
			w.WriteHeader(http.StatusOK)
			mw = kube.NewMetadataWriter(w, func() {
				if flusher != nil {
					flusher.Flush()
				}
			})
			started = true
		}
		return mw.Chunk(c)
	})
	if !started {
		// Refused before the first chunk: a status, as for copies.
		if err == nil {
			err = errors.New("the engine sent no chunk")
		}
		refuse(w, log, "Snapshot metadata refused", err)
		return
	}
	if werr := mw.End(err); werr != nil || err != nil {
		log.Info("Snapshot metadata stream failed", "err", err, "writeErr", werr)
		return
	}
	log.V(2).Info("Snapshot metadata sent", "base", q.BaseSnapshotID, "start", q.StartingOffset)
}

// authorizeMetadata asks the API server, now, whether the request's bearer
// token is valid for the agent audience and its user may get
// snapshots/metadata.
func (a *Agent) authorizeMetadata(r *http.Request) error {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return fmt.Errorf("%w: no bearer token", errUnauthenticated)
	}
	if len(token) > maxToken {
		return fmt.Errorf("%w: a bearer token of %d bytes", errUnauthenticated, len(token))
	}
	aud := kube.AgentAudience(a.Node)
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}}}
	if err := a.client.Create(r.Context(), tr); err != nil {
		return model.Errorf(model.ErrUnavailable, "token review: %v", err)
	}
	st := tr.Status
	if !st.Authenticated || !slices.Contains(st.Audiences, aud) {
		return fmt.Errorf("%w: the token is not valid for audience %s: %s", errUnauthenticated, aud, st.Error)
	}
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range st.User.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: st.User.Username, UID: st.User.UID, Groups: st.User.Groups, Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: "get", Group: cairnv1.GroupVersion.Group,
			Resource: kube.MetadataResource, Subresource: kube.MetadataSubresource,
		},
	}}
	if err := a.client.Create(r.Context(), sar); err != nil {
		return model.Errorf(model.ErrUnavailable, "subject access review: %v", err)
	}
	if !sar.Status.Allowed {
		return fmt.Errorf("%w: %s may not get %s/%s in %s", errDenied, st.User.Username, kube.MetadataResource, kube.MetadataSubresource, cairnv1.GroupVersion.Group)
	}
	return nil
}
