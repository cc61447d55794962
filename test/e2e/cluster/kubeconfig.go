package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// tokenLifetime is the validity of the tokens ServiceAccountKubeconfig
// requests: longer than any test.
const tokenLifetime = 24 * 60 * 60

// authInfo is either a client certificate or a bearer token.
type authInfo struct {
	certPEM, keyPEM []byte
	token           string
}

// writeKubeconfig writes a single-context kubeconfig with everything
// inline (no other files referenced).
func writeKubeconfig(path, user, namespace, host string, caPEM []byte, a authInfo) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["cairn-e2e"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: caPEM}
	kc.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: a.certPEM,
		ClientKeyData:         a.keyPEM,
		Token:                 a.token,
	}
	kc.Contexts[user] = &clientcmdapi.Context{Cluster: "cairn-e2e", AuthInfo: user, Namespace: namespace}
	kc.CurrentContext = user
	// Written under a temporary name and renamed, so that a component
	// reading the file while it is written again (a new token for the
	// same ServiceAccount) sees the old file or the new one, never a
	// truncated one.
	b, err := clientcmd.Write(*kc)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// ServiceAccountKubeconfig requests a token (TokenRequest API, valid 24h)
// for the existing ServiceAccount namespace/name and writes a kubeconfig
// that authenticates as it, with namespace as its default namespace.
// It returns the file's path (under WorkDir/kubeconfigs). The
// ServiceAccount is not created: it must come from applied manifests.
func (c *Cluster) ServiceAccountKubeconfig(ctx context.Context, namespace, name string) (string, error) {
	tr, err := c.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](tokenLifetime)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", namespace, name, err)
	}
	user := "system:serviceaccount:" + namespace + ":" + name
	path := filepath.Join(c.kcfgDir, "sa-"+namespace+"-"+name+".kubeconfig")
	if err := writeKubeconfig(path, user, namespace, c.host, c.pki.caPEM, authInfo{token: tr.Status.Token}); err != nil {
		return "", err
	}
	return path, nil
}
