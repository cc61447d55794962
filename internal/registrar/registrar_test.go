package registrar

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletHandshake plays kubelet's side of plugin registration: find
// the socket, ask GetInfo, report the verdict; then the socket goes away
// when the registrar stops.
func TestKubeletHandshake(t *testing.T) {
	dir := t.TempDir()
	r := &Registrar{Driver: "cairn.csi.dev", Endpoint: "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, dir) }()
	sock := SocketPath(dir, "cairn.csi.dev")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("registration socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := registerapi.NewRegistrationClient(conn)
	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "cairn.csi.dev" || info.Endpoint != r.Endpoint || len(info.SupportedVersions) == 0 {
		t.Fatalf("GetInfo = %+v", info)
	}
	if r.Status() != nil {
		t.Fatal("status before kubelet's verdict")
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version mismatch"}); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st == nil || st.PluginRegistered || st.Error != "version mismatch" {
		t.Fatalf("status = %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	if err := (&Registrar{Driver: "x", Endpoint: "/y"}).Serve(context.Background(), dir+"/missing"); err == nil {
		t.Error("a missing registration directory must be an error")
	}
}
